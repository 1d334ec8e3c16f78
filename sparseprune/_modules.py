"""Small helpers about modules shared across the package."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["deepcopy_model", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every submodule's own mode restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def deepcopy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on models carrying ``torch.nn.utils.prune`` masks.

    A pruned module's ``weight`` attribute is ``weight_orig * weight_mask``, a non-leaf tensor
    that ``deepcopy`` refuses. It is swapped for a detached copy during the deepcopy (the prune
    hook recomputes it on the next forward anyway) and restored afterwards.
    """
    stashed = []
    for module in model.modules():
        for name, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not value.is_leaf and \
                    hasattr(module, name + "_orig"):
                stashed.append((module, name, value))
                setattr(module, name, value.detach())
    try:
        return copy.deepcopy(model)
    finally:
        for module, name, value in stashed:
            setattr(module, name, value)
