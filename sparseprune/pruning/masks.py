"""Applying masks exactly the way ``torch.nn.utils.prune`` does.

A pruned tensor ``name`` of a module becomes the Parameter ``name_orig`` (what the optimizer
trains) times the float buffer ``name_mask``, recomputed into the plain attribute ``name`` by a
forward pre-hook. :class:`MaskMethod` is a ``BasePruningMethod``, so the reparametrization, the
hook, ``PruningContainer`` chaining and ``prune.remove`` are PyTorch's own code, and masks made by
``torch.nn.utils.prune`` and by us combine (logical AND) in either order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

__all__ = [
    "MaskMethod",
    "Target",
    "apply_mask",
    "current_mask",
    "effective_weight",
    "is_masked",
    "load_masked_state_dict",
    "masked_tensors",
    "pattern_label",
    "remove",
    "trainable",
]


@dataclass(frozen=True, eq=False)
class Target:
    """One prunable tensor: ``module.<param>`` where ``module`` is ``model.<name>``."""

    name: str
    module: nn.Module
    param: str = "weight"

    @property
    def shape(self) -> torch.Size:
        return trainable(self.module, self.param).shape

    @property
    def qualname(self) -> str:
        return f"{self.name}.{self.param}" if self.name else self.param

    def describe(self) -> str:
        """``'features.0' (Conv2d) weight [16, 3, 3, 3]`` for error messages."""
        return (f"layer {self.name or '<model>'!r} ({type(self.module).__name__}) "
                f"{self.param} {list(self.shape)}")


class MaskMethod(torch_prune.BasePruningMethod):
    """Applies a precomputed mask on top of the existing one (AND).

    Unlike ``prune.CustomFromMask`` it drops its copy of the mask once applied (the module's
    ``<name>_mask`` buffer is the only copy that matters), so ``PruningContainer`` histories of
    iterative pruning stay small, and it records a ``pattern`` label for :func:`summary`.
    """

    # "global": the mask covers the whole tensor (PruningContainer hands us all of it).
    PRUNING_TYPE = "global"

    def __init__(self, mask: Tensor, pattern: str = "custom") -> None:
        self._pending: Tensor | None = mask
        self.pattern = pattern

    def compute_mask(self, t: Tensor, default_mask: Tensor) -> Tensor:
        if self._pending is None:
            raise RuntimeError("a MaskMethod applies its mask once; make a new one to prune again")
        new = self._pending.to(device=default_mask.device, dtype=default_mask.dtype)
        self._pending = None
        return default_mask * new

    @classmethod
    def apply(  # type: ignore[override]
        cls, module: nn.Module, name: str, mask: Tensor, pattern: str = "custom"
    ) -> MaskMethod:
        """Reparametrize ``module.<name>`` (if not yet) and AND ``mask`` into its mask."""
        return super().apply(module, name, mask=mask, pattern=pattern)


def trainable(module: nn.Module, name: str) -> nn.Parameter:
    """The Parameter that holds ``module.<name>``: ``<name>_orig`` when masked.

    Raises:
        AttributeError: the module has no such parameter (naming module type and name).
    """
    params = module._parameters
    for key in (f"{name}_orig", name):
        if params.get(key) is not None:
            return params[key]
    raise AttributeError(
        f"{type(module).__name__} has no parameter {name!r} "
        f"(parameters: {sorted(k for k, v in params.items() if v is not None)})"
    )


def is_masked(module: nn.Module, name: str) -> bool:
    """Whether ``module.<name>`` is reparametrized as ``<name>_orig * <name>_mask``."""
    return f"{name}_mask" in module._buffers and f"{name}_orig" in module._parameters


def current_mask(module: nn.Module, name: str) -> Tensor:
    """The keep-mask of ``module.<name>`` so far: bool, shaped like the parameter.

    All ``True`` when the tensor is not masked. Zeros in an unmasked weight are not treated as
    pruned (a trained weight may be exactly 0); masks are the single source of truth.
    """
    if is_masked(module, name):
        return module._buffers[f"{name}_mask"] != 0
    return torch.ones_like(trainable(module, name), dtype=torch.bool)


@torch.no_grad()
def effective_weight(module: nn.Module, name: str) -> Tensor:
    """``<name>_orig * <name>_mask`` (or the plain parameter), detached.

    Computed from the pieces rather than read from ``module.<name>``, which only the pre-hook
    refreshes and so is stale after an optimizer step until the next forward.
    """
    param = trainable(module, name)
    if is_masked(module, name):
        return param.detach() * module._buffers[f"{name}_mask"].to(param.dtype)
    return param.detach().clone()


def apply_mask(module: nn.Module, name: str, mask: Tensor, pattern: str = "custom") -> nn.Module:
    """Functional twin of :class:`MaskMethod`: AND ``mask`` into ``module.<name>``; return module.

    Args:
        module: module owning the parameter.
        name: parameter name, e.g. ``"weight"``.
        mask: bool (or 0/1) tensor shaped like the parameter; ``True``/1 = keep.
        pattern: label recorded for :func:`sparseprune.summary`.

    Raises:
        ValueError: the mask's shape differs from the parameter's.
    """
    param = trainable(module, name)
    if tuple(mask.shape) != tuple(param.shape):
        raise ValueError(
            f"mask shape {list(mask.shape)} does not match {type(module).__name__}.{name} "
            f"shape {list(param.shape)}"
        )
    MaskMethod.apply(module, name, mask, pattern=pattern)
    return module


def _pruning_hooks(module: nn.Module) -> Iterator[torch_prune.BasePruningMethod]:
    for hook in module._forward_pre_hooks.values():
        if isinstance(hook, torch_prune.BasePruningMethod):
            yield hook


def masked_tensors(model: nn.Module) -> list[Target]:
    """Every tensor of ``model`` with a pruning hook (ours or ``torch.nn.utils.prune``'s)."""
    return [
        Target(name, module, hook._tensor_name)
        for name, module in model.named_modules()
        for hook in _pruning_hooks(module)
    ]


def pattern_label(module: nn.Module, name: str) -> str:
    """The pattern that last pruned ``module.<name>``: ours, a torch method's class, or "dense"."""
    for hook in _pruning_hooks(module):
        if hook._tensor_name != name:
            continue
        methods = list(hook) if isinstance(hook, torch_prune.PruningContainer) else [hook]
        last = methods[-1]
        return last.pattern if isinstance(last, MaskMethod) else f"torch:{type(last).__name__}"
    return "dense"


def remove(model: nn.Module) -> nn.Module:
    """Make every mask in ``model`` permanent (``prune.remove`` on each masked tensor).

    ``<name>`` becomes a plain Parameter again holding ``orig * mask``; ``<name>_orig``,
    ``<name>_mask`` and the hooks are gone. Works for masks made by ``torch.nn.utils.prune`` too.

    Returns:
        ``model``, modified in place.
    """
    for target in masked_tensors(model):
        torch_prune.remove(target.module, target.param)
    return model


def load_masked_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> nn.Module:
    """Load a pruned checkpoint (with ``*_orig`` / ``*_mask`` keys) into an unpruned model.

    Tensors whose ``<name>_mask`` key is in ``state_dict`` but which are not yet masked in
    ``model`` get an all-ones mask first, so the keys line up; ``load_state_dict`` then restores
    weights and masks.

    Returns:
        ``model``, modified in place.
    """
    suffix = "_mask"
    for key in state_dict:
        if not key.endswith(suffix):
            continue
        module_name, _, tensor = key[: -len(suffix)].rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError as err:
            raise KeyError(f"checkpoint key {key!r} names no module of the model") from err
        if not is_masked(module, tensor) and tensor in module._parameters:
            param = module._parameters[tensor]
            if param is not None:
                MaskMethod.apply(module, tensor, torch.ones_like(param), pattern="loaded")
    model.load_state_dict(state_dict, strict=strict)
    return model
