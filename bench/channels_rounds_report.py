"""Structured pruning and accuracy: one shot vs rounds, on the digits CNN (offline data).

For each seed: train a small conv net with BatchNorm on scikit-learn's digits, then remove 50 %
(or ``--amount``) of its channels three ways with the same fine-tuning budget:
no fine-tuning, one shot + E epochs, and ``iterative_channel_prune`` in ``--rounds`` equal steps
of E / rounds epochs each. Prints mean ± std test accuracy (selection on the validation split is
not used: every variant gets the same fixed epochs), parameters and MACs. Markdown.

    PYTHONPATH=. python bench/channels_rounds_report.py --seeds 3
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from sparseprune.structured import count_macs, count_params, plan
from sparseprune.workflow import FineTuneConfig, FineTuner, iterative_channel_prune
from sparseprune.workflow.data import digits


def cnn() -> nn.Sequential:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)), *block(1, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 10),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=30, help="training epochs before pruning")
    ap.add_argument("--ft-epochs", type=int, default=10, help="fine-tuning epochs after pruning")
    args = ap.parse_args()
    torch.set_num_threads(1)
    opts = dict(round_to=8, min_channels=8)
    results: dict[str, list[float]] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for seed in range(args.seeds):
        data = digits(seed=seed)
        tuner = FineTuner(data.loader("train", 64, shuffle=True, seed=seed),
                          data.loader("test", 1024), FineTuneConfig(lr=3e-3))
        x = data.x_test[:1]
        torch.manual_seed(seed)
        dense = cnn()
        tuner.train(dense, args.epochs)
        dense.eval()
        variants = {"unpruned": dense}
        p = plan(dense, x, amount=args.amount, **opts)
        variants["one shot, no fine-tuning"] = p.apply()
        one = p.apply()
        tuner.train(one, args.ft_epochs, lr_scale=0.1)
        variants[f"one shot + {args.ft_epochs} ep"] = one
        per = args.ft_epochs // args.rounds
        levels = [args.amount * (i + 1) / args.rounds for i in range(args.rounds)]
        rounds, _ = iterative_channel_prune(dense, x, levels, tuner.train, tuner.evaluate,
                                            epochs=per, tolerance=None, progress=False, **opts)
        variants[f"{args.rounds} rounds x {per} ep"] = rounds
        for name, m in variants.items():
            results.setdefault(name, []).append(tuner.evaluate(m.eval()))
            sizes[name] = (count_params(m), count_macs(m, x))
    print(f"digits CNN, {args.amount:.0%} of channels removed (round_to=8, min_channels=8), "
          f"{args.seeds} seeds, test accuracy mean ± std")
    print("| variant | accuracy | params | MACs |")
    print("|---|---|---|---|")
    for name, accs in results.items():
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"| {name} | {statistics.mean(accs):.2f} ± {sd:.2f} | {sizes[name][0]:,} | "
              f"{sizes[name][1]:,} |")


if __name__ == "__main__":
    main()
