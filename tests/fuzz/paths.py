"""The four fuzzed paths: how one case is prepared (the mutation drawn and applied) and run
(the load attempted and judged). Each path object is built once per fuzzer run (layers,
files and the exported program are made once and reused by every case) and offers
``prepare(rng, gen) -> (label, kind, description, run)``; ``run()`` returns (outcome, detail).

Outcomes: ``refused`` (ValueError), ``refused_keys`` (torch's own RuntimeError for missing or
unexpected keys under strict loading, accepted only when the mutation dropped or added a key),
``loaded`` (and judged correct), ``wrong`` (loaded but not correct, or inconsistent with what
the same data does elsewhere), ``error`` (any other exception: a bug).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import random
from collections.abc import Callable
from itertools import pairwise

import torch
from torch import nn

import sparseprune
from sparseprune import SparseConv2d, SparseLinear, cli
from sparseprune.formats import parse_header
from sparseprune.nn import PackedModule

from .file_mutations import mutate_file
from .layers import (
    CONV,
    LABELS,
    LINEAR,
    Invalid,
    check_forward,
    fresh_like,
    make_layer,
    reference_dense,
    same_dense,
    sparse_mask,
)
from .mutations import HEADER, mutate_state

Prepared = tuple[str, str, str, Callable[[], tuple[str, str]]]
LAST_ERROR: list[BaseException] = []  # the last unexpected exception (shown by --case replays)


def short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200] if text else ''}"


def _is_key_error(err: BaseException) -> bool:
    """torch's strict-loading report of missing / unexpected keys (and nothing else)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (type(err) is RuntimeError and bool(lines)
            and lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1
            and all(ln.startswith(("Missing key(s)", "Unexpected key(s)")) for ln in lines[1:]))


def classify(err: BaseException, kind: str) -> str:
    if isinstance(err, ValueError):
        return "refused"
    if kind in ("drop_key", "add_key", "state_dict_keys") and _is_key_error(err):
        return "refused_keys"
    LAST_ERROR[:] = [err]
    return "error"


def judge_loaded(layer: PackedModule, sd: dict, prefix: str, gen: torch.Generator) -> str | None:
    """None when a layer loaded from ``sd`` holds what its (accepted) header and buffers say,
    decoded independently, and computes what dense torch does with its weight."""
    cls, shape, params = parse_header(sd[prefix + HEADER])
    w = layer.weight
    if (cls.NAME, shape, params) != (w.NAME, w.shape, w.params):
        return f"header says {cls.NAME} {shape} {params}, layer holds {w.NAME} {w.shape} {w.params}"
    try:
        with torch.no_grad():
            want = reference_dense(cls.NAME, shape, params,
                                   {b: sd[prefix + b] for b in cls.BUFFERS})
    except Invalid as err:
        return f"accepted buffers that break the format: {err}"
    diff = same_dense(w.to_dense(), want)
    if diff:
        return f"loaded weight differs from its buffers: {diff}"
    return check_forward(layer, gen)


def _packed_keys(layer: PackedModule) -> list[str]:
    keys = [HEADER, *layer.weight.BUFFERS]
    return keys + ["filter_shape"] if isinstance(layer, SparseConv2d) else keys


class EagerPath:
    """A mutated ``state_dict()`` of a valid layer, loaded into a fresh layer (strict)."""

    def __init__(self, seed: int, tmp: str) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.layers = {label: make_layer(label, gen) for label in LABELS}
        self.states = {label: layer.state_dict() for label, layer in self.layers.items()}

    def load(self, label: str, sd: dict, kind: str) -> tuple[str, object]:
        """(outcome, the loaded layer or the error text) of loading ``sd`` into a fresh one."""
        fresh = fresh_like(self.layers[label])
        try:
            fresh.load_state_dict(sd)
        except Exception as err:
            return classify(err, kind), short(err)
        return "loaded", fresh

    def prepare(self, rng: random.Random, gen: torch.Generator) -> Prepared:
        label = rng.choice(LABELS)
        sd = dict(self.states[label])
        kind, desc = mutate_state(rng, sd, _packed_keys(self.layers[label]))

        def run() -> tuple[str, str]:
            outcome, got = self.load(label, sd, kind)
            if outcome != "loaded":
                return outcome, got
            problem = judge_loaded(got, sd, "", gen)
            return ("wrong", problem) if problem else ("loaded", "")
        return label, kind, desc, run


def _run_cli(argv: list[str]) -> tuple[object, str, str]:
    """(return code or the exception raised, stdout, stderr) of ``sparseprune.cli.main``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc: object = cli.main(argv)
        except BaseException as exc:  # SystemExit included: main must return, never raise
            LAST_ERROR[:] = [exc]
            rc = exc
    return rc, out.getvalue(), err.getvalue()


class CliPath(EagerPath):
    """A mutated state_dict (as for ``eager``, under the prefix ``fc.``; in a quarter of the
    cases beside a dense, 80 %-sparse ``head`` Linear that convert packs) saved with torch.save,
    given to ``sparseprune inspect`` and ``sparseprune convert`` in-process. Each must return 0
    or 2 with a one-line message on stderr; the two must agree; a state that loads eagerly
    must be accepted; a convert output must load exactly as its input does."""

    def __init__(self, seed: int, tmp: str) -> None:
        super().__init__(seed, tmp)
        # Half of a case's time is argparse building the CLI's parser, most of that gettext
        # looking for translations and the terminal size: fixed here, in this process only.
        os.environ.update(LANGUAGE="C", COLUMNS="100")
        gen = torch.Generator().manual_seed(seed + 1)
        w = torch.randn(6, 10, generator=gen) * sparse_mask(gen, 6, 10, "csr", ())
        w[:, ::2] = 0  # at least half zeros: convert packs it (min_sparsity 0.5)
        self.head = {"head.weight": w, "head.bias": torch.randn(6, generator=gen)}
        self.src, self.out = os.path.join(tmp, "state.pt"), os.path.join(tmp, "converted.pt")

    def _entries(self, sd: dict, prefix: str) -> dict:
        return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}

    def prepare(self, rng: random.Random, gen: torch.Generator) -> Prepared:
        label = rng.choice(LABELS)
        sd = {"fc." + k: v for k, v in self.states[label].items()}
        kind, desc = mutate_state(rng, sd, ["fc." + k for k in _packed_keys(self.layers[label])],
                                  "fc.")
        head = rng.random() < 0.25
        if head:
            sd.update(self.head)

        def run() -> tuple[str, str]:
            torch.save(sd, self.src)
            if os.path.exists(self.out):
                os.remove(self.out)
            results = {}
            for cmd, argv in (("inspect", ["inspect", self.src]),
                              ("convert", ["convert", self.src, "-o", self.out])):
                rc, stdout, stderr = _run_cli(argv)
                if not isinstance(rc, int) or rc not in (0, 2):
                    shown = short(rc) if isinstance(rc, BaseException) else repr(rc)
                    return "error", f"{cmd} gave {shown}"
                lines = stderr.strip().splitlines()
                if rc == 2 and (len(lines) != 1 or not lines[0].startswith(f"sparseprune {cmd}:")):
                    return "wrong", f"{cmd} returned 2 with stderr {stderr[:200]!r}"
                results[cmd] = (rc, stdout)
            if results["inspect"][0] != results["convert"][0]:
                return "wrong", f"inspect returned {results['inspect'][0]}, convert " \
                                f"{results['convert'][0]}"
            entries = self._entries(torch.load(self.src, weights_only=True, map_location="cpu"),
                                    "fc.")
            want, layer = self.load(label, entries, kind)
            if want == "loaded":
                if results["convert"][0] != 0:
                    return "wrong", "the CLI refused a state_dict that loads"
                problem = judge_loaded(layer, entries, "", gen)
                if problem:
                    return "wrong", f"the input state_dict: {problem}"
            if results["convert"][0] != 0:
                return "refused", ""
            if want == "loaded" and f"packed {layer.weight.NAME}" not in results["inspect"][1]:
                return "wrong", "inspect does not list the packed layer"
            return self._check_output(label, kind, want, layer, head, gen)
        return label, kind, desc, run

    def _check_output(self, label, kind, want, layer, head, gen) -> tuple[str, str]:
        out = torch.load(self.out, weights_only=True, map_location="cpu")
        got, again = self.load(label, self._entries(out, "fc."), kind)
        if got != want:
            return "wrong", f"the input loads as {want}, convert's output as {got}: {again}"
        if got == "loaded":
            diff = same_dense(again.weight.to_dense(), layer.weight.to_dense()) or \
                check_forward(again, gen)
            if diff:
                return "wrong", f"convert output: {diff}"
        if head:
            packed = SparseLinear(10, 6)
            try:
                packed.load_state_dict(self._entries(out, "head."))
            except Exception as err:
                return "wrong", f"the converted head does not load: {short(err)}"
            diff = same_dense(packed.weight.to_dense(), self.head["head.weight"]) or \
                check_forward(packed, gen)
            if diff:
                return "wrong", f"converted head: {diff}"
        return "loaded", ""


def _sequential(*layers: nn.Module) -> Callable[[], nn.Sequential]:
    return lambda: nn.Sequential(*copy.deepcopy(layers))


class FilePath:
    """``sparseprune.save`` of three small converted models (two MLPs covering the five linear
    formats, a CNN with both conv formats), the saved dict mutated (:func:`mutate_file`) and
    written back with torch.save, then ``sparseprune.load(path, factory)``: a ValueError, or
    a model whose every packed layer computes what its own ``to_dense()`` does."""

    MODELS = {"mlp_a": (("csr", "sell", "nm2:4"), (13, 16, 10, 8)),
              "mlp_b": (("bsr4x1", "bsr1x4", "csr"), (13, 12, 10, 8))}

    def __init__(self, seed: int, tmp: str) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.path = os.path.join(tmp, "model.pt")
        self.factories, self.clean, self.layers = {}, {}, {}
        for name, (labels, sizes) in self.MODELS.items():
            dense = [nn.Linear(a, b) for a, b in pairwise(sizes)]
            packed = []
            for label, lin in zip(labels, dense, strict=True):
                fmt, params = LINEAR[label]
                with torch.no_grad():
                    lin.weight.mul_(sparse_mask(gen, *lin.weight.shape, fmt, params))
                packed.append(SparseLinear.from_dense(lin, format=fmt, params=params))
            self._add(name, [nn.Linear(a, b) for a, b in pairwise(sizes)], packed, labels)
        convs, packed = [], []
        for label in ("conv-csr", "conv-bsr4x1"):
            fmt, params, args = CONV[label]
            args = dict(args, in_channels=4 if label == "conv-csr" else 8)
            conv = nn.Conv2d(**args)
            with torch.no_grad():
                flat = conv.weight.view(conv.out_channels, -1)
                flat.mul_(sparse_mask(gen, *flat.shape, fmt, params))
            convs.append(nn.Conv2d(**args))
            packed.append(SparseConv2d.from_dense(conv, format=fmt, params=params))
        self._add("cnn", convs, packed, ("conv-csr", "conv-bsr4x1"))

    def _add(self, name: str, dense: list, packed: list, labels: tuple[str, ...]) -> None:
        """Registers a model: layers at 0, 2, 4 with ReLUs between (dense for the factory)."""
        def interleave(mods):
            out = []
            for m in mods:
                out += [m, nn.ReLU()]
            return out[:-1]
        self.factories[name] = _sequential(*interleave(dense))
        sparseprune.save(nn.Sequential(*interleave(packed)).eval(), self.path)
        self.clean[name] = torch.load(self.path, weights_only=True)
        self.layers[name] = {str(2 * i): label for i, label in enumerate(labels)}

    def prepare(self, rng: random.Random, gen: torch.Generator) -> Prepared:
        name = rng.choice(list(self.clean))
        data = copy.deepcopy(self.clean[name])
        data, label, kind, desc = mutate_file(rng, data, self.layers[name])

        def run() -> tuple[str, str]:
            torch.save(data, self.path)
            try:
                model = sparseprune.load(self.path, self.factories[name])
            except Exception as err:
                return classify(err, kind), short(err)
            for mod_name, mod in model.named_modules():
                if isinstance(mod, PackedModule):
                    problem = check_forward(mod, gen)
                    if problem:
                        return "wrong", f"layer {mod_name!r}: {problem}"
            return "loaded", ""
        return label, kind, f"{name}: {desc}", run
