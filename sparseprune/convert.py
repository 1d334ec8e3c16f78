"""``convert``: replace eligible layers of a model by their packed sparse counterparts."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._modules import deepcopy_model
from ._timing import calls_for, interleaved
from ._weights import effective_weight
from .nn import SparseLinear

__all__ = ["convert", "ConvertReport", "LayerReport", "register_converter"]

# Module type -> function building the sparse replacement. Keyed by exact type so that a
# subclass with its own forward is never silently replaced by a plain sparse layer.
_CONVERTERS: dict[type, Callable[[nn.Module, str], nn.Module]] = {}


def register_converter(module_type: type) -> Callable:
    """Decorator: ``@register_converter(nn.Linear) def f(module, name) -> nn.Module``."""

    def wrap(fn: Callable[[nn.Module, str], nn.Module]) -> Callable:
        _CONVERTERS[module_type] = fn
        return fn

    return wrap


@register_converter(nn.Linear)
def _linear_to_sparse(module: nn.Module, name: str) -> nn.Module:
    return SparseLinear.from_dense(module, name=name)


@dataclass(frozen=True)
class LayerReport:
    """What ``convert`` did with one layer: ``format`` is set when replaced, else ``reason``."""

    name: str
    type: str
    shape: tuple[int, ...]
    sparsity: float
    format: str | None
    reason: str = ""
    speedup: float | None = None  # measured vs dense when convert() got example_inputs


@dataclass(frozen=True)
class ConvertReport:
    """Per-layer outcome of ``convert``, printable as a table."""

    layers: tuple[LayerReport, ...]

    @property
    def converted(self) -> list[LayerReport]:
        return [r for r in self.layers if r.format is not None]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.format is None]

    def __str__(self) -> str:
        head = f"{'layer':<32} {'type':<10} {'shape':<14} {'sparsity':>8}  {'speed':>6}  result"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(str(s) for s in r.shape)
            result = r.format if r.format is not None else f"skipped: {r.reason}"
            speed = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
            lines.append(f"{r.name or '(root)':<32} {r.type:<10} {shape:<14} "
                         f"{r.sparsity:>8.3f}  {speed:>6}  {result}")
        lines.append(f"{len(self.converted)} converted, {len(self.skipped)} skipped")
        return "\n".join(lines)


def _matches(name: str, patterns: list[str]) -> list[str]:
    return [p for p in patterns if name == p or fnmatch.fnmatchcase(name, p)]


def _check_patterns(what: str, patterns: list[str], names: list[str]) -> None:
    unused = [p for p in patterns if not any(_matches(n, [p]) for n in names)]
    if unused:
        raise ValueError(f"convert: {what} pattern(s) {unused} match no convertible layer; "
                         f"candidates are {names}")


def _capture_inputs(model: nn.Module, modules: list[nn.Module],
                    example_inputs: tuple) -> dict[int, torch.Tensor]:
    """The first input each of ``modules`` sees when ``model`` runs on ``example_inputs``."""
    seen: dict[int, torch.Tensor] = {}

    def hook(module, args):
        seen.setdefault(id(module), args[0].detach())

    handles = [m.register_forward_pre_hook(hook) for m in {id(m): m for m in modules}.values()]
    try:
        with torch.inference_mode():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _measured_speedup(dense: Callable[[], object], sparse: Callable[[], object]) -> float:
    """Median over alternating rounds of dense time / sparse time (~4 ms of calls a round)."""
    with torch.inference_mode():
        dense()
        return interleaved(sparse, dense, calls_for(sparse, 0.004), rounds=5, warmup=1)[2]


def convert(model: nn.Module, *, min_sparsity: float = 0.5, include: Iterable[str] | None = None,
            exclude: Iterable[str] | None = None, inplace: bool = False,
            example_inputs: tuple | torch.Tensor | None = None,
            min_speedup: float = 1.0) -> tuple[nn.Module, ConvertReport]:
    """Replaces eligible ``nn.Linear`` layers (plain or carrying prune masks) by ``SparseLinear``.

    A layer is converted when its effective weight (``weight_orig * weight_mask`` if it carries a
    ``torch.nn.utils.prune`` mask) has at least ``min_sparsity`` zeros, it matches ``include``
    (when given) and does not match ``exclude``. Names are the qualified names of
    ``model.named_modules()``; patterns may use shell wildcards (``"encoder.*.fc1"``).

    Args:
        model: any module (the root itself may be an ``nn.Linear``).
        min_sparsity: in [0, 1]; below it sparse kernels do not pay off, so the layer stays dense.
        include: only these layers are considered.
        exclude: these layers stay dense.
        inplace: modify ``model`` itself instead of a deep copy.
        example_inputs: optional input(s) the model is run on once (batch size included): each
            layer then gets the input it would see, its sparse replacement is timed against the
            dense ``F.linear`` on it, and the layer stays dense unless it is at least
            ``min_speedup`` times faster (the report gives the measured ratio). Without it,
            sparsity alone decides, and a small layer at batch 1 can end up slower than dense.
        min_speedup: see ``example_inputs``.

    Returns:
        (the converted model, a ``ConvertReport`` with one row per candidate layer).
    """
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"convert: min_sparsity must be in [0, 1], got {min_sparsity}")
    include = list(include) if include is not None else None
    exclude = list(exclude) if exclude is not None else []
    if not inplace:
        model = deepcopy_model(model)
    # remove_duplicate=False: a layer shared under several names is replaced at every name.
    candidates = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
                  if type(m) in _CONVERTERS]
    names = [n for n, _ in candidates]
    if include is not None:
        _check_patterns("include", include, names)
    _check_patterns("exclude", exclude, names)

    captured: dict[int, torch.Tensor] = {}
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        captured = _capture_inputs(model, [m for _, m in candidates], tuple(example_inputs))

    rows = []
    replaced_root = None
    converted: dict[int, nn.Module] = {}  # id(original) -> its replacement, for shared layers
    for name, module in candidates:
        weight = effective_weight(module)
        numel = weight.numel()
        sparsity = float((weight == 0).sum()) / numel if numel else 1.0
        row = dict(name=name, type=type(module).__name__, shape=tuple(weight.shape),
                   sparsity=sparsity)
        if include is not None and not _matches(name, include):
            rows.append(LayerReport(**row, format=None, reason="not in include"))
            continue
        if _matches(name, exclude):
            rows.append(LayerReport(**row, format=None, reason="excluded"))
            continue
        if weight.device.type != "cpu":
            rows.append(LayerReport(**row, format=None, reason=f"on {weight.device}"))
            continue
        if sparsity < min_sparsity:
            rows.append(LayerReport(**row, format=None,
                                    reason=f"sparsity {sparsity:.3f} < min_sparsity "
                                           f"{min_sparsity}"))
            continue
        new = converted.get(id(module))
        speedup = None
        if new is None:
            new = _CONVERTERS[type(module)](module, name)
            x = captured.get(id(module))
            if x is not None:
                bias = module.bias.detach() if module.bias is not None else None
                speedup = _measured_speedup(lambda x=x, w=weight, b=bias: F.linear(x, w, b),
                                            lambda x=x, new=new: new(x))
                if speedup < min_speedup:
                    rows.append(LayerReport(
                        **row, format=None, speedup=speedup,
                        reason=f"measured {speedup:.2f}x vs dense at batch "
                               f"{x.reshape(-1, x.shape[-1]).shape[0]} < {min_speedup}"))
                    continue
            converted[id(module)] = new
        if name == "":
            replaced_root = new
        else:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
        rows.append(LayerReport(**row, format=str(getattr(new, "format", type(new).__name__)),
                                speedup=speedup))
    return (replaced_root if replaced_root is not None else model), ConvertReport(tuple(rows))
