"""Structured pruning across torchvision's classification zoo (weights=None), with Torch-Pruning
beside it when installed.

For every model: ``plan(model, x, amount=0.5)`` then ``apply()``; the outcome (ok, inexact,
trace error, apply error), params and MACs (``count_macs``) before and after, the MAC cut and the
planning seconds. With ``torch_pruning`` importable, its ``MetaPruner`` (L2 magnitude,
``pruning_ratio=0.5``, the classifier ignored, ``num_heads`` of every ``nn.MultiheadAttention``)
runs on a copy, whatever sparseprune's outcome, and its MAC cut (counted with ``count_macs``
too, so that the two cuts compare) and seconds are printed beside. Prints a Markdown table;
``--plans FILE`` also writes every plan (widths, ops kept and why).

With the defaults (groups under 256 channels not rounded, wider ones to multiples of 16, floor
1/8 of a width, LayerNorm widths pruned exactly) the two cut the same channels of the conv
families, to the rounding; TP's shrunk LayerNorms (ConvNeXt, Swin, ViT) are not
equal to their masked originals, sparseprune's are (``PrunedLayerNorm``). ``--round-to`` and
``--min-channels`` plan with other floors (the 16/16 of the first tables: ``--round-to 16
--min-channels 16``). Torch-Pruning 1.6.1 needs more
than 10 GB on a 224x224 Swin or MaxViT: run those with ``--no-tp`` on a small machine.

    PYTHONPATH=. python bench/structured_zoo.py                     # every model (long)
    PYTHONPATH=. python bench/structured_zoo.py --models resnet18,convnext_tiny
    PYTHONPATH=. python bench/structured_zoo.py --models swin_t --no-tp --plans plans.txt
    PYTHONPATH=. python bench/structured_zoo.py --local             # the test families, no
                                                                    # torchvision needed

torchvision from the package registry is a CUDA build: next to the CPU torch its import fails
(``operator torchvision::nms does not exist``) until the schemas of its two ops that register
fake kernels at import (``nms``, ``qnms``) exist; ``import_torchvision`` defines them with
``torch.library`` and retries. Without torchvision the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import torch
from torch import nn

from sparseprune.structured import count_macs, count_params, plan

# too large to plan on a 2-core machine in reasonable time; --models names them explicitly
HUGE = {"vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32", "regnet_y_32gf"}
_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_keep_library = []  # the torch.library.Library must outlive the import


def import_torchvision():
    """torchvision, or None when it is not installed (see the module docstring)."""
    try:
        import torchvision
    except ImportError:
        return None
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "DEF")  # schemas only, no kernels
        for schema in _SCHEMAS:
            lib.define(schema)
        _keep_library.append(lib)
        import torchvision
    return torchvision


def torchvision_models(tv, names: list[str] | None):
    """``(name, factory, input size)`` per classification model."""
    all_names = tv.models.list_models(module=tv.models)
    for name in names or [n for n in all_names if n not in HUGE]:
        size = 299 if name.startswith("inception") else 224
        yield name, (lambda n=name: tv.models.get_model(n, weights=None)), size


def local_models():
    from tests.structured.zoo_models import FAMILIES

    for name, (factory, shape) in FAMILIES.items():
        yield name, factory, shape[-1]


def classifier(model: nn.Module) -> list[nn.Module]:
    """The last Linear (or 1x1 conv) producing the logits: TP must not prune it."""
    last = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return last[-1:]


def run_tp(model: nn.Module, x: torch.Tensor) -> tuple[str, float, float]:
    """Torch-Pruning 1.6.1 at pruning_ratio=0.5: (outcome, MAC cut, seconds)."""
    import torch_pruning as tp

    model = copy.deepcopy(model)
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    try:
        macs0 = count_macs(model, x)
        t0 = time.perf_counter()
        pruner = tp.pruner.MetaPruner(
            model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
            ignored_layers=classifier(model), num_heads=heads,
        )
        pruner.step()
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            model(x)
        # counted like sparseprune's (count_macs, FlopCounterMode): TP's own counter misses
        # attention and functional ops, and the two cuts must be comparable
        macs1 = count_macs(model, x)
    except Exception as exc:  # a bench: report and go on
        return f"fails: {type(exc).__name__}: {str(exc)[:80]}", float("nan"), float("nan")
    return "ok", macs0 / macs1, seconds


def run_one(name: str, factory, size: int, with_tp: bool, plans=None,
            options: dict | None = None) -> dict:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(1, 3, size, size)
    row = {"model": name, "params": count_params(model), "macs": count_macs(model, x)}
    row.update(_run_sparseprune(model, x, row["macs"], plans, name, options or {}))
    if with_tp:  # beside sparseprune, whatever its outcome
        row["tp"] = run_tp(model, x)
    return row


def _run_sparseprune(model: nn.Module, x: torch.Tensor, macs: int, plans, name: str,
                     options: dict) -> dict:
    t0 = time.perf_counter()
    try:
        p = plan(model, x, amount=0.5, **options)
    except Exception as exc:
        return {"outcome": f"plan fails: {type(exc).__name__}: {str(exc)[:80]}"}
    plan_s = time.perf_counter() - t0
    if plans is not None:  # --plans: every plan's widths and kept ops, for diagnosis
        print(f"==== {name}\n{p}\n", file=plans, flush=True)
    try:
        small = p.apply()
    except Exception as exc:
        return {"outcome": f"apply fails: {type(exc).__name__}: {str(exc)[:80]}", "plan_s": plan_s}
    with torch.no_grad():
        got, want = small(x), p.masked_model()(x)
    err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
    outcome = "ok" if err < 1e-4 else f"inexact ({err:.1e})"
    miss = abs(p.before["macs"] / macs - 1)
    if miss > 0.02:  # the plan's MAC model disagrees with count_macs: a budget would miss
        outcome += f", plan MACs off by {miss:.1%}"
    return {"outcome": outcome, "plan_s": plan_s, "params_after": count_params(small),
            "macs_after": count_macs(small, x)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated torchvision model names")
    ap.add_argument("--local", action="store_true", help="the small test families instead")
    ap.add_argument("--no-tp", action="store_true", help="skip Torch-Pruning even if installed")
    ap.add_argument("--plans", help="write every plan (print(plan)) to this file")
    ap.add_argument("--round-to", default="auto",
                    type=lambda v: v if v == "auto" else int(v),
                    help="plan option: an int or auto (default: wide groups round to 16)")
    ap.add_argument("--min-channels", type=int, default=1, help="plan option (default 1)")
    args = ap.parse_args()
    options = {"round_to": args.round_to, "min_channels": args.min_channels}
    torch.set_num_threads(1)
    if args.local:
        models = local_models()
    else:
        tv = import_torchvision()
        if tv is None:
            print("torchvision is not installed: nothing to run (try --local)")
            return 0
        models = torchvision_models(tv, args.models.split(",") if args.models else None)
    try:
        import torch_pruning  # noqa: F401

        with_tp = not args.no_tp
    except ImportError:
        with_tp = False
    head = "| model | outcome | params | after | GMACs | after | MAC cut | plan s |"
    if with_tp:
        head += " TP | TP MAC cut | TP s |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    plans = open(args.plans, "w") if args.plans else None  # noqa: SIM115 (closed below)
    for name, factory, size in models:
        r = run_one(name, factory, size, with_tp, plans, options)
        if "macs_after" in r:
            line = (f"| {name} | {r['outcome']} | {r['params']:,} | {r['params_after']:,} | "
                    f"{r['macs'] / 1e9:.3f} | {r['macs_after'] / 1e9:.3f} | "
                    f"{r['macs'] / r['macs_after']:.2f}x | {r['plan_s']:.1f} |")
        else:
            plan_s = f"{r['plan_s']:.1f}" if "plan_s" in r else ""
            line = (f"| {name} | {r['outcome']} | {r['params']:,} | | {r['macs'] / 1e9:.3f} | "
                    f"| | {plan_s} |")
        if with_tp:
            outcome, cut, secs = r["tp"]
            line += f" {outcome} | {cut:.2f}x | {secs:.1f} |"
        print(line, flush=True)
    if plans is not None:
        plans.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
