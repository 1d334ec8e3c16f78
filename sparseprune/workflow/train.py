"""A small fine-tuning loop: :class:`FineTuner` turns data loaders into ``train_fn`` / ``eval_fn``.

Every workflow function (:func:`iterative_prune`, :func:`find_lottery_ticket`,
:func:`sensitivity`) takes two callables, so any training code plugs in:

* ``train_fn(model, epochs, lr_scale=1.0)``: train ``model`` in place for ``epochs`` epochs at
  ``lr_scale`` times its base learning rate (a two-argument ``train_fn(model, epochs)`` works
  too; it is then called without ``lr_scale``);
* ``eval_fn(model) -> float``: higher is better (:func:`evaluate` returns accuracy in percent).

Under ``torch.distributed`` the loop wraps the model in ``DistributedDataParallel`` for each call
(a fresh wrapper, since pruning swaps ``weight`` for ``weight_orig`` between calls); give it
loaders with a ``DistributedSampler``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "EvalFn",
    "FineTuneConfig",
    "FineTuner",
    "OptimizerFactory",
    "TrainFn",
    "call_train_fn",
    "evaluate",
    "fit",
]

TrainFn = Callable[..., object]
EvalFn = Callable[[nn.Module], float]
OptimizerFactory = Callable[[Iterable[nn.Parameter], float], torch.optim.Optimizer]


def _adam(params: Iterable[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=lr)


@dataclass(frozen=True)
class FineTuneConfig:
    """How :class:`FineTuner` trains.

    Attributes:
        lr: base learning rate; ``train_fn(..., lr_scale=s)`` trains at ``s * lr``.
        optimizer: ``(params, lr) -> Optimizer``; default Adam. A new one is made per call, so no
            state (momentum) leaks across pruning rounds.
        loss_fn: ``(outputs, targets) -> loss``; default cross entropy.
        progress: tqdm bar over epochs.
        max_grad_norm: clip gradients to this norm (None: no clipping).
    """

    lr: float = 1e-3
    optimizer: OptimizerFactory = field(default=_adam)
    loss_fn: Callable[[Tensor, Tensor], Tensor] = field(default=nn.functional.cross_entropy)
    progress: bool = False
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"FineTuneConfig.lr must be > 0, got {self.lr!r}")


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _main_process() -> bool:
    return not _is_distributed() or dist.get_rank() == 0


def fit(model: nn.Module, loader: Iterable, epochs: int, config: FineTuneConfig | None = None,
        *, lr_scale: float = 1.0, desc: str = "train") -> list[float]:
    """Train ``model`` in place; returns the mean training loss of each epoch.

    Args:
        model: the model (masked or not); trained in ``train()`` mode, left in ``eval()`` mode.
        loader: re-iterable ``(inputs, targets)`` batches, e.g. a ``DataLoader``.
        epochs: passes over ``loader`` (0 does nothing).
        config: optimizer, base LR, loss, progress; default :class:`FineTuneConfig()`.
        lr_scale: multiplies ``config.lr``.
        desc: progress bar label.
    """
    config = config or FineTuneConfig()
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"fit: epochs must be an int >= 0, got {epochs!r}")
    if epochs == 0:
        return []
    net: nn.Module = model
    if _is_distributed():
        # A fresh wrapper per call: it broadcasts rank 0's parameters and buffers (masks
        # included) now, and sees the current parameter set (weight_orig after pruning).
        net = nn.parallel.DistributedDataParallel(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = config.optimizer(params, config.lr * lr_scale)
    bar = None
    if config.progress and _main_process():
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs, desc=desc, leave=False, unit="epoch")
    losses = []
    model.train()
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for x, y in loader:
                opt.zero_grad(set_to_none=True)
                loss = config.loss_fn(net(x), y)
                loss.backward()
                if config.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                opt.step()
                total += float(loss.detach()) * len(y)
                count += len(y)
            losses.append(total / max(count, 1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
    finally:
        if bar is not None:
            bar.close()
        model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable) -> float:
    """Top-1 accuracy in percent (0-100) of ``model`` over ``(inputs, targets)`` batches."""
    was_training = model.training
    model.eval()
    correct = count = 0
    try:
        for x, y in loader:
            correct += int((model(x).argmax(-1) == y).sum())
            count += len(y)
    finally:  # back to training mode even when the model or the loader raises
        model.train(was_training)
    if count == 0:
        raise ValueError("evaluate: the loader yielded no samples")
    return 100.0 * correct / count


class FineTuner:
    """Loaders + a :class:`FineTuneConfig`, as the ``train_fn`` / ``eval_fn`` pair.

    Example::

        tuner = FineTuner(train_loader, test_loader, FineTuneConfig(lr=1e-3))
        tuner.train(model, 10)                      # or tuner(model, 10)
        history = iterative_prune(model, 0.9, tuner.train, tuner.evaluate)

    Args:
        train_loader: re-iterable ``(inputs, targets)`` batches.
        eval_loader: batches for :meth:`evaluate`.
        config: optimizer, LR, loss, progress.
    """

    def __init__(self, train_loader: Iterable, eval_loader: Iterable,
                 config: FineTuneConfig | None = None) -> None:
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.config = config or FineTuneConfig()

    def train(self, model: nn.Module, epochs: int, lr_scale: float = 1.0) -> list[float]:
        """``train_fn``: :func:`fit` on the training loader."""
        return fit(model, self.train_loader, epochs, self.config, lr_scale=lr_scale)

    __call__ = train

    def evaluate(self, model: nn.Module) -> float:
        """``eval_fn``: :func:`evaluate` on the evaluation loader (percent)."""
        return evaluate(model, self.eval_loader)


def _takes_lr_scale(fn: TrainFn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return "lr_scale" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def call_train_fn(train_fn: TrainFn, model: nn.Module, epochs: int, lr_scale: float) -> None:
    """Call ``train_fn(model, epochs, lr_scale=...)``, or ``train_fn(model, epochs)`` if it
    takes no ``lr_scale`` (then the LR is the caller's business)."""
    if epochs <= 0:
        return
    if _takes_lr_scale(train_fn):
        train_fn(model, epochs, lr_scale=lr_scale)
    else:
        train_fn(model, epochs)
