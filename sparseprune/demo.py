"""``sparseprune demo``: prune an MLP, convert it, and show accuracy is kept and latency drops.

A small self-contained job (no downloads): a 784-2048-2048-10 MLP gets 90 % global magnitude
pruning (``torch.nn.utils.prune``), then ``convert`` packs it; the demo checks the sparse model
computes the same outputs and times dense vs sparse at batch 1 and 64. The full workflow demo
(fine-tuning, lottery tickets, sensitivity) will replace this.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.utils.prune as prune
from torch import nn

from .convert import convert

__all__ = ["run_demo"]


def _median_time(fn, calls: int, rounds: int = 5) -> float:
    for _ in range(2):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples)


def run_demo(quick: bool = False, sparsity: float = 0.9) -> int:
    torch.manual_seed(0)
    hidden = 1024 if quick else 2048
    model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 10)).eval()
    layers = [(m, "weight") for m in model if isinstance(m, nn.Linear)]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=sparsity)
    sparse, report = convert(model)
    print(f"Model: MLP 784-{hidden}-{hidden}-10, {sparsity:.0%} global magnitude pruning\n")
    print(report)

    x = torch.randn(64, 784)
    with torch.inference_mode():
        err = (sparse(x) - model(x)).abs().max().item()
    print(f"\nmax |sparse - dense| on a batch of 64: {err:.2e}")

    print(f"\n{'batch':>5}  {'dense (ms)':>10}  {'sparse (ms)':>11}  {'speedup':>7}")
    with torch.inference_mode():
        for batch in (1, 64):
            xb = torch.randn(batch, 784)
            calls = 20 if quick else 50
            t_dense = _median_time(lambda xb=xb: model(xb), calls)
            t_sparse = _median_time(lambda xb=xb: sparse(xb), calls)
            print(f"{batch:>5}  {t_dense * 1e3:>10.3f}  {t_sparse * 1e3:>11.3f}  "
                  f"{t_dense / t_sparse:>6.2f}x")
    print(f"\n(threads: torch {torch.get_num_threads()}; the dense model runs the pruned weights "
          "as torch.nn.utils.prune leaves them, i.e. dense matmuls with zeros)")
    return 0
