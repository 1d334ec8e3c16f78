"""``iterative_channel_prune``: structured pruning in rounds, fine-tuning in between.

Removing half the channels at once costs more accuracy than removing them a little at a time
with training in between. Each round plans the next channel amount on a plain copy of the
current weights, zeroes the newly removed channels of the working model with a multiplicative
mask (a ``torch.nn.utils.parametrize`` parametrization, recomputed on every access, so weights
read outside their module's own call stay masked too; any training loop and optimizer keep
working and removed channels stay zero while training), fine-tunes, and evaluates the physically
smaller model. Channels removed in earlier rounds score zero, so they are removed again: the
removed sets grow round by round and the floors and rounding stay relative to the original
widths.
"""

from __future__ import annotations

import dataclasses
import numbers
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from .._modules import deepcopy_model
from ..pruning.masks import masked_tensors
from ..structured.budget import count_params
from ..structured.planner import Plan, plan
from .distributed import broadcast_model, broadcast_value, is_main_process
from .iterative import History, Round
from .train import EvalFn, TrainFn, call_train_fn

__all__ = ["iterative_channel_prune"]

_NOT_OPTIONS = ("amount", "macs", "params", "latency", "config", "graph", "timer")


class _ChannelMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` (mask: 0/1, broadcast over the tensor)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def _amounts(amounts: float | Sequence[float], steps: int) -> list[float]:
    if isinstance(amounts, numbers.Real):
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        levels = [float(amounts) * (i + 1) / steps for i in range(steps)]
    else:
        levels = [float(a) for a in amounts]
    if not levels or any(not 0 < a < 1 for a in levels) or levels != sorted(set(levels)):
        raise ValueError(f"channel amounts must increase strictly within (0, 1); got {levels}")
    return levels


def _bake(model: nn.Module) -> nn.Module:
    """A plain CPU copy of the working model: masks multiplied in, parametrizations gone.

    Not ``parametrize.remove_parametrizations`` on a deep copy: the copy shares its generated
    ``Parametrized*`` class with the original, and removing the last parametrization deletes
    the property from that shared class, breaking the original.
    """
    baked = deepcopy_model(model)
    for module in list(baked.modules()):
        if not parametrize.is_parametrized(module):
            continue
        with torch.no_grad():
            values = {name: getattr(module, name).detach().clone()
                      for name in module.parametrizations}
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]  # the class before parametrizing
        for name, value in values.items():
            module.register_parameter(name, nn.Parameter(value))
    return baked.cpu()


def _mask_removed(work: nn.Module, p: Plan) -> None:
    """Zero every removed channel's slices of ``work``'s parameters (one mask per tensor)."""
    masks: dict[str, torch.Tensor] = {}
    for att in p.graph.attachments.values():
        keep = p.keep_of(att.atoms)
        if keep.all():
            continue
        mod_name, _, pname = att.tensor.rpartition(".")
        module = work.get_submodule(mod_name)
        if pname not in module._parameters and not parametrize.is_parametrized(module, pname):
            continue  # buffers (BatchNorm statistics) need no mask: the channel's gamma is 0
        current = getattr(module, pname)
        shape = [1] * current.dim()
        shape[att.dim] = keep.size
        m = torch.from_numpy(keep.astype(np.float32)).reshape(shape)
        m = m.to(device=current.device, dtype=current.dtype).expand_as(current)
        masks[att.tensor] = masks[att.tensor] * m if att.tensor in masks else m
    for name, mask in masks.items():
        mod_name, _, pname = name.rpartition(".")
        module = work.get_submodule(mod_name)
        if parametrize.is_parametrized(module, pname):
            module.parametrizations[pname][0].mask.mul_(mask)
        else:
            parametrize.register_parametrization(module, pname, _ChannelMask(mask.contiguous()))


def _physical(p: Plan, work: nn.Module, device: torch.device) -> nn.Module:
    """The smaller model ``p`` describes, cut from the working model's current weights."""
    graph = dataclasses.replace(p.graph, model=_bake(work))
    return dataclasses.replace(p, graph=graph).apply(inplace=True).to(device)


def iterative_channel_prune(
    model: nn.Module,
    example_inputs: tuple | torch.Tensor,
    amounts: float | Sequence[float],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    *,
    steps: int = 3,
    epochs: int = 1,
    final_epochs: int = 0,
    lr_scale: float = 0.1,
    tolerance: float | None = 1.0,
    progress: bool = True,
    **plan_options: object,
) -> tuple[nn.Module, History]:
    """Remove channels in rounds with fine-tuning in between; return the smaller model.

    Args:
        model: a trained model; not modified (the rounds run on a copy).
        example_inputs: inputs for tracing and the final shape check, e.g. ``[1, 3, 224, 224]``.
        amounts: the final fraction of channels removed, reached in ``steps`` equal steps, or
            an increasing list of fractions (``[0.5]`` is one-shot).
        train_fn: ``train_fn(model, epochs, lr_scale=...)``; it gets the masked full-size model,
            so build its optimizer from ``model.parameters()`` on each call.
        eval_fn: ``eval_fn(model) -> float``, higher is better.
        steps: rounds for a float ``amounts``.
        epochs: fine-tuning epochs after each round.
        final_epochs: extra epochs after the last round.
        lr_scale: fine-tuning LR as a fraction of the base LR.
        tolerance: allowed drop below the unpruned accuracy (``eval_fn``'s units); the run
            stops at the first round below it and returns the last round that met it (the
            unpruned copy if none did). None never stops early.
        progress: tqdm bar over rounds.
        **plan_options: for ``sparseprune.structured.plan`` (``importance``, ``scope``,
            ``round_to``, ``min_channels``, ``fold_bn``, ...); the importance must score zeroed
            channels lowest (``l1``, ``l2``, ``bn``; not ``random``, and not ``taylor``, whose
            gradients a copied model does not carry).

    Returns:
        ``(pruned, history)``: the best round's physically smaller model (eval mode) and a
        :class:`History` whose rounds give channels removed (``target``), fraction of
        parameters removed (``sparsity``), parameters and accuracy.

    Raises:
        ValueError: bad amounts or options, or a model carrying prune masks or
            parametrizations.
    """
    levels = _amounts(amounts, steps)
    given = sorted(k for k in _NOT_OPTIONS if k in plan_options)
    if given:
        raise ValueError(f"iterative_channel_prune plans channel fractions (amounts=) itself; "
                         f"it does not take {given}")
    if plan_options.get("importance") in ("random", "taylor"):
        raise ValueError(f"importance={plan_options['importance']!r} cannot be used across "
                         "rounds (random does not score zeroed channels lowest; taylor needs "
                         "gradients a copied model lacks); use l1, l2 or bn")
    if masked_tensors(model) or any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("the model carries torch.nn.utils.prune masks or parametrizations; "
                         "make them permanent (sparseprune.pruning.remove, "
                         "parametrize.remove_parametrizations) before channel pruning")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    planning_inputs = tuple(t.cpu() if isinstance(t, torch.Tensor) else t
                            for t in example_inputs)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    work = deepcopy_model(model)
    broadcast_model(work)  # under torch.distributed every rank starts from rank 0's weights
    total = count_params(model)
    history = History(method="channels", extra={
        "amounts": levels, "epochs": epochs, "final_epochs": final_epochs,
        "lr_scale": lr_scale, "tolerance": tolerance,
        "plan_options": {k: repr(v) for k, v in plan_options.items()}})
    t0 = time.perf_counter()
    history.baseline = broadcast_value(float(eval_fn(work)))
    history.rounds.append(Round(0, 0.0, 0.0, total, history.baseline, time.perf_counter() - t0))
    best_model = deepcopy_model(model).eval()
    history.stopped = "target reached"
    from tqdm.auto import tqdm

    with tqdm(total=len(levels), desc="channel pruning", unit="round", leave=False,
              disable=not (progress and is_main_process())) as bar:
        for i, amount in enumerate(levels, start=1):
            t0 = time.perf_counter()
            p = plan(_bake(work), planning_inputs, amount=amount, **plan_options)
            _mask_removed(work, p)
            last = i == len(levels)
            call_train_fn(train_fn, work, epochs + (final_epochs if last else 0), lr_scale)
            pruned = _physical(p, work, device).eval()
            params = count_params(pruned)
            # the returned model is the one evaluated (equal to the masked one unless
            # layer_norm="prune" made it approximate)
            accuracy = broadcast_value(float(eval_fn(pruned)))
            history.rounds.append(Round(i, amount, 1.0 - params / total, params, accuracy,
                                        time.perf_counter() - t0))
            bar.update()
            bar.set_postfix(accuracy=f"{accuracy:.2f}")
            if tolerance is not None and not accuracy >= history.baseline - tolerance:
                history.stopped = (f"accuracy {accuracy:.2f} fell more than {tolerance} below "
                                   f"the baseline {history.baseline:.2f}")
                break
            history.best = i
            best_model = pruned
    return best_model, history
