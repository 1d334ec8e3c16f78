"""Where the time goes: per-op-kind time and MACs of an unpruned and a channel-pruned model.

Forward hooks time every leaf module (1x1 convs, depthwise convs, other convs, BatchNorm,
activations, Linear); "other" is the rest of the forward (residual adds, pooling, Python). Shows
which kinds shrink with the MACs and which do not, e.g. why MobileNetV2's speedup stays below its
MAC reduction. Prints Markdown.

    PYTHONPATH=. python bench/structured_profile.py --model mobilenetv2 --amount 0.5 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch import nn

from sparseprune.structured import fold_batchnorm, plan
from tests.structured.models import FULL_SIZE, randomize_bn

MODELS = FULL_SIZE
KINDS = ("conv 1x1", "conv depthwise", "conv kxk", "batchnorm", "activation", "linear", "other")


def kind(m: nn.Module) -> str | None:
    if isinstance(m, nn.Conv2d):
        if m.groups == m.in_channels and m.groups > 1:
            return "conv depthwise"
        return "conv 1x1" if m.kernel_size == (1, 1) else "conv kxk"
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return "batchnorm"
    if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU, nn.GELU)):
        return "activation"
    if isinstance(m, nn.Linear):
        return "linear"
    return None


def macs(m: nn.Module, out: torch.Tensor) -> float:
    if isinstance(m, nn.Conv2d):
        return out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
    if isinstance(m, nn.Linear):
        return out.numel() * m.in_features
    return 0.0


def profile(model: nn.Module, x: torch.Tensor, rounds: int) -> tuple[dict, dict]:
    """Median seconds and MACs per kind over ``rounds`` forwards."""
    spent: dict[str, float] = defaultdict(float)
    work: dict[str, float] = defaultdict(float)
    start: dict[int, float] = {}
    handles = []
    for m in model.modules():
        k = kind(m)
        if k is None:
            continue

        def pre(mod, _inp):
            start[id(mod)] = time.perf_counter()

        def post(mod, _inp, out, k=k):
            spent[k] += time.perf_counter() - start[id(mod)]
            work[k] += macs(mod, out)

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    runs = []
    try:
        with torch.no_grad():
            model(x)
            for _ in range(rounds):
                spent.clear()
                work.clear()
                t0 = time.perf_counter()
                model(x)
                total = time.perf_counter() - t0
                row = dict(spent)
                row["other"] = total - sum(spent.values())
                row["total"] = total
                runs.append(row)
    finally:
        for h in handles:
            h.remove()
    med = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in (*KINDS, "total")}
    return med, dict(work)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=list(MODELS), default="mobilenetv2")
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layout", choices=["contiguous", "channels_last"], default="channels_last")
    ap.add_argument("--fuse-bn", action="store_true", help="fold BatchNorm in both models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fmt = torch.channels_last if args.layout == "channels_last" else torch.contiguous_format
    torch.manual_seed(0)
    dense = randomize_bn(MODELS[args.model]()).eval()
    x = torch.randn(args.batch, 3, args.size, args.size).to(memory_format=fmt)
    small = plan(dense, x, amount=args.amount).apply()
    if args.fuse_bn:
        dense, small = fold_batchnorm(dense), fold_batchnorm(small)
    dense, small = dense.to(memory_format=fmt), small.to(memory_format=fmt)
    td, wd = profile(dense, x, args.rounds)
    ts, ws = profile(small, x, args.rounds)
    print(f"{args.model}, {args.amount:.0%} of channels removed, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.threads} thread(s), {args.layout}, BN "
          f"{'folded' if args.fuse_bn else 'kept'}; median of {args.rounds} forwards")
    print("| kind | unpruned ms | pruned ms | share of pruned time | time shrinks | MACs shrink |")
    print("|---|---|---|---|---|---|")
    for k in (*KINDS, "total"):
        if td[k] == 0 and ts[k] == 0:
            continue
        mac = "" if not wd.get(k) else f"{wd[k] / max(ws.get(k, 0), 1):.2f}x"
        if k == "total":
            mac = f"{sum(wd.values()) / max(sum(ws.values()), 1):.2f}x"
        print(f"| {k} | {td[k] * 1e3:.1f} | {ts[k] * 1e3:.1f} | {ts[k] / ts['total']:.0%} | "
              f"{td[k] / ts[k]:.2f}x | {mac} |")


if __name__ == "__main__":
    main()
