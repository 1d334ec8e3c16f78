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
from .latency import WallClock
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
    try:
        module = _import(module_name)
    except Exception as exc:  # ImportError, or the module's own code failing on import
        raise ValueError(f"factory {spec!r}: cannot import {module_name!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    fn = module
    for part in attr.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise ValueError(f"factory {spec!r}: {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ValueError(f"factory {spec!r}: {attr!r} is a {type(fn).__name__}, not callable")
    return fn


def _import(name: str):
    """Import ``name``; if that fails, once more with the working directory on ``sys.path``
    (restored afterwards, so later imports are not shadowed by local files)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        if os.getcwd() in sys.path:
            raise
    sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(os.getcwd())


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    """A state_dict from a weights-only file: checkpoints unwrapped, prune masks folded,
    a DistributedDataParallel ``module.`` prefix dropped."""
    from ..workflow.files import effective_weights, read_model_file

    _, tensors, _ = read_model_file(path)  # ModelFileError (a ValueError) names the problem
    # masks folded into the float tensors; integer buffers (num_batches_tracked) kept as they are
    state = {k: v for k, v in tensors.items() if not k.endswith(("_orig", "_mask"))}
    state.update(effective_weights(tensors))
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _build(factory: Callable[[], nn.Module], spec: str, weights: str | None) -> nn.Module:
    try:
        model = factory()
    except Exception as exc:  # the user's code: any error, named with the spec
        raise ValueError(f"factory {spec!r} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"factory {spec!r} returned a {type(model).__name__}, not an nn.Module")
    if weights is not None:
        state = _read_weights(weights)
        try:
            result = model.load_state_dict(state, strict=False)
        except RuntimeError as exc:  # shape mismatches
            first = str(exc).strip().splitlines()
            raise ValueError(f"{weights} does not fit {type(model).__name__}: "
                             f"{' '.join(line.strip() for line in first[:3])} (a file written "
                             "by 'channels -o' loads with load_pruned(factory, path))") from None
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
    if output is not None:
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            raise ValueError(f"-o {output}: directory {parent} does not exist")
    factory = load_factory(spec)
    model = _build(factory, spec, weights)
    x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            model(x)
    except Exception as exc:  # wrong channel count, too small, integer inputs expected, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"the model from {spec!r} does not run on a float32 input of shape "
                         f"{list(input_shape)}: {type(exc).__name__}: {first}") from None
    if channels_last:
        if x.dim() != 4:
            raise ValueError(f"--channels-last needs a 4-d input; got shape {input_shape}")
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    p = plan(model, x, fold_bn=fold_bn, **plan_options)
    small = p.apply(channels_last=channels_last)
    # like for like: with fold_bn the unpruned model is timed folded too
    reference = fold_batchnorm(model) if fold_bn else model
    after_s, before_s = WallClock().times(small, reference, (x,))
    lines = [str(p), "", f"{'':<8} {'params':>14} {'MACs':>16} {'latency (ms)':>13}"
             + ("   (BatchNorm folded in both)" if fold_bn else "")]
    for name, m, sec in (("before", reference, before_s), ("after", small, after_s)):
        lines.append(f"{name:<8} {count_params(m):>14,} {count_macs(m, x):>16,} "
                     f"{sec * 1e3:>13.2f}")
    lines.append(f"speedup {before_s / after_s:.2f}x (medians of interleaved runs, "
                 f"{torch.get_num_threads()} thread(s), input {list(input_shape)})")
    if output is not None:
        try:
            save_pruned(small, output)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"-o {output}: cannot write: {exc}") from None
        module_name, _, attr = spec.partition(":")
        layout = ".to(memory_format=torch.channels_last)" if channels_last else ""
        lines.append(f"wrote {output}; load it with:\n  from {module_name} import "
                     f"{attr.split('.')[0]}\n  from sparseprune.structured import load_pruned\n"
                     f"  model = load_pruned({attr}, {output!r}).eval(){layout}")
    return "\n".join(lines)
