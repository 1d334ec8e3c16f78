"""MAC cut and measured speedup of ``plan(amount=...)`` under different floors, on torchvision
models (weights=None, BatchNorm folded in both models, 1 thread, interleaved rounds).

    PYTHONPATH=. python bench/structured_floors.py --models mobilenet_v3_small,mnasnet0_5
    PYTHONPATH=. python bench/structured_floors.py --floors 1/1,8/8,16/16 --batches 1,16

``--floors`` lists ``round_to/min_channels`` pairs. Needs torchvision (see structured_zoo.py's
docstring for the CUDA-build import); exits 0 without it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from structured_zoo import import_torchvision  # noqa: E402

from sparseprune.structured import count_macs, fold_batchnorm, plan  # noqa: E402


def timed(models: dict, x: torch.Tensor, rounds: int, min_s: float) -> dict[str, float]:
    """Median seconds per call of every model, the models taking turns in each round."""
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for m in models.values():
            m(x)
        for _ in range(rounds):
            for k, m in models.items():
                n, t0 = 0, time.perf_counter()
                while n == 0 or time.perf_counter() - t0 < min_s:
                    m(x)
                    n += 1
                times[k].append((time.perf_counter() - t0) / n)
    return {k: sorted(v)[len(v) // 2] for k, v in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mobilenet_v3_small,mnasnet0_5,mobilenet_v2,"
                    "efficientnet_b0,regnet_x_400mf,squeezenet1_1,mobilenet_v3_large,resnet18")
    ap.add_argument("--floors", default="16/16,1/1", help="round_to/min_channels pairs")
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--min-time", type=float, default=0.25, help="seconds per timed round")
    args = ap.parse_args()
    tv = import_torchvision()
    if tv is None:
        print("torchvision is not installed: nothing to run")
        return 0
    torch.set_num_threads(1)
    floors = [tuple(int(v) for v in f.split("/")) for f in args.floors.split(",")]
    print(f"amount={args.amount}, BatchNorm folded, 1 thread, median of {args.rounds} rounds")
    print("| model | batch | " + " | ".join(f"{r}/{c} MAC cut | {r}/{c} speedup"
                                        for r, c in floors) + " |")
    print("|---|---|" + "---|---|" * len(floors))
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = tv.models.get_model(name, weights=None).eval()
        x1 = torch.randn(1, 3, 224, 224)
        macs = count_macs(model, x1)
        models = {"dense": fold_batchnorm(copy.deepcopy(model), inplace=True)}
        cuts = {}
        for r, c in floors:
            small = plan(model, x1, amount=args.amount, round_to=r, min_channels=c).apply(
                fold_bn=True).eval()
            cuts[(r, c)] = macs / count_macs(small, x1)
            models[(r, c)] = small
        for b in (int(v) for v in args.batches.split(",")):
            t = timed(models, torch.randn(b, 3, 224, 224), args.rounds, args.min_time)
            cells = " | ".join(f"{cuts[f]:.2f}x | {t['dense'] / t[f]:.2f}x" for f in floors)
            print(f"| {name} | {b} | {cells} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
