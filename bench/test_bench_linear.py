"""pytest-benchmark groups: sparseprune vs torch dense vs torch CSR (int64, int32), scipy CSR and
torch BSR (square blocks), per pattern.

Run: ``pytest bench/test_bench_linear.py --benchmark-group-by=group`` (add ``-k "4096 and s0.9"``
to narrow it). Each group is one case (shape, pattern, sparsity, batch, warm/cold) and holds the
dense baseline and every peer, so ratios inside a group come from one run on one machine.
Shapes come from ``bench/shapes/*.txt`` (``N K`` rows of real models; the ``conv_*`` files are
bench/test_bench_conv.py's); single-threaded unless SPARSEPRUNE_BENCH_THREADS says otherwise.
"""

import os
from functools import cache
from pathlib import Path

import pytest
import torch

from sparseprune import benchmark as harness


def _shapes() -> list[tuple[int, int]]:
    out = []
    for path in sorted((Path(__file__).parent / "shapes").glob("*.txt")):
        if path.name.startswith("conv_"):  # conv layer shapes: bench/test_bench_conv.py
            continue
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].split()
            if line and (int(line[0]), int(line[1])) not in out:
                out.append((int(line[0]), int(line[1])))
    return out


SHAPES = _shapes()
PATTERNS = {"unstructured": [0.5, 0.7, 0.9, 0.95], "2:4": [0.5], "8x1": [0.9], "4x4": [0.9]}
BATCHES = [1, 8, 64, 256]
THREADS = int(os.environ.get("SPARSEPRUNE_BENCH_THREADS", "1"))

CASES = [harness.Case(n, k, s, b, cold=False, threads=THREADS, pattern=p)
         for (n, k) in SHAPES for p, ss in PATTERNS.items() for s in ss for b in BATCHES]
CASES += [harness.Case(n, k, s, 1, cold=True, threads=THREADS, pattern=p)
          for (n, k) in SHAPES for p, ss in PATTERNS.items() for s in ss]


@cache
def _inputs(case: harness.Case):
    """Weights, bias and input, shared by every method of a case."""
    return harness.case_inputs(case)


@pytest.mark.parametrize("method", list(harness.DEFAULT_METHODS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.label)
def test_linear(benchmark, case, method):
    ws, b, x = _inputs(case)
    torch.set_num_threads(case.threads)
    try:
        fn, nbytes = harness.METHODS[method](ws, b, x)
    except ValueError as e:
        pytest.skip(f"{method} does not apply to {case.pattern}: {e}")
    nnz = int((ws[0] != 0).sum())
    flops = 2.0 * case.batch * (case.n * case.k if method == "torch dense" else nnz)
    benchmark.group = case.label
    benchmark.extra_info.update(method=method, weight_bytes=nbytes, gflops=flops / 1e9)
    with torch.inference_mode():
        benchmark(fn)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info["eff_gflops"] = flops / stats.median / 1e9

