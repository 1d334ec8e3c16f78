"""The one definition of a layer's effective weight under ``torch.nn.utils.prune`` masks."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = ["masked", "effective_weight", "fold_masks"]


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


def fold_masks(model: nn.Module) -> list[str]:
    """Makes every ``torch.nn.utils.prune`` mask in ``model`` permanent, in place, whatever the
    module type (Linear, Conv, BatchNorm, Embedding, attention): ``<name>`` becomes a plain
    Parameter holding :func:`effective_weight` (exact zeros under the mask, NaN included), and
    ``<name>_orig``, ``<name>_mask`` and the forward pre-hook that recomputed it on every call
    are gone. Other hooks are left alone.

    Returns:
        the qualified names (``"fc.weight"``) of the tensors folded, in module order.
    """
    folded = []
    # named_modules() lists a shared module once: it is folded once.
    for name, module in model.named_modules():
        hooks = [h for h in module._forward_pre_hooks.values()
                 if isinstance(h, torch_prune.BasePruningMethod)]
        for hook in hooks:
            tensor = hook._tensor_name
            weight = effective_weight(module, tensor)
            torch_prune.remove(module, tensor)  # PyTorch's own un-reparametrization
            with torch.no_grad():
                # remove() keeps orig * mask, where NaN * 0 stays NaN; convert's packed layers
                # use the zeros, so the layers it keeps dense must too.
                getattr(module, tensor).copy_(weight)
            folded.append(f"{name}.{tensor}" if name else tensor)
    return folded
