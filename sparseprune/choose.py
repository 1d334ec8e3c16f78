"""Which packed format a layer should run in: the candidates its mask allows, a measurement on
the layer's real input (cached on disk per CPU, shape, pattern, sparsity and batch), or a cost
model when there is nothing to measure with. Dense is always a candidate: a layer is never
made slower than dense on purpose.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import ops
from ._cache import cache_dir
from ._timing import calls_for, interleaved
from .formats import BSR, FORMATS

__all__ = ["Candidate", "Choice", "candidates_for", "check_formats", "choose", "cost_model",
           "cache_path", "DENSE", "BLOCK_SHAPES", "NM_SIZES", "cpu_model"]

DENSE = "dense"
# Block shapes tried, largest first (r x 1 blocks feed r outputs from one broadcast input).
BLOCK_SHAPES = ((16, 1), (8, 1), (4, 4), (4, 1), (1, 4))
NM_SIZES = (4, 8, 16)  # group sizes M tried for N:M
# A block layout is a candidate when it stores at most this many values per kept one.
_MAX_BLOCK_FILL = 1.05
_CACHE_VERSION = 1


@dataclass(frozen=True)
class Candidate:
    """A format and its parameters, e.g. ("bsr", (8, 1)); ("dense", ()) keeps the layer."""

    format: str
    params: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        if self.format == "nm":
            return f"nm{self.params[0]}:{self.params[1]}"
        if self.format == "bsr":
            return f"bsr{self.params[0]}x{self.params[1]}"
        return self.format

    @staticmethod
    def parse(label: str) -> Candidate:
        if label.startswith("nm") and ":" in label:
            n, m = label[2:].split(":")
            return Candidate("nm", (int(n), int(m)))
        if label.startswith("bsr") and "x" in label:
            r, c = label[3:].split("x")
            return Candidate("bsr", (int(r), int(c)))
        return Candidate(label)


@dataclass
class Choice:
    """What was chosen for one layer and why: ``speedups`` per candidate label (measured, or
    None), ``how`` is "measured", "cached" or "cost model"."""

    candidate: Candidate
    how: str
    speedups: dict[str, float] = field(default_factory=dict)
    batch_sizes: tuple[int, ...] = ()

    @property
    def speedup(self) -> float | None:
        return self.speedups.get(self.candidate.label)


def check_formats(allowed: Sequence[str] | None) -> set[str]:
    """The format names ``allowed`` (None: every registered one); ValueError for unknown ones."""
    allowed = set(FORMATS) if allowed is None else set(allowed)
    unknown = allowed - set(FORMATS) - {DENSE}
    if unknown:
        raise ValueError(f"unknown format(s) {sorted(unknown)}; known: {sorted(FORMATS)}")
    return allowed


def candidates_for(keep: torch.Tensor, allowed: Sequence[str] | None = None) -> list[Candidate]:
    """Formats the mask ``keep`` [rows, cols] (bool) can use, dense first.

    Unstructured formats take any mask; N:M is offered for the smallest N per group size M that
    the mask satisfies (when N < M); a block shape when its blocks store at most 5 % more values
    than are kept. ``allowed`` limits the format names (None: all registered).
    """
    allowed = check_formats(allowed)
    out = [Candidate(DENSE)]
    out += [Candidate(f) for f in ("sell", "csr") if f in allowed]
    rows, cols = keep.shape
    if "nm" in allowed and rows and cols:
        for m in NM_SIZES:
            g = -(-cols // m)
            padded = torch.zeros(rows, g * m, dtype=torch.bool)
            padded[:, :cols] = keep
            n = max(1, int(padded.reshape(rows, g, m).sum(-1).max()))
            if n < m and n / m <= 0.5:
                out.append(Candidate("nm", (n, m)))
                break  # a larger M with the same ratio only adds padding risk
    if "bsr" in allowed and rows and cols:
        for r, c in BLOCK_SHAPES:
            if BSR.fill(keep, r, c) <= _MAX_BLOCK_FILL:
                out.append(Candidate("bsr", (r, c)))
    return out


def _nm_fill(keep: torch.Tensor, n: int, m: int) -> float:
    kept = int(keep.sum())
    return keep.shape[0] * -(-keep.shape[1] // m) * n / kept if kept else 1.0


def cost_model(cands: Sequence[Candidate], keep: torch.Tensor,
               min_sparsity: float = 0.5) -> Candidate:
    """The choice without a measurement: a block layout (r >= 4) or N:M when the mask really has
    that structure (they move fewer bytes per value: no index per value, or a 4-bit one), else
    SELL-C (CSR where SELL is not allowed) from ``min_sparsity`` on; dense below."""
    labels = {c.format: c for c in cands}
    blocks = [c for c in cands if c.format == "bsr" and c.params[0] >= 4]
    if blocks:
        return blocks[0]
    nm = labels.get("nm")
    if nm is not None and _nm_fill(keep, *nm.params) <= _MAX_BLOCK_FILL:
        return nm
    sparsity = 1.0 - float(keep.sum()) / keep.numel() if keep.numel() else 1.0
    for fmt in ("sell", "csr"):
        if sparsity >= min_sparsity and fmt in labels:
            return labels[fmt]
    return Candidate(DENSE)


def cache_path() -> str:
    """The on-disk cache of measured choices, in ``sparseprune._cache.cache_dir()``
    (``$SPARSEPRUNE_CACHE_DIR``, else the user cache dir)."""
    return os.path.join(cache_dir(), "convert-choices.json")


def cpu_model() -> str:
    """The CPU's model name (what measured choices are cached under)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_lock = threading.Lock()


@functools.lru_cache(maxsize=1)
def _native_build() -> str:
    """Size and modification time of the compiled extension: a rebuilt one (kernels changed,
    the version string maybe not) measures again instead of trusting choices made for the old
    kernels."""
    from . import _C

    try:
        st = os.stat(_C.__file__)
    except (OSError, AttributeError, TypeError):
        return "unknown"
    return f"{st.st_size}-{st.st_mtime_ns}"


def _cache_key(shape, keep: torch.Tensor, cands, batch_sizes, threads, context=None) -> str:
    # The mask itself (hashed), not only its sparsity: two masks of one sparsity can differ in
    # structure (and so in their candidates).
    digest = hashlib.sha1(keep.to(torch.uint8).numpy().tobytes()).hexdigest()[:16]
    parts = [_CACHE_VERSION, cpu_model(), ops.native_version(), _native_build(),
             ",".join(ops.cpu_info()["active"]),
             list(shape), digest, [c.label for c in cands], list(batch_sizes), threads]
    if context is not None:  # e.g. a conv's input size, stride and padding
        parts.append(list(context))
    return json.dumps(parts)


def _cache_load() -> dict:
    try:
        with open(cache_path()) as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _cache_store(key: str, value: dict) -> None:
    path = cache_path()
    with _lock:
        data = _cache_load()
        data[key] = value
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(data, f)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except OSError:
            pass  # a read-only home only costs a re-measurement next time


def _cached_choice(entry: object, cands: Sequence[Candidate]
                   ) -> tuple[Candidate, dict[str, float]] | None:
    """A cache entry as (candidate, speedups), or None when it is malformed in any way (the
    file is the user's: anything in it is only a hint, re-measured when it does not parse)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("choice"), str):
        return None
    speedups = entry.get("speedups", {})
    if not isinstance(speedups, dict) or not all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in speedups.items()):
        return None
    try:
        cand = Candidate.parse(entry["choice"])
    except ValueError:
        return None
    if cand not in cands:
        return None
    return cand, {k: float(v) for k, v in speedups.items()}


def choose(cands: Sequence[Candidate], keep: torch.Tensor, inputs: Sequence[torch.Tensor],
           build: Callable[[Candidate], Callable[[torch.Tensor], torch.Tensor]],
           dense: Callable[[torch.Tensor], torch.Tensor], *, min_speedup: float = 1.0,
           cache: bool = True, budget_s: float = 0.004,
           batch_sizes: Sequence[int] | None = None, context: Sequence | None = None) -> Choice:
    """Measures every candidate against ``dense`` on each input (one per batch size) and keeps
    the one whose worst ratio over the batch sizes is best; dense when none reaches
    ``min_speedup`` at every batch size.

    Args:
        cands: from ``candidates_for`` (dense included).
        keep: the layer's mask (the cache key hashes it).
        inputs: one input per batch size the layer must be fast at.
        build: candidate -> a forward callable (the packed layer).
        dense: the dense forward (the baseline).
        batch_sizes: the batch size of each input (default: rows of a [..., features] input).
        context: what else the speed depends on (a conv's input size, stride, ...), for the
            cache key.
    """
    if batch_sizes is None:
        batch_sizes = tuple(int(x.reshape(-1, x.shape[-1]).shape[0]) for x in inputs)
    batch_sizes = tuple(int(b) for b in batch_sizes)
    key = _cache_key(tuple(keep.shape), keep, cands, batch_sizes, ops.get_num_threads(), context)
    if cache:
        hit = _cached_choice(_cache_load().get(key), cands)
        if hit is not None:
            return Choice(hit[0], "cached", hit[1], batch_sizes)
    worst: dict[str, float] = {Candidate(DENSE).label: 1.0}
    with torch.inference_mode():
        for cand in cands:
            if cand.format == DENSE:
                continue
            fwd = build(cand)
            ratios = []
            for x in inputs:
                f, d = functools.partial(fwd, x), functools.partial(dense, x)
                d()
                ratios.append(interleaved(f, d, calls_for(f, budget_s), rounds=5, warmup=1)[2])
            worst[cand.label] = min(ratios)
    best_label = max(worst, key=lambda k: worst[k])
    if worst[best_label] < min_speedup:
        best_label = DENSE
    choice = Choice(Candidate.parse(best_label), "measured", worst, batch_sizes)
    if cache:
        _cache_store(key, {"choice": best_label, "speedups": worst})
    return choice
