"""pytest-benchmark groups: sparseprune vs torch dense vs torch CSR (int64, int32) vs scipy CSR.

Run: ``pytest bench/test_bench_linear.py --benchmark-group-by=group`` (add ``-k "4096 and s0.9"``
to narrow it). Each group is one case (shape, sparsity, batch, warm/cold) and holds the dense
baseline and every peer, so ratios inside a group come from one run on one machine.
Single-threaded unless SPARSEPRUNE_BENCH_THREADS says otherwise.
"""

import os
from functools import cache

import pytest
import torch

from sparseprune import benchmark as harness

SHAPES = [(4096, 4096), (768, 3072)]
SPARSITIES = [0.5, 0.7, 0.9, 0.95]
BATCHES = [1, 8, 64]
THREADS = int(os.environ.get("SPARSEPRUNE_BENCH_THREADS", "1"))

CASES = [harness.Case(n, k, s, b, cold=False, threads=THREADS)
         for (n, k) in SHAPES for s in SPARSITIES for b in BATCHES]
CASES += [harness.Case(n, k, s, 1, cold=True, threads=THREADS)
          for (n, k) in SHAPES for s in SPARSITIES]


@cache
def _inputs(case: harness.Case):
    """Weights, bias and input, shared by every method of a case."""
    return harness.case_inputs(case)


@pytest.mark.parametrize("method", list(harness.METHODS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_linear(benchmark, case, method):
    ws, b, x = _inputs(case)
    torch.set_num_threads(case.threads)
    fn, nbytes = harness.METHODS[method](ws, b, x)
    nnz = int((ws[0] != 0).sum())
    flops = 2.0 * case.batch * (case.n * case.k if method == "torch dense" else nnz)
    benchmark.group = case.label
    benchmark.extra_info.update(method=method, weight_bytes=nbytes, gflops=flops / 1e9)
    with torch.inference_mode():
        benchmark(fn)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info["eff_gflops"] = flops / stats.median / 1e9

