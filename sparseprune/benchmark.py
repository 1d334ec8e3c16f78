"""Linear-layer benchmark: sparseprune against torch dense and the sparse peers, in one run.

Shared by ``sparseprune bench`` (a table) and ``bench/test_bench_linear.py`` (pytest-benchmark).
Every case times, on the same weights: torch dense ``F.linear`` (the baseline of every ratio),
torch CSR with int64 and with int32 indices (``torch.mv`` at batch 1, its fastest path, else
``W @ xᵀ``), scipy CSR, and ``SparseLinear``. Peers run without bias (slightly in their favour).

Warm runs reuse one weight every call. Cold runs cycle through enough distinct copies of the
weight that their total exceeds ``COLD_BYTES`` (past a 32 MiB L3), so each call reads weights
from DRAM, as a model's worth of layers would.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._timing import time_calls
from .nn import SparseLinear

__all__ = ["Case", "Result", "METHODS", "DEFAULT_METHODS", "run_case", "run_cases",
           "format_table", "make_weights", "case_inputs"]

COLD_BYTES = 96 << 20
BASELINE = "torch dense"
OURS = "sparseprune"


@dataclass(frozen=True)
class Case:
    """W [n, k] with ``sparsity`` zeros, x [batch, k].

    pattern: "unstructured" (uniform at random), "N:M" (e.g. "2:4": the sparsity is then
    1 - N/M, ``sparsity`` is ignored) or "RxC" blocks (e.g. "8x1": ``sparsity`` of the blocks
    are zero).
    """

    n: int
    k: int
    sparsity: float
    batch: int
    cold: bool = False
    threads: int = 1
    pattern: str = "unstructured"

    @property
    def label(self) -> str:
        mode = "cold" if self.cold else "warm"
        pat = "" if self.pattern == "unstructured" else f"-{self.pattern}"
        return (f"{self.n}x{self.k}{pat}-s{self.effective_sparsity:g}-b{self.batch}-{mode}"
                f"-t{self.threads}")

    @property
    def effective_sparsity(self) -> float:
        if ":" in self.pattern:
            n, m = (int(v) for v in self.pattern.split(":"))
            return round(1.0 - n / m, 4)
        return self.sparsity

    def mask(self, scores: torch.Tensor) -> torch.Tensor:
        """Keep-mask of this case's pattern for ``scores`` [n, k]."""
        from .pruning.patterns import NM, Block

        if ":" in self.pattern:
            n, m = (int(v) for v in self.pattern.split(":"))
            return NM(n, m, on_indivisible="pad").mask(scores)
        if "x" in self.pattern:
            r, c = (int(v) for v in self.pattern.split("x"))
            return Block(r, c, on_indivisible="pad").mask(scores, self.sparsity)
        return scores >= self.sparsity


@dataclass(frozen=True)
class Result:
    case: Case
    method: str
    seconds: float  # median time of one call
    speedup: float  # torch dense time / this time
    gflops: float  # effective: 2 * batch * nnz / time (dense: 2 * batch * n * k / time)

    def as_dict(self) -> dict:
        return {**asdict(self.case), "method": self.method, "seconds": self.seconds,
                "speedup": self.speedup, "gflops": self.gflops}


def make_weights(case: Case, copies: int, seed: int = 0) -> list[torch.Tensor]:
    """``copies`` dense weights [n, k], each zero with probability ``sparsity``.

    The copies hold the same values in separate memory: for cold runs what matters is that
    every call reads a different buffer, not different numbers.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(case.n, case.k, generator=g)
    w *= case.mask(torch.rand(case.n, case.k, generator=g))
    return [w] + [w.clone() for _ in range(copies - 1)]


def case_inputs(case: Case, seed: int = 0):
    """(weights, bias [n], x [batch, k]); cold cases get enough weight copies that even the
    packed sparse format (~6 B per nonzero) cycles through more than ``COLD_BYTES``."""
    copies = 1
    if case.cold:
        packed = max(1, round(case.n * case.k * (1.0 - case.effective_sparsity))) * 6
        copies = min(64, math.ceil(COLD_BYTES / packed))
    g = torch.Generator().manual_seed(seed + 1)
    b = torch.randn(case.n, generator=g)
    x = torch.randn(case.batch, case.k, generator=g)
    return make_weights(case, copies, seed), b, x


def _csr_torch(w: torch.Tensor, index_dtype: torch.dtype) -> torch.Tensor:
    with warnings.catch_warnings():  # "CSR support is in beta": known, and noise in a table
        warnings.simplefilter("ignore", UserWarning)
        c = w.to_sparse_csr()
    # Built from torch's own valid conversion, so its (costly, warning-raising) checks are off.
    return torch.sparse_csr_tensor(c.crow_indices().to(index_dtype),
                                   c.col_indices().to(index_dtype), c.values(), c.shape,
                                   check_invariants=False)


# Each factory takes (weights, bias, x) and returns (a zero-argument callable running one
# forward on the next weight, bytes of one weight in its format).
Factory = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], tuple[Callable, int]]


def _cycle(fns: list[Callable]) -> Callable:
    state = {"i": 0}

    def call():
        i = state["i"]
        state["i"] = (i + 1) % len(fns)
        return fns[i]()

    return call


def _dense(ws, b, x):
    return _cycle([lambda w=w: F.linear(x, w, b) for w in ws]), ws[0].numel() * 4


def _torch_csr(index_dtype):
    def factory(ws, b, x):
        mats = [_csr_torch(w, index_dtype) for w in ws]
        if x.shape[0] == 1:
            v = x[0]
            fns = [lambda m=m: torch.mv(m, v) for m in mats]
        else:
            xt = x.t()
            fns = [lambda m=m: torch.mm(m, xt).t() for m in mats]
        m = mats[0]
        size = sum(t.numel() * t.element_size() for t in (m.crow_indices(), m.col_indices(),
                                                          m.values()))
        return _cycle(fns), size

    return factory


def _scipy(ws, b, x):
    import scipy.sparse as sps

    mats = [sps.csr_matrix(w.numpy()) for w in ws]
    xn = x.numpy()
    if x.shape[0] == 1:
        v = xn[0]
        fns = [lambda m=m: m @ v for m in mats]
    else:
        xt = xn.T
        fns = [lambda m=m: (m @ xt).T for m in mats]
    m = mats[0]
    return _cycle(fns), m.data.nbytes + m.indices.nbytes + m.indptr.nbytes


def _linear(w, b) -> nn.Linear:
    lin = nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    return lin


def _ours(ws, b, x):
    # As a user who wants speed runs it: convert(example_inputs=x) measures the formats the mask
    # allows at this batch size and keeps the fastest (dense included); the other weight copies
    # (cold runs) get the same format.
    from .choose import Candidate
    from .convert import convert

    first, report = convert(_linear(ws[0], b), example_inputs=x, min_sparsity=0.0)
    label = report.layers[0].format
    if label is None:
        return _cycle([lambda w=w: F.linear(x, w, b) for w in ws]), ws[0].numel() * 4
    cand = Candidate.parse(label)
    layers = [first] + [SparseLinear.from_dense(_linear(w, b), format=cand.format,
                                                params=cand.params) for w in ws[1:]]
    return _cycle([lambda layer=layer: layer(x) for layer in layers]), layers[0].weight.nbytes


def _ours_default(ws, b, x):
    # convert() without inputs: the cost model's choice (the format the mask has, else SELL-C).
    from .convert import convert

    layers = [convert(_linear(w, b), min_sparsity=0.0)[0] for w in ws]
    return _cycle([lambda layer=layer: layer(x) for layer in layers]), layers[0].weight.nbytes


def _ours_format(fmt: str) -> Factory:
    def factory(ws, b, x):
        from .choose import candidates_for

        cands = [c for c in candidates_for(ws[0] != 0, [fmt]) if c.format == fmt]
        if not cands:
            raise ValueError(f"the mask allows no {fmt} layout")
        layers = [SparseLinear.from_dense(_linear(w, b), format=fmt, params=cands[0].params)
                  for w in ws]
        return _cycle([lambda layer=layer: layer(x) for layer in layers]), layers[0].weight.nbytes

    return factory


def _torch_bsr(ws, b, x):
    # torch's CPU BSR matmul (MKL) takes square blocks only: the block size is inferred from a
    # mask made of 4x4 (or 16x16) blocks, else the case is not applicable.
    for bs in (16, 8, 4):
        if ws[0].shape[0] % bs == 0 and ws[0].shape[1] % bs == 0:
            grid = (ws[0] != 0).reshape(ws[0].shape[0] // bs, bs, -1, bs).any(3).any(1)
            stored = int(grid.sum()) * bs * bs
            if stored <= 1.05 * int((ws[0] != 0).sum()):
                break
    else:
        raise ValueError("not a square-block mask")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        mats = [w.to_sparse_bsr((bs, bs)) for w in ws]
    xt = x.t().contiguous()
    m = mats[0]
    size = sum(t.numel() * t.element_size() for t in (m.crow_indices(), m.col_indices(),
                                                      m.values()))
    return _cycle([lambda m=m: torch.mm(m, xt).t() for m in mats]), size


METHODS: dict[str, Factory] = {
    BASELINE: _dense,
    "torch csr int64": _torch_csr(torch.int64),
    "torch csr int32": _torch_csr(torch.int32),
    "scipy csr": _scipy,
    "torch bsr": _torch_bsr,
    OURS: _ours,
    f"{OURS} cost model": _ours_default,
    **{f"{OURS} {fmt}": _ours_format(fmt) for fmt in ("sell", "csr", "nm", "bsr")},
}
# Methods a default run times: the peers, and ours as convert() chooses.
DEFAULT_METHODS = (BASELINE, "torch csr int64", "torch csr int32", "scipy csr", "torch bsr", OURS)


def run_case(case: Case, methods: Iterable[str] = DEFAULT_METHODS, *, min_time: float = 0.3,
             rounds: int = 5, seed: int = 0) -> list[Result]:
    """Times every method on one case, interleaving rounds so drift hits all methods alike."""
    methods = list(methods)
    if BASELINE not in methods:
        methods.insert(0, BASELINE)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    ws, b, x = case_inputs(case, seed)
    nnz = int((ws[0] != 0).sum())

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        with torch.inference_mode():
            fns = {}
            for m in methods:
                try:
                    fn, _ = METHODS[m](ws, b, x)
                except ValueError:
                    continue  # not applicable to this pattern (e.g. torch bsr on 8x1 blocks)
                for _ in range(3):
                    fn()
                fns[m] = fn
            # Calls per timed batch: enough to fill min_time / rounds, measured once.
            calls = {}
            for m, fn in fns.items():
                t = time_calls(fn, 1)
                calls[m] = max(1, int(min_time / rounds / max(t, 1e-7)))
            samples: dict[str, list[float]] = {m: [] for m in fns}
            for _ in range(rounds):
                for m, fn in fns.items():
                    samples[m].append(time_calls(fn, calls[m]))
    finally:
        torch.set_num_threads(prev_threads)

    base = statistics.median(samples[BASELINE])
    results = []
    for m in fns:
        t = statistics.median(samples[m])
        flops = 2.0 * case.batch * (case.n * case.k if m == BASELINE else nnz)
        results.append(Result(case, m, t, base / t, flops / t / 1e9))
    return results


def run_cases(cases: Iterable[Case], methods: Iterable[str] = DEFAULT_METHODS, *,
              min_time: float = 0.3, rounds: int = 5, progress: bool = True) -> list[Result]:
    """``run_case`` over many cases, with a progress bar."""
    cases = list(cases)
    out: list[Result] = []
    iterator: Iterable[Case] = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc="benchmark", unit="case", leave=False)
    for case in iterator:
        out.extend(run_case(case, methods, min_time=min_time, rounds=rounds))
    return out


def format_table(results: list[Result]) -> str:
    """A markdown table: one row per (case, method) with time, speedup and effective GFLOP/s,
    plus sparseprune's ratio against the fastest sparse peer of the same case."""
    head = ("| shape | pattern | sparsity | batch | mode | threads | method | time (us) | "
            "vs dense | eff. GFLOP/s | ours vs best peer |")
    lines = [head, "|" + "---|" * 11]
    by_case: dict[Case, list[Result]] = {}
    for r in results:
        by_case.setdefault(r.case, []).append(r)
    for case, rows in by_case.items():
        peers = [r.seconds for r in rows
                 if r.method != BASELINE and not r.method.startswith(OURS)]
        ours = [r.seconds for r in rows if r.method == OURS]
        for r in rows:
            vs_peer = ""
            if r.method == OURS and peers:
                vs_peer = f"{min(peers) / ours[0]:.2f}x"
            lines.append(
                f"| {case.n}x{case.k} | {case.pattern} | {case.effective_sparsity:g} | "
                f"{case.batch} | "
                f"{'cold' if case.cold else 'warm'} | {case.threads} | {r.method} | "
                f"{r.seconds * 1e6:.1f} | {r.speedup:.2f}x | {r.gflops:.1f} | {vs_peer} |")
    return "\n".join(lines)
