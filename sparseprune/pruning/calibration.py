"""Gathering what data-aware criteria need: input norms (Wanda), input Hessians (SparseGPT),
mean gradients (Taylor), and the stages of sequential (layer-by-layer) calibration.

Calibration data is any re-iterable of batches (a list, a ``DataLoader``): a batch is an input
tensor, a dict of keyword inputs (a tokenizer's output), or a tuple/list whose first item is the
input (and second the target, for gradients).
The model runs in eval mode (no dropout, BatchNorm statistics untouched); each module's
training flag is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .masks import Target, trainable

__all__ = [
    "InputHessian",
    "InputNorms",
    "Stages",
    "activation_norms",
    "call_model",
    "collect",
    "input_hessians",
    "mean_gradients",
    "stages",
]

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


def call_model(model: nn.Module, batch: object) -> object:
    """Run ``model`` on one calibration batch.

    A dict batch is keyword arguments (``model(**batch)``: tokenizer output), a tuple/list is
    ``(inputs, targets, ...)`` (``model(inputs)``), anything else is the input itself.
    """
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("calibration batch is an empty tuple/list")
        return model(batch[0])
    return model(batch)


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


class InputNorms:
    """Wanda's statistic: ``‖x_j‖₂`` per input feature/channel, float64 [in_features]."""

    def __init__(self) -> None:
        self.sums: Tensor | None = None

    def update(self, module: nn.Module, x: Tensor) -> None:
        dim = _channel_dim(module, x)
        squares = x.detach().to(torch.float64).square()
        per_channel = squares.movedim(dim, 0).reshape(x.shape[dim], -1).sum(1)
        self.sums = per_channel if self.sums is None else self.sums + per_channel

    def result(self) -> Tensor | None:
        return None if self.sums is None else self.sums.sqrt()


class InputHessian:
    """SparseGPT's statistic: ``XᵀX / n`` over all rows reaching a Linear, float64 [K, K].

    The rows are every position of every calibration input (``[..., K]`` flattened), so a
    padded batch counts its padding: calibrate with unpadded batches (one sentence each, or
    equal lengths).
    """

    def __init__(self) -> None:
        self.gram: Tensor | None = None
        self.rows = 0

    def update(self, module: nn.Module, x: Tensor) -> None:
        if not isinstance(module, nn.Linear):
            raise TypeError(f"the input Hessian is defined for nn.Linear, got "
                            f"{type(module).__name__}")
        rows = x.detach().reshape(-1, x.shape[-1]).to(torch.float32)
        gram = (rows.T @ rows).to(torch.float64)  # fp32 products, fp64 running sum
        self.gram = gram if self.gram is None else self.gram + gram
        self.rows += rows.shape[0]

    def result(self) -> Tensor | None:
        return None if self.gram is None else self.gram / max(self.rows, 1)


class _StageDone(Exception):
    """Raised inside a hook once every layer of the stage has seen this batch's input."""


@torch.no_grad()
def collect(
    model: nn.Module,
    targets: Sequence[Target],
    batches: Iterable[object],
    make: Callable[[], InputNorms | InputHessian],
    *,
    stop_early: bool = False,
    what: str = "calibration",
) -> dict[str, Tensor]:
    """One statistic per target over its inputs on every calibration batch.

    Args:
        model: called through :func:`call_model` on each batch, in eval mode.
        targets: layers to observe (one forward pre-hook per module).
        batches: re-iterable calibration batches.
        make: statistic factory (:class:`InputNorms`, :class:`InputHessian`).
        stop_early: abandon each forward once every target module has run (sequential pruning
            needs a stage's inputs only, so the rest of the model is not run).
        what: criterion name for messages.

    Returns:
        qualname -> the statistic's result.

    Raises:
        ValueError: no batches, or a target layer never ran.
    """
    stats: dict[int, InputNorms | InputHessian] = {}
    fired: set[int] = set()
    handles = []

    def hook_for(target: Target) -> Callable[[nn.Module, tuple[object, ...]], None]:
        key = id(target.module)

        def hook(module: nn.Module, args: tuple[object, ...]) -> None:
            x = args[0] if args else None
            if not isinstance(x, Tensor):
                raise TypeError(f"{what}: {target.describe()} got a {type(x).__name__} input, "
                                "expected a tensor")
            stats[key].update(module, x)
            fired.add(key)
            if stop_early and len(fired) == len(stats):
                raise _StageDone

        return hook

    try:
        # One hook per module even if several of its tensors are targets.
        for target in targets:
            if id(target.module) not in stats:
                stats[id(target.module)] = make()
                handles.append(target.module.register_forward_pre_hook(hook_for(target)))
        count = 0
        with _eval_mode(model):
            for batch in batches:
                fired.clear()
                try:
                    call_model(model, batch)
                except _StageDone:
                    pass
                count += 1
    finally:
        for handle in handles:
            handle.remove()
    if count == 0:
        raise _no_batches()
    out = {}
    for target in targets:
        value = stats[id(target.module)].result()
        if value is None:
            raise ValueError(f"{what}: {target.describe()} never ran on the calibration data")
        out[target.qualname] = value
    return out


def activation_norms(
    model: nn.Module, targets: Sequence[Target], batches: Iterable[object],
    *, stop_early: bool = False,
) -> dict[str, Tensor]:
    """``‖x_j‖₂`` of every target layer's input feature/channel over all calibration data.

    Returns:
        qualname -> [in_features] (Linear) or [in_channels] (ConvNd) float64 norms.
    """
    return collect(model, targets, batches, InputNorms, stop_early=stop_early, what="wanda")


def input_hessians(
    model: nn.Module, targets: Sequence[Target], batches: Iterable[object],
    *, stop_early: bool = False,
) -> dict[str, Tensor]:
    """``XᵀX / n`` of every target Linear's inputs: qualname -> float64 [in_features]²."""
    return collect(model, targets, batches, InputHessian, stop_early=stop_early,
                   what="sparsegpt")


class Stages(NamedTuple):
    """Execution-ordered groups of target indices, and whether a forward may stop early."""

    groups: list[list[int]]
    stop_early: bool


@torch.no_grad()
def stages(model: nn.Module, targets: Sequence[Target], batches: Iterable[object]) -> Stages:
    """Targets grouped in execution order for sequential (layer-by-layer) pruning.

    One forward on the first batch records when each target module first runs and on which
    input; consecutive modules fed the very same tensor (a transformer's q/k/v projections)
    form one stage, calibrated together. Targets that never run go last, one stage each, so
    :func:`collect` names them. A module that runs twice in one forward (shared weights) turns
    early stopping off, so its statistic sees every call.

    Returns:
        :class:`Stages`: lists of indices into ``targets``, and ``stop_early``.
    """
    first = next(iter(batches), None)
    if first is None:
        raise _no_batches()
    # The inputs are kept alive until grouping is done, so no address is reused for another
    # tensor and "same storage, shape and strides" means the very same input.
    order: list[tuple[int, object]] = []
    calls: dict[int, int] = {}
    handles = []

    def hook(module: nn.Module, args: tuple[object, ...]) -> None:
        calls[id(module)] = calls.get(id(module), 0) + 1
        if calls[id(module)] == 1:
            order.append((id(module), args[0] if args else None))

    def same(a: object, b: object) -> bool:
        if isinstance(a, Tensor) and isinstance(b, Tensor):
            return (a.data_ptr(), a.shape, a.stride()) == (b.data_ptr(), b.shape, b.stride())
        return a is b

    try:
        for module in {id(t.module): t.module for t in targets}.values():
            handles.append(module.register_forward_pre_hook(hook))
        with _eval_mode(model):
            call_model(model, first)
    finally:
        for handle in handles:
            handle.remove()
    by_module: dict[int, list[int]] = {}
    for i, target in enumerate(targets):
        by_module.setdefault(id(target.module), []).append(i)
    out: list[list[int]] = []
    for j, (module_id, x) in enumerate(order):
        if out and same(x, order[j - 1][1]):
            out[-1].extend(by_module[module_id])
        else:
            out.append(list(by_module[module_id]))
    ran = {i for stage in out for i in stage}
    out += [[i] for i in range(len(targets)) if i not in ran]
    return Stages(out, stop_early=all(n == 1 for n in calls.values()))


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
            loss = loss_fn(call_model(model, batch), batch[1])
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for total, grad in zip(totals, grads, strict=True):
                if grad is not None:
                    total += grad
            count += 1
    if count == 0:
        raise _no_batches()
    return {t.qualname: total / count for t, total in zip(targets, totals, strict=True)}
