"""Gathering what data-aware criteria need: input norms (Wanda) and mean gradients (Taylor).

Calibration data is any re-iterable of batches (a list, a ``DataLoader``): a batch is an input
tensor, or a tuple/list whose first item is the input (and second the target, for gradients).
The model runs in eval mode (no dropout, BatchNorm statistics untouched); each module's
training flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .masks import Target, trainable

__all__ = ["activation_norms", "mean_gradients"]

LossFn = Callable[[Tensor, Tensor], Tensor]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


def _inputs(batch: object) -> object:
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("calibration batch is an empty tuple/list")
        return batch[0]
    return batch


def _no_batches() -> ValueError:
    return ValueError(
        "calibration data yielded no batches (an exhausted generator? pass a list or DataLoader "
        "so it can be iterated again)"
    )


def _channel_dim(module: nn.Module, x: Tensor) -> int:
    """Where the features the weight's input dim multiplies live in an input ``x``."""
    if isinstance(module, nn.modules.conv._ConvNd):
        # [N, C, *spatial] or unbatched [C, *spatial].
        return x.dim() - len(module.kernel_size) - 1
    return x.dim() - 1  # Linear-like: [..., in_features]


@torch.no_grad()
def activation_norms(
    model: nn.Module, targets: Sequence[Target], batches: Iterable[object]
) -> dict[str, Tensor]:
    """``‖x_j‖₂`` of every target layer's input feature/channel over all calibration data.

    Args:
        model: called as ``model(inputs)`` on each batch.
        targets: layers to observe (hooks on ``target.module``).
        batches: re-iterable calibration batches.

    Returns:
        qualname -> [in_features] (Linear) or [in_channels] (ConvNd) float64 norms.

    Raises:
        ValueError: no batches, or a target layer never ran.
    """
    sums: dict[str, Tensor] = {}
    handles = []

    def hook_for(target: Target) -> Callable[[nn.Module, tuple[object, ...]], None]:
        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0]
            if not isinstance(x, Tensor):
                raise TypeError(f"wanda: {target.describe()} got a {type(x).__name__} input, "
                                "expected a tensor")
            dim = _channel_dim(module, x)
            squares = x.detach().to(torch.float64).square()
            per_channel = squares.movedim(dim, 0).reshape(x.shape[dim], -1).sum(1)
            key = target.qualname
            sums[key] = per_channel if key not in sums else sums[key] + per_channel

        return hook

    try:
        # One hook per module even if several of its tensors are targets.
        seen: dict[int, Target] = {}
        for target in targets:
            seen.setdefault(id(target.module), target)
        for target in seen.values():
            handles.append(target.module.register_forward_pre_hook(hook_for(target)))
        count = 0
        with _eval_mode(model):
            for batch in batches:
                model(_inputs(batch))
                count += 1
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise _no_batches()
    out = {}
    for target in targets:
        first = seen[id(target.module)].qualname
        if first not in sums:
            raise ValueError(f"wanda: {target.describe()} never ran on the calibration data")
        out[target.qualname] = sums[first].sqrt()
    return out


def mean_gradients(
    model: nn.Module, targets: Sequence[Target], batches: Iterable[object], loss_fn: LossFn
) -> dict[str, Tensor]:
    """Mean over batches of ``∂L/∂w`` for every target tensor.

    Gradients are taken with ``torch.autograd.grad``, so the model's ``.grad`` fields are left
    alone. For a masked tensor the gradient is w.r.t. ``<name>_orig``: ``∂L/∂w ⊙ mask``.

    Args:
        model: called as ``model(inputs)``.
        targets: tensors to differentiate.
        batches: re-iterable ``(inputs, targets)`` batches.
        loss_fn: ``loss_fn(outputs, batch_targets) -> scalar``.

    Returns:
        qualname -> gradient shaped like the parameter (float32 or the parameter's dtype).
    """
    if loss_fn is None or not callable(loss_fn):
        raise ValueError("the taylor criterion needs loss_fn(outputs, targets) -> scalar loss")
    params = [trainable(t.module, t.param) for t in targets]
    totals = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
    count = 0
    with _eval_mode(model), torch.enable_grad():
        for batch in batches:
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError("taylor: each calibration batch must be (inputs, targets), got "
                                f"{type(batch).__name__}")
            loss = loss_fn(model(batch[0]), batch[1])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for total, grad in zip(totals, grads, strict=True):
                if grad is not None:
                    total += grad
            count += 1
    if count == 0:
        raise _no_batches()
    return {t.qualname: total / count for t, total in zip(targets, totals, strict=True)}
