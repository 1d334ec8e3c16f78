"""``sparseprune channels``: structured pruning of a model built by an importable factory.

    sparseprune channels mypkg.models:resnet18 --input 1,3,224,224 --weights r18.pt \\
        --amount 0.5 -o r18-small.pt

The factory builds the unpruned architecture; the weights (a state_dict file, loaded with
``weights_only=True``) go into it; the plan is printed with parameters, MACs and the measured
latency before and after; the result is written with ``save_pruned`` and loads back with
``load_pruned(factory, path)``.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

import torch
from torch import nn

from .budget import count_macs, count_params
from .fold import fold_batchnorm
from .io import save_pruned
from .latency import WallClock, time_call
from .planner import plan

__all__ = ["channels_report", "load_factory"]


def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``"package.module:callable"`` -> the callable (the working directory is importable).

    Raises:
        ValueError: a malformed spec, a module that does not import, or a missing callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"factory {spec!r}: expected 'package.module:callable', e.g. "
                         "'torchvision.models:resnet18'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"factory {spec!r}: cannot import {module_name!r}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"factory {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"factory {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


def _build(factory: Callable[[], nn.Module], spec: str, weights: str | None) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:  # the user's code: any error, named with the spec
        raise ValueError(f"factory {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {spec!r} returned a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and unsafe-global errors all land here
            raise ValueError(f"{weights}: not a weights-only state_dict file: {exc}") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(f"{weights}: expected a state_dict, got {type(state).__name__}")
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"{weights} does not fit {type(model).__name__}: missing "
                             f"{result.missing_keys[:5]}, unexpected "
                             f"{result.unexpected_keys[:5]}")
    return model.eval()


def channels_report(
    spec: str,
    input_shape: tuple[int, ...],
    *,
    weights: str | None = None,
    output: str | None = None,
    channels_last: bool = False,
    fold_bn: bool = False,
    **plan_options: object,
) -> str:
    """Plan and apply structured pruning; return the printable report (plan + before/after).

    ``plan_options`` go to ``sparseprune.structured.plan`` (one budget: ``amount``, ``macs``,
    ``params`` or ``latency``; ``round_to``, ``importance``, ...).

    Raises:
        ValueError: a bad factory, weights file, input shape or plan option.
    """
    if not input_shape or any(d < 1 for d in input_shape):
        raise ValueError(f"input shape {input_shape}: expected positive sizes, e.g. 1,3,224,224")
    factory = load_factory(spec)
    model = _build(factory, spec, weights)
    x = torch.randn(*input_shape)
    if channels_last:
        if x.dim() != 4:
            raise ValueError(f"--channels-last needs a 4-d input; got shape {input_shape}")
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    p = plan(model, x, fold_bn=fold_bn, **plan_options)
    small = p.apply(channels_last=channels_last)
    # like for like: with fold_bn the unpruned model is timed folded too
    reference = fold_batchnorm(model) if fold_bn else model
    ratio = WallClock().ratio(small, reference, (x,))
    with torch.no_grad():
        dense_ms = time_call(lambda: reference(x)) * 1e3
    lines = [str(p), "", f"{'':<8} {'params':>14} {'MACs':>16} {'latency (ms)':>13}"
             + ("   (BatchNorm folded in both)" if fold_bn else "")]
    for name, m, ms in (("before", reference, dense_ms), ("after", small, dense_ms * ratio)):
        lines.append(f"{name:<8} {count_params(m):>14,} {count_macs(m, x):>16,} {ms:>13.2f}")
    lines.append(f"speedup {1 / ratio:.2f}x (interleaved runs, {torch.get_num_threads()} "
                 f"thread(s), input {list(input_shape)})")
    if output is not None:
        save_pruned(small, output)
        lines.append(f"wrote {output}: load it with sparseprune.structured.load_pruned("
                     f"{spec.partition(':')[2]}, {output!r})")
    return "\n".join(lines)
