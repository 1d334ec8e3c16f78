"""The ``export`` path: one ``torch.export`` program holding a layer of every format, its packed
buffers mutated in place between calls.

All seven layers (five ``SparseLinear``, two ``SparseConv2d``) sit in one module, exported once
(exporting is the slow part: seconds), written with ``torch.export.save`` and read back with
``torch.export.load`` once. Under ``torch.export`` a packed layer's buffers become lifted tensor
constants fed to the ``sparseprune::linear`` / ``sparseprune::conv2d`` custom ops, which
validate them (once per identity and version) before any kernel runs. Each case mutates one of
those constants (or a layer's bias) in place, calls ``ep.module()`` on random inputs and
compares every output with dense torch on the weight that ``from_tensors`` builds from the
same, mutated buffers. If ``from_tensors`` refuses them, the call must raise ValueError. The
mutated tensor is restored after the case.
"""

from __future__ import annotations

import os
import random

import torch
import torch.nn.functional as F
from torch import nn

from .layers import CONV, LINEAR, conv_reference, make_layer
from .mutations import mutate_in_place
from .paths import LAST_ERROR, Prepared, short

_OPS = (torch.ops.sparseprune.linear.default, torch.ops.sparseprune.conv2d.default)


class _Bundle(nn.Module):
    def __init__(self, linears: list[nn.Module], convs: list[nn.Module]) -> None:
        super().__init__()
        self.lin, self.conv = nn.ModuleList(linears), nn.ModuleList(convs)

    def forward(self, x: torch.Tensor, xc: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (*(m(x) for m in self.lin), *(m(xc) for m in self.conv))


def _attr(module: nn.Module, fqn: str) -> torch.Tensor:
    for part in fqn.split("."):
        module = getattr(module, part)
    return module


def _source(node) -> str:
    """The placeholder a graph argument comes from (through lift_fresh_copy and the like)."""
    while node.op != "placeholder":
        node = node.args[0]
    return node.name


class ExportPath:
    """Builds, exports, saves and loads the bundle; maps each layer to its tensors."""

    def __init__(self, seed: int, tmp: str) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.labels = [*LINEAR, *CONV]
        self.layers = {label: make_layer(label, gen) for label in self.labels}
        bundle = _Bundle([self.layers[k] for k in LINEAR], [self.layers[k] for k in CONV]).eval()
        x = torch.randn(3, 13, generator=gen)
        xc = torch.randn(2, 4, 9, 8, generator=gen)
        path = os.path.join(tmp, "bundle.pt2")
        torch.export.save(torch.export.export(bundle, (x, xc)), path)
        ep = torch.export.load(path)
        self.module = ep.module()
        sig = ep.graph_signature
        consts, buffers = sig.inputs_to_lifted_tensor_constants, sig.inputs_to_buffers
        # label -> (canonical buffers in the op's order, bias), as the unlifted module holds them
        self.tensors: dict[str, tuple[list[torch.Tensor], torch.Tensor]] = {}
        for node in ep.graph_module.graph.nodes:
            if node.op != "call_function" or node.target not in _OPS:
                continue
            bias_fqn = buffers[_source(node.args[6])]  # "lin.3.bias" / "conv.1.bias"
            group, index = bias_fqn.split(".")[:2]
            label = list(LINEAR if group == "lin" else CONV)[int(index)]
            self.tensors[label] = ([_attr(self.module, consts[_source(a)]) for a in node.args[5]],
                                   _attr(self.module, bias_fqn))
        assert sorted(self.tensors) == sorted(self.labels), sorted(self.tensors)
        self.touched: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _expected(self, label: str, x: torch.Tensor, xc: torch.Tensor) -> torch.Tensor:
        """Dense torch on what ``from_tensors`` makes of the layer's current buffers (its
        ValueError when it refuses them, or when the bias is not float32 [rows])."""
        layer = self.layers[label]
        cls = type(layer.weight)
        tensors, bias = self.tensors[label]
        w = cls.from_tensors(dict(zip(cls.BUFFERS, tensors, strict=True)), layer.weight.shape,
                             layer.weight.params, name=label)
        if bias.dtype != torch.float32 or tuple(bias.shape) != (w.rows,):
            raise ValueError(f"{label}: bias of shape {tuple(bias.shape)}")
        dense = w.to_dense()
        if label in LINEAR:
            return F.linear(x, dense, bias)
        kh, kw = layer.kernel_size
        filt = dense.reshape(layer.out_channels, layer.in_channels // layer.groups, kh, kw)
        return conv_reference(xc, filt, bias, layer)

    def prepare(self, rng: random.Random, gen: torch.Generator) -> Prepared:
        label = rng.choice(self.labels)
        tensors, bias = self.tensors[label]
        names = [*type(self.layers[label].weight).BUFFERS, "bias"]
        which = rng.randrange(len(tensors)) if rng.random() < 0.9 else len(tensors)
        target = [*tensors, bias][which]
        peers = [t for ts, b in self.tensors.values() for t in (*ts, b)]
        self.touched.append((target, target.detach().clone()))
        kind, desc = mutate_in_place(rng, target, peers)
        x = torch.randn(3, 13, generator=gen)
        xc = torch.randn(2, 4, 9, 8, generator=gen)

        def run() -> tuple[str, str]:
            expected: dict[str, object] = {}
            for other in self.labels:
                try:
                    expected[other] = self._expected(other, x, xc)
                except ValueError as err:
                    expected[other] = err
            refusal = [k for k, v in expected.items() if isinstance(v, ValueError)]
            try:
                with torch.no_grad():
                    outputs = self.module(x, xc)
            except ValueError as err:
                if refusal:
                    return "refused", short(err)
                return "wrong", f"the program refused buffers from_tensors accepts: {short(err)}"
            except Exception as err:
                LAST_ERROR[:] = [err]
                return "error", short(err)
            if refusal:
                return "wrong", f"the program ran buffers from_tensors refuses: " \
                                f"{short(expected[refusal[0]])}"
            for other, got in zip(self.labels, outputs, strict=True):
                try:
                    torch.testing.assert_close(got, expected[other], rtol=1e-4, atol=1e-4,
                                               equal_nan=True)
                except AssertionError as err:
                    return "wrong", f"{other} output differs: {' '.join(str(err).split())[:300]}"
            return "loaded", ""
        return label, kind, f"{names[which]}: {desc}", run

    def cleanup(self) -> None:
        """Puts every mutated tensor back (same object, its original size and values)."""
        with torch.no_grad():
            while self.touched:
                t, original = self.touched.pop()
                t.set_(original.clone())
