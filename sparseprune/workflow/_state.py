"""Snapshots of a (possibly masked) model's weights, and the schedule of sparsity levels."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ..pruning import Geometric, Schedule, load_masked_state_dict
from ..pruning.masks import current_mask, is_masked, masked_tensors

__all__ = [
    "Levels", "levels_of", "load_snapshot", "masks_of", "mean", "nonzero_params", "rewind_weights",
    "snapshot",
]


@dataclass(frozen=True)
class Levels:
    """A schedule through given sparsity levels, one per round (``levels[-1]`` is final)."""

    levels: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.levels:
            raise ValueError("Levels: give at least one sparsity level")
        prev = 0.0
        for s in self.levels:
            if not 0.0 <= s < 1.0 or s < prev:
                raise ValueError(f"Levels: sparsities must be non-decreasing in [0, 1), got "
                                 f"{list(self.levels)}")
            prev = s

    @property
    def final(self) -> float:
        return self.levels[-1]

    @property
    def steps(self) -> int:
        return len(self.levels)

    def sparsity_at(self, step: int) -> float:
        return 0.0 if step <= 0 else self.levels[min(step, len(self.levels)) - 1]


def levels_of(schedule: Schedule | float | Sequence[float], rate: float) -> Schedule:
    """A schedule from a schedule object, a final sparsity (geometric at ``rate`` per round) or
    a sequence of levels."""
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, (int, float)) and not isinstance(schedule, bool):
        return Geometric.from_rate(float(schedule), rate)
    if isinstance(schedule, Sequence):
        return Levels(tuple(float(s) for s in schedule))
    raise TypeError(f"schedule must be a final sparsity, a list of levels or a Schedule, got "
                    f"{type(schedule).__name__}")


def _plain(key: str) -> str:
    """``fc.weight_orig`` -> ``fc.weight`` (the name the tensor has without a mask)."""
    return key[: -len("_orig")] if key.endswith("_orig") else key


def snapshot(model: nn.Module) -> dict[str, Tensor]:
    """Cloned state_dict of ``model`` (masks and ``*_orig`` included)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def load_snapshot(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Restore a :func:`snapshot`, whether it was taken before or after pruning.

    A tensor masked now but not in the snapshot (e.g. a layer that got its first mask in a
    later round) is made plain again first (``prune.remove``); its weights then come from the
    snapshot.
    """
    for target in masked_tensors(model):
        if f"{target.qualname}_mask" not in state:
            torch_prune.remove(target.module, target.param)
    if any(k.endswith("_mask") for k in state):
        load_masked_state_dict(model, state)
    else:
        model.load_state_dict(state)


@torch.no_grad()
def rewind_weights(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy ``state``'s values (an unmasked snapshot, e.g. θ0) into ``model``'s parameters and
    buffers, keeping its masks. ``fc.weight_orig`` gets ``state['fc.weight']``."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name.endswith("_mask"):
            continue
        key = _plain(name)
        if key not in state:
            key = name
        if key not in state:
            raise KeyError(f"rewind: the snapshot has no tensor for {name!r}")
        tensor.copy_(state[key])


def masks_of(model: nn.Module) -> dict[str, Tensor]:
    """``{'fc.weight': bool keep-mask}`` for every masked tensor of ``model``."""
    return {t.qualname: current_mask(t.module, t.param).clone() for t in masked_tensors(model)}


def nonzero_params(model: nn.Module) -> tuple[int, int]:
    """(nonzero, total) over all parameters, counting masked tensors as ``orig * mask``."""
    nonzero = total = 0
    for module in model.modules():
        for name, p in module._parameters.items():
            if p is None:
                continue
            base = _plain(name)
            if name.endswith("_orig") and is_masked(module, base):
                w = p.detach() * module._buffers[f"{base}_mask"]
            else:
                w = p.detach()
            nonzero += int(torch.count_nonzero(w))
            total += w.numel()
    return nonzero, total


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")
