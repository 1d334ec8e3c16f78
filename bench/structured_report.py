"""Structured pruning speedups: ResNet-18- and MobileNetV2-shaped models, fp32, on this CPU.

For every model, amount (0/30/50/70 % of channels, plan defaults), batch (1, 32) and thread count
(1, 2), the pruned model is timed against the unpruned one in the same memory layout, runs
interleaved (A, B, A, B, ...) so drift hits both alike; the report gives the median-based speedup
beside the MAC reduction and the roofline bound (``bench/roofline.py``: per layer the larger of
its compute time at this machine's measured GEMM rate and its memory time at the measured copy
bandwidth; a memory-bound pruned layer cannot follow its MAC cut). Prints a Markdown table.

    PYTHONPATH=. python bench/structured_report.py                  # full table (minutes)
    PYTHONPATH=. python bench/structured_report.py --quick          # smoke run, small inputs
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from roofline import machine_peaks, roofline_seconds  # bench/, the script's own directory

from sparseprune.structured import count_macs, fold_batchnorm, plan
from tests.structured.models import FULL_SIZE, randomize_bn

MODELS = FULL_SIZE


def interleaved(a, b, x, rounds: int) -> tuple[float, float]:
    """Median seconds per call of ``a(x)`` and ``b(x)``, alternating calls."""
    ta, tb = [], []
    with torch.no_grad():
        a(x), b(x)  # warm-up
        for _ in range(rounds):
            t0 = time.perf_counter()
            a(x)
            t1 = time.perf_counter()
            b(x)
            t2 = time.perf_counter()
            ta.append(t1 - t0)
            tb.append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def _fuse(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` with every eval-mode BatchNorm folded into the conv before it (a copy)."""
    return fold_batchnorm(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64x64 inputs, batch 1, 1 thread")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--layout", choices=["contiguous", "channels_last"], default="channels_last")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list")
    ap.add_argument("--amounts", default="0,0.3,0.5,0.7", help="fractions of channels removed")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--fuse-bn", action="store_true",
                    help="fold eval BatchNorm into the preceding conv in both models (deployment)")
    args = ap.parse_args()
    size = 64 if args.quick else 224
    batches = (1,) if args.quick else tuple(int(v) for v in args.batches.split(","))
    threads = (1,) if args.quick else tuple(int(v) for v in args.threads.split(","))
    amounts = tuple(float(v) for v in args.amounts.split(","))
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    print(f"fp32, {size}x{size}, layout {args.layout}, BN {'folded' if args.fuse_bn else 'kept'}, "
          f"median of {args.rounds} interleaved runs, "
          f"torch {torch.__version__}")
    peaks = {nt: machine_peaks(nt) for nt in threads}
    print("machine: " + ", ".join(f"{nt} thread(s) fp32 GEMM {f / 1e9:.0f} GFLOP/s, copy "
                                   f"{b / 1e9:.1f} GB/s" for nt, (f, b) in peaks.items()))
    print("| model | removed | MACs (G) | MAC reduction | batch | threads | dense ms | pruned ms "
          "| speedup | speedup / MAC reduction | roofline speedup | speedup / roofline |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, factory in MODELS.items():
        if name not in args.models.split(","):
            continue
        torch.manual_seed(0)
        model = randomize_bn(factory()).eval()
        x1 = torch.randn(1, 3, size, size)
        macs0 = count_macs(model, x1)
        graph = plan(model, x1, amount=0.0).graph
        dense = (_fuse(model) if args.fuse_bn else model).to(memory_format=fmt)
        for amount in amounts:
            small = plan(model, x1, amount=amount, graph=graph).apply().eval()
            small = (_fuse(small) if args.fuse_bn else small).to(memory_format=fmt)
            red = macs0 / count_macs(small, x1)
            for batch in batches:
                x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
                for nt in threads:
                    torch.set_num_threads(nt)
                    td, tp = interleaved(dense, small, x, args.rounds)
                    sp = td / tp
                    roof = (roofline_seconds(dense, x, *peaks[nt])
                            / roofline_seconds(small, x, *peaks[nt]))
                    print(f"| {name} | {amount:.0%} | {macs0 / red / 1e9:.3f} | {red:.2f}x | "
                          f"{batch} | {nt} | {td * 1e3:.2f} | {tp * 1e3:.2f} | {sp:.2f}x | "
                          f"{sp / red:.2f} | {roof:.2f}x | {sp / roof:.2f} |", flush=True)


if __name__ == "__main__":
    main()
