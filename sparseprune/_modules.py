"""Small helpers about modules shared across the package."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["deepcopy_model"]


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
