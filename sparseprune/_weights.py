"""The one definition of a layer's effective weight under ``torch.nn.utils.prune`` masks."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["masked", "effective_weight"]


def masked(orig: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``orig * mask`` where masked-out entries are exact zeros, even where ``orig`` is NaN/Inf
    (a plain product would keep NaN there and make a pruned weight look unpruned)."""
    if mask is None:
        return orig
    return torch.where(mask != 0, orig, torch.zeros((), dtype=orig.dtype, device=orig.device))


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The detached weight a module computes with: ``<name>_orig`` under ``<name>_mask`` when it
    carries a prune mask, else ``<name>`` itself. Shape and dtype as the module's parameter."""
    orig = getattr(module, name + "_orig", None)
    mask = getattr(module, name + "_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return masked(orig.detach(), mask.detach())
    return getattr(module, name).detach()
