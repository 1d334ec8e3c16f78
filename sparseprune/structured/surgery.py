"""Cut the planned channels: real smaller tensors and updated module attributes.

``apply_plan`` copies the model (unless ``inplace``), slices every attached parameter and buffer
with ``index_select``, sets the width attributes (``out_channels``, ``in_features``,
``num_features``, ``groups`` of depthwise convs, ``num_groups``, head counts, ...), then runs the
example input and checks that the output shapes did not change.
``masked_model`` builds the reference the pruned model must equal: the original with every
removed slice zeroed.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .._modules import eval_mode
from .mha import mark_head_pruned

if TYPE_CHECKING:
    from .planner import Plan

__all__ = ["StructuredPruningError", "apply_plan", "masked_model"]


class StructuredPruningError(RuntimeError):
    """The pruned model failed the post-pruning check (a bug in a dependency rule)."""


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name)
    old = getattr(mod, attr)
    if isinstance(old, nn.Parameter):
        setattr(mod, attr, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        mod._buffers[attr] = value


def _run(model: nn.Module, inputs: tuple) -> list[torch.Tensor]:
    with eval_mode(model), torch.no_grad():
        out = model(*inputs)
    return [t for t in _flat(out) if isinstance(t, torch.Tensor)]


def _flat(x):
    if isinstance(x, (tuple, list)):
        for y in x:
            yield from _flat(y)
    elif isinstance(x, dict):
        for y in x.values():
            yield from _flat(y)
    else:
        yield x


def apply_plan(
    plan: Plan, *, inplace: bool = False, channels_last: bool = False, fold_bn: bool = False
) -> nn.Module:
    """Build the pruned model.

    Args:
        plan: from ``plan(...)``.
        inplace: prune ``plan.graph.model`` itself instead of a deep copy.
        channels_last: convert the result to ``torch.channels_last`` memory format.
        fold_bn: fold each BatchNorm that follows a conv into it (``fold_batchnorm``); for
            inference only, the result is in eval mode.

    Returns:
        A plain ``nn.Module`` of the same classes, with smaller tensors.

    Raises:
        StructuredPruningError: the pruned model fails on the example input or changed the
            output shape while ``protect_output`` was set.
    """
    graph = plan.graph
    model = graph.model if inplace else copy.deepcopy(graph.model)
    for att in graph.attachments.values():
        mask = plan.keep_of(att.atoms)
        if mask.all():
            continue
        idx = torch.from_numpy(np.flatnonzero(mask))
        t = _get(model, att.tensor)
        _set_tensor(model, att.tensor, t.detach().index_select(att.dim, idx).clone())
    for (mod_name, attr), atoms in graph.attrs.items():
        setattr(model.get_submodule(mod_name), attr, int(plan.keep_of(atoms).sum()))
    for mod_name, atoms in graph.norms.items():
        _shrink_norm(model.get_submodule(mod_name), plan.keep_of(atoms))
    mark_head_pruned(model)
    if fold_bn:
        from .fold import fold_batchnorm

        model = fold_batchnorm(model, inplace=True, leaf_modules=plan.config.leaf_modules)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _check(plan, model)
    return model


def _shrink_norm(mod: nn.Module, kept: np.ndarray) -> None:
    """Set a LayerNorm/RMSNorm to its kept width (its weight and bias are already sliced).

    RMSNorm stays exact: with the removed channels zero, rms over ``d`` channels equals
    ``sqrt(d'/d)`` times rms over the ``d'`` kept ones when eps is scaled by ``d/d'``, so the
    weight is scaled by ``sqrt(d/d')``.
    """
    d, d2 = kept.size, int(kept.sum())
    if d2 == d:
        return
    mod.normalized_shape = (d2,)
    rms = getattr(nn, "RMSNorm", None)  # torch >= 2.4
    if rms is not None and isinstance(mod, rms) and d2 > 0:
        eps = mod.eps if mod.eps is not None else torch.finfo(mod.weight.dtype).eps
        mod.eps = float(eps) * d / d2
        with torch.no_grad():
            mod.weight.mul_((d / d2) ** 0.5)


def _get(model: nn.Module, name: str) -> torch.Tensor:
    mod_name, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(mod_name), attr)


def _check(plan: Plan, model: nn.Module) -> None:
    graph = plan.graph
    try:
        outs = _run(model, graph.example_inputs)
    except Exception as exc:
        raise StructuredPruningError(
            f"the pruned model fails on the example input: {type(exc).__name__}: {exc}. A "
            "dependency rule missed a coupling; please report it with print(plan)."
        ) from exc
    shapes = [tuple(t.shape) for t in outs]
    if plan.config.protect_output and shapes != graph.output_shapes:
        raise StructuredPruningError(
            f"output shapes changed from {graph.output_shapes} to {shapes} although "
            "protect_output=True"
        )


def masked_model(plan: Plan) -> nn.Module:
    """A deep copy of the original with every removed slice set to zero (shapes unchanged).

    The pruned model equals this one on any input, up to float rounding (except where
    ``layer_norm="prune"`` let a LayerNorm shrink: its statistics then cover fewer channels).
    """
    model = copy.deepcopy(plan.graph.model)
    with torch.no_grad():
        for att in plan.graph.attachments.values():
            mask = plan.keep_of(att.atoms)
            if mask.all():
                continue
            idx = torch.from_numpy(np.flatnonzero(~mask))
            _get(model, att.tensor).index_fill_(att.dim, idx, 0.0)
    return model
