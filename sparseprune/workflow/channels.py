"""``iterative_channel_prune``: structured pruning in rounds, fine-tuning in between.

Removing half the channels at once costs more accuracy than removing them a little at a time
with training in between. Each round plans the next channel amount on the current weights, zeroes
the newly removed channels with ``torch.nn.utils.prune`` masks (so the model keeps its shapes and
any training loop and optimizer keep working, and removed channels stay zero while training),
fine-tunes and evaluates. Channels removed in earlier rounds score zero, so they are removed
again: the removed sets grow monotonically and the floors and rounding stay relative to the
original widths. The result is the physically smaller model of the best round.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .._modules import deepcopy_model
from ..pruning.masks import masked_tensors, remove
from ..structured.budget import count_params
from ..structured.planner import Plan, plan
from ..structured.surgery import apply_plan
from .distributed import broadcast_value
from .iterative import History, Round
from .train import EvalFn, TrainFn, call_train_fn

__all__ = ["iterative_channel_prune"]


def _amounts(amounts: float | Sequence[float], steps: int) -> list[float]:
    if isinstance(amounts, (int, float)):
        if steps < 1:
            raise ValueError(f"steps must be >= 1; got {steps}")
        levels = [float(amounts) * (i + 1) / steps for i in range(steps)]
    else:
        levels = [float(a) for a in amounts]
    if not levels or any(not 0 < a < 1 for a in levels) or levels != sorted(set(levels)):
        raise ValueError(f"channel amounts must increase strictly within (0, 1); got {levels}")
    return levels


def _mask_removed(p: Plan) -> None:
    """Zero every removed channel's slices of the model's parameters (prune masks)."""
    model = p.graph.model
    params = {name for name, _ in model.named_parameters()}
    for att in p.graph.attachments.values():
        keep = p.keep_of(att.atoms)
        if keep.all():
            continue
        mod_name, _, pname = att.tensor.rpartition(".")
        if att.tensor not in params and f"{att.tensor}_orig" not in params:
            continue  # buffers (BatchNorm statistics) need no mask: the channel's gamma is 0
        module = model.get_submodule(mod_name)
        current = getattr(module, pname)
        shape = [1] * current.dim()
        shape[att.dim] = keep.size
        mask = torch.from_numpy(keep.astype(np.float32)).reshape(shape).expand_as(current)
        torch_prune.custom_from_mask(module, pname, mask.to(current.dtype).contiguous())


def _physical(p: Plan) -> nn.Module:
    """The smaller model ``p`` describes, built from a baked copy of the masked model."""
    baked = remove(deepcopy_model(p.graph.model))
    graph = dataclasses.replace(p.graph, model=baked)
    return apply_plan(dataclasses.replace(p, graph=graph), inplace=True)


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
            ``round_to``, ``min_channels``, ...); the importance must score zeroed channels
            lowest (``l1``, ``l2``, ``bn`` and ``taylor`` do; ``random`` does not).

    Returns:
        ``(pruned, history)``: the best round's physically smaller model (eval mode) and a
        :class:`History` whose rounds give channels removed (``target``), fraction of
        parameters removed (``sparsity``), parameters and accuracy.

    Raises:
        ValueError: bad amounts or options, or a model carrying unstructured prune masks.
    """
    levels = _amounts(amounts, steps)
    if any(k in plan_options for k in ("amount", "macs", "params", "latency")):
        raise ValueError("give the channel fractions as amounts=; other budgets are not "
                         "supported by iterative_channel_prune")
    if plan_options.get("importance") == "random":
        raise ValueError("importance='random' does not score zeroed channels lowest, so the "
                         "rounds would not nest; use l1, l2, bn or taylor")
    if masked_tensors(model):
        raise ValueError("the model carries torch.nn.utils.prune masks; make them permanent "
                         "(sparseprune.pruning.remove) before channel pruning")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    work = deepcopy_model(model)
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
              disable=not progress) as bar:
        for i, amount in enumerate(levels, start=1):
            t0 = time.perf_counter()
            p = plan(work, example_inputs, amount=amount, **plan_options)
            _mask_removed(p)
            last = i == len(levels)
            call_train_fn(train_fn, work, epochs + (final_epochs if last else 0), lr_scale)
            pruned = _physical(p).eval()
            params = count_params(pruned)
            accuracy = broadcast_value(float(eval_fn(work)))
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
