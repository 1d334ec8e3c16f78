"""pytest-benchmark groups: SparseConv2d vs torch dense conv2d (oneDNN) vs im2col + torch CSR
(int32), per conv layer shape; and the whole ResNet-18 dense vs converted.

Run: ``pytest bench/test_bench_conv.py --benchmark-group-by=group`` (add ``-k "resnet18 and
s0.9"`` to narrow it). Each group is one case (layer shape, sparsity, batch) and holds the dense
baseline and the peer, so ratios inside a group come from one run on one machine. Shapes come
from ``bench/shapes/conv_*.txt`` (``C O H W kh kw stride pad groups`` rows of ResNet-18,
ResNet-50 and MobileNetV2 at 224x224); single-threaded unless SPARSEPRUNE_BENCH_THREADS says
otherwise. Not part of the test suite (``testpaths`` is ``tests``).
"""

import os
from functools import cache

import pytest
import torch

from sparseprune import bench_conv as harness

pytest.importorskip("pytest_benchmark")

SPARSITIES = [0.7, 0.9, 0.95]
BATCHES = [1, 8]
THREADS = int(os.environ.get("SPARSEPRUNE_BENCH_THREADS", "1"))

# (model, shape) pairs: a shape two models share is benchmarked once, under the first.
_SEEN: set = set()
LAYERS = [(m, s) for m in harness.MODELS for s in harness.model_shapes(m)
          if s not in _SEEN and not _SEEN.add(s)]
CASES = [(m, harness.ConvCase(s, sp, b, THREADS)) for m, s in LAYERS for sp in SPARSITIES
         for b in BATCHES]


@cache
def _inputs(case: harness.ConvCase):
    """Filter, bias and input, shared by every method of a case."""
    return harness.case_inputs(case)


@pytest.mark.parametrize("method", list(harness.METHODS))
@pytest.mark.parametrize("model,case", CASES, ids=lambda v: v.label if hasattr(v, "label")
                         else v)
def test_conv(benchmark, model, case, method):
    w, b, x = _inputs(case)
    s = case.shape
    torch.set_num_threads(case.threads)
    fn = harness.METHODS[method](w, b, x, s)
    kept = w.numel() if method == harness.BASELINE else int((w != 0).sum())
    flops = 2.0 * case.batch * kept * s.out_hw[0] * s.out_hw[1]
    benchmark.group = f"{model}-{case.label}"
    benchmark.extra_info.update(method=method, model=model, gflops=flops / 1e9)
    with torch.inference_mode():
        benchmark(fn)
    stats = benchmark.stats.stats if benchmark.stats else None
    if stats is not None:
        benchmark.extra_info["eff_gflops"] = flops / stats.median / 1e9


@cache
def _e2e(batch: int):
    model = harness.resnet18(0.9, 224)
    x = torch.randn(batch, 3, 224, 224)
    dense, sparse, how = harness._converted(model, x)
    return dense, sparse, how, x


@pytest.mark.parametrize("method", [harness.BASELINE, harness.OURS])
@pytest.mark.parametrize("batch", BATCHES)
def test_resnet18_end_to_end(benchmark, batch, method):
    torch.set_num_threads(THREADS)
    dense, sparse, how, x = _e2e(batch)
    net = dense if method == harness.BASELINE else sparse
    benchmark.group = f"resnet18-e2e-224-s0.9-b{batch}-t{THREADS}"
    benchmark.extra_info.update(method=method, converted=how)
    with torch.inference_mode():
        benchmark.pedantic(net, args=(x,), rounds=5, warmup_rounds=1)
