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
from .norms import PrunedLayerNorm, removed_input_max, to_pruned_layer_norm
from .window_attention import mark_window_pruned

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
        _shrink_norm(model.get_submodule(mod_name), plan.keep_of(atoms),
                     graph.norm_dims.get(mod_name, -1))
    mark_head_pruned(model)
    mark_window_pruned(model)
    if fold_bn:
        from .fold import fold_batchnorm

        model = fold_batchnorm(model, inplace=True, leaf_modules=plan.config.leaf_modules)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    _check(plan, model)
    return model


def _shrink_norm(mod: nn.Module, kept: np.ndarray, dim: int) -> None:
    """Set a LayerNorm/RMSNorm to its kept width (its weight and bias are already sliced);
    ``dim``: the dim of the module's input it normalises.

    Both stay exact, because the removed channels reach them as zeros (``plan`` checks it): a
    LayerNorm becomes a ``PrunedLayerNorm`` whose mean and variance still count all ``d``
    channels; for RMSNorm, rms over ``d`` channels equals ``sqrt(d'/d)`` times rms over the
    ``d'`` kept ones when eps is scaled by ``d/d'``, so the weight is scaled by ``sqrt(d/d')``.
    """
    d, d2 = kept.size, int(kept.sum())
    if d2 == d:
        return
    rms = getattr(nn, "RMSNorm", None)  # torch >= 2.4
    if rms is not None and isinstance(mod, rms):
        mod.normalized_shape = (d2,)
        if d2 > 0:
            eps = mod.eps if mod.eps is not None else torch.finfo(mod.weight.dtype).eps
            mod.eps = float(eps) * d / d2
            with torch.no_grad():
                mod.weight.mul_((d / d2) ** 0.5)
        return
    full = mod.full_width if isinstance(mod, PrunedLayerNorm) else d
    to_pruned_layer_norm(mod, d2, full, getattr(mod, "channel_dim", dim))


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

    The pruned model equals this one on any input, up to float rounding.
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


def removed_norm_inputs(plan: Plan) -> dict[str, float]:
    """``{norm module: max |x|}`` over the removed channels of each shrinking LayerNorm /
    RMSNorm's input in the masked model, on the example inputs, where that is not zero.

    A shrunk norm equals the masked one only when its removed channels are zero there (true
    when every op between the pruned producers and the norm maps 0 to 0; false after e.g. a
    sigmoid or an added constant).
    """
    graph = plan.graph
    shrinking = {name: torch.from_numpy(np.flatnonzero(~plan.keep_of(atoms)))
                 for name, atoms in graph.norms.items() if not plan.keep_of(atoms).all()}
    if not shrinking:
        return {}
    model = masked_model(plan)
    found: dict[str, float] = {}
    hooks = []
    for name, removed in shrinking.items():
        dim = graph.norm_dims.get(name, -1)

        def hook(_mod, args, name=name, removed=removed, dim=dim):
            if args and isinstance(args[0], torch.Tensor):
                worst = removed_input_max(args[0], dim, removed)
                if worst != 0.0:
                    found[name] = max(found.get(name, 0.0), worst)

        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        _run(model, graph.example_inputs)
    finally:
        for h in hooks:
            h.remove()
    return found
