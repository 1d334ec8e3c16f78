"""``torch.distributed`` helpers: one set of masks on every rank.

Pruning decisions are made identically on every rank (same weights after a DDP step, same
deterministic criterion), then rank 0's masks are broadcast so that a tie broken differently, or
a rank that drifted, cannot leave the ranks with different sparse models.
:func:`check_consistent` verifies it. All functions are no-ops without an initialized process
group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..pruning.masks import masked_tensors

__all__ = ["broadcast_masks", "broadcast_model", "broadcast_value", "check_consistent",
           "is_main_process"]


def _active() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_main_process() -> bool:
    """True without a process group, else on rank 0 only (for progress bars and files)."""
    return not _active() or dist.get_rank() == 0


@torch.no_grad()
def broadcast_masks(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s masks (``*_mask`` buffers) to every rank, in model order.

    Every rank must have masked the same tensors (as :class:`sparseprune.Pruner` does).
    """
    if not _active():
        return
    for target in masked_tensors(model):
        dist.broadcast(target.module._buffers[f"{target.param}_mask"], src)


@torch.no_grad()
def broadcast_model(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s parameters and buffers (masks included) to every rank."""
    if not _active():
        return
    for tensor in [*model.parameters(), *model.buffers()]:
        dist.broadcast(tensor.data, src)


def broadcast_value(value: float, src: int = 0) -> float:
    """Rank ``src``'s ``value`` on every rank (e.g. an accuracy that decides when to stop, so
    that every rank stops at the same round); ``value`` itself without a process group."""
    if not _active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.broadcast(t, src)
    return float(t.item())


@torch.no_grad()
def check_consistent(model: nn.Module, atol: float = 0.0) -> list[str]:
    """Names of the parameters and buffers that differ from rank 0's on this rank (``[]``: all
    match; ``atol`` allows float rounding). Without a process group: ``[]``."""
    if not _active():
        return []
    bad = []
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        ref = tensor.detach().clone()
        dist.broadcast(ref, 0)
        if not torch.allclose(tensor.detach(), ref, rtol=0.0, atol=atol):
            bad.append(name)
    return bad
