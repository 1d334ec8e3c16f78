"""Latency budgets on this CPU: does the measured pruned model meet the budget it was planned for?

For every model and budget, ``plan(model, x, latency=budget)`` builds (or loads) the per-layer
latency table, plans, then measures and re-plans (calibration). The report gives the table's own
first guess (as calibration measured it, and that same model re-measured for ``--check-time``
seconds), each calibration round's measured ratio, and an independent interleaved re-measure of
the final pruned model against the unpruned one, beside the MAC reduction. Prints Markdown.

    PYTHONPATH=. python bench/latency_budget_report.py                       # batch 32, 224²
    PYTHONPATH=. python bench/latency_budget_report.py --batch 1 --budgets 0.5
"""

from __future__ import annotations

import argparse
import time

import torch

from sparseprune.structured import WallClock, count_macs, fold_batchnorm, plan
from tests.structured.models import FULL_SIZE, randomize_bn

MODELS = FULL_SIZE


class FirstPlan(WallClock):
    """The plan's clock, keeping the first pruned model calibration measures (the table's own
    guess) for the long re-measure."""

    def __init__(self) -> None:
        super().__init__()
        self.first = None

    def ratio(self, small, big, inputs) -> float:
        if self.first is None:
            self.first = small
        return super().ratio(small, big, inputs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budgets", default="0.5,0.3", help="fractions of the unpruned latency")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layout", choices=["contiguous", "channels_last"], default="channels_last")
    ap.add_argument("--fold-bn", action="store_true",
                    help="plan with fold_bn=True: both models measured with BatchNorm folded")
    ap.add_argument("--check-time", type=float, default=8.0,
                    help="seconds of interleaved runs for the independent re-measure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    x = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=fmt)
    print(f"fp32, batch {args.batch}, {args.size}x{args.size}, {args.threads} thread(s), "
          f"layout {args.layout}, BN {'folded' if args.fold_bn else 'kept'}, "
          f"torch {torch.__version__}")
    print("| model | budget | table's guess (measured) | table's guess, re-measured | "
          "calibration rounds (measured) | final, re-measured | speedup | MAC reduction | "
          "channels kept | plan time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    check = WallClock(min_time=args.check_time, min_rounds=7)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = randomize_bn(MODELS[name]()).to(memory_format=fmt)
        macs = count_macs(model, x)
        for budget in (float(b) for b in args.budgets.split(",")):
            t0 = time.perf_counter()
            clock = FirstPlan()
            try:
                p = plan(model, x, latency=budget, fold_bn=args.fold_bn, timer=clock)
            except ValueError as exc:
                print(f"| {name} | {budget:.1%} | unreachable: {exc} | | | | | | | |")
                continue
            took = time.perf_counter() - t0
            reference = fold_batchnorm(model) if args.fold_bn else model
            small = p.apply(channels_last=args.layout == "channels_last")
            ratio = check.ratio(small, reference, (x,))
            # the table's own plan, the one calibration measured first, measured as long
            first_ratio = check.ratio(clock.first, reference, (x,))
            rounds = p.measured["rounds"]
            kept = p.after["channels"] / p.before["channels"]
            print(f"| {name} | {budget:.1%} | {rounds[0][1]:.1%} | {first_ratio:.1%} | "
                  f"{', '.join(f'{r:.1%}' for _, r in rounds)} | {ratio:.1%} | {1 / ratio:.2f}x | "
                  f"{macs / count_macs(small, x):.2f}x | {kept:.1%} | {took:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
