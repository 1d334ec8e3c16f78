"""Lottery tickets (Frankle & Carbin, ICLR 2019; late rewinding: Frankle et al., ICML 2020).

Iterative magnitude pruning where, after each pruning round, the surviving weights are rewound
to their values at initialization (θ0) or after ``rewind_epoch`` epochs (θk) and retrained from
there. The control that makes it a claim: the same masks on a *randomly re-initialized* network,
trained just as long. A ticket is a ticket only if it beats its control.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._modules import deepcopy_model
from ..pruning import Pruner, Schedule, apply_mask
from ._state import levels_of, masks_of, rewind_weights, snapshot
from .distributed import broadcast_masks, broadcast_model, is_main_process
from .iterative import History, Round, measure
from .train import EvalFn, TrainFn, call_train_fn

__all__ = ["LotteryResult", "find_lottery_ticket", "reinitialize"]


@dataclass
class LotteryResult:
    """The ticket's history (rewound + retrained each round) and the random re-init control's
    (same masks, fresh init; round 0 is the dense model in both)."""

    ticket: History
    control: History | None

    def gap(self) -> dict[float, float]:
        """``{target sparsity: ticket accuracy - control accuracy}`` where both were measured."""
        if self.control is None:
            return {}
        ctrl = {round(r.target, 6): r.accuracy for r in self.control.rounds[1:]}
        return {r.target: r.accuracy - ctrl[round(r.target, 6)]
                for r in self.ticket.rounds[1:] if round(r.target, 6) in ctrl}

    def to_dict(self) -> dict:
        return {"ticket": self.ticket.to_dict(),
                "control": self.control.to_dict() if self.control else None,
                "gap": {str(k): v for k, v in self.gap().items()}}


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Re-draw ``model``'s parameters under ``seed``; returns it.

    Every module's ``reset_parameters()`` (or, failing that, ``_reset_parameters()``, e.g.
    ``nn.MultiheadAttention``) is called, children before their parents (so a parent's own
    init of its children's tensors, such as the attention's zero ``out_proj.bias``, wins, as it
    does in its constructor). A parameter that no such method owns and that is still unchanged
    afterwards (a bare ``nn.Parameter`` such as a position embedding) is re-drawn from a normal
    distribution with its own mean and std, so the control keeps its scale but none of its
    values. A warning names any parameter still holding its old, non-constant values (one a
    reset method left alone) and any unowned one that cannot be re-drawn (one value or
    constant). ``model`` must carry no masks (re-initialize first, then apply masks).
    """
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    covered: set[str] = set()
    kept = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for prefix, module in reversed(list(model.named_modules())):
            reset = getattr(module, "reset_parameters", None)
            if not callable(reset):
                reset = getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(f"{prefix}.{n}" if prefix else n
                               for n, _ in module.named_parameters(recurse=False))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if not torch.equal(p, before[name]):
                    continue
                std = float(p.float().std()) if p.numel() > 1 else 0.0
                random = p.is_floating_point() and std > 0.0
                if name in covered:
                    if random:  # a reset method that left it alone: say so
                        kept.append(name)
                elif random:
                    p.normal_(float(p.float().mean()), std)
                else:
                    kept.append(name)
    if kept:
        warnings.warn(f"reinitialize: {kept} keep their values (no reset method re-draws them "
                      "and they are constant or one value, or a reset method left them as they "
                      "were)", stacklevel=2)
    return model


def find_lottery_ticket(
    model: nn.Module,
    schedule: Schedule | float | Sequence[float],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    *,
    epochs: int,
    rate: float = 0.2,
    rewind_epoch: int = 0,
    control: bool | Sequence[float] = True,
    seed: int = 1,
    method: str = "lottery ticket",
    progress: bool = True,
    on_round: Callable[[Round, nn.Module], None] | None = None,
    **prune_options: object,
) -> LotteryResult:
    """Find a winning ticket by iterative magnitude pruning with rewinding; run its control.

    ``model`` must be untrained (its current weights are θ0). It is trained ``epochs`` epochs
    (rewind point θk saved after ``rewind_epoch`` of them); then each round prunes the trained
    weights by magnitude to the schedule's next level, rewinds the survivors (and every other
    parameter and buffer) to θk and retrains ``epochs - rewind_epoch`` epochs at the full LR.

    Args:
        model: untrained; ends as the sparsest ticket, trained.
        schedule: final sparsity (geometric at ``rate`` per round), a list of levels (e.g.
            ``[0.5, 0.75, 0.9, 0.95]``), or a schedule object.
        train_fn: ``train_fn(model, epochs, lr_scale=...)``; called with ``lr_scale=1.0``.
        eval_fn: ``eval_fn(model) -> float``.
        epochs: training epochs from θ0 (each round retrains from θk: ``epochs - rewind_epoch``).
        rate: per-round fraction for a float ``schedule``.
        rewind_epoch: 0 rewinds to θ0; k > 0 to the weights after k epochs (late rewinding).
        control: True runs the random re-init control at every level; a list of levels runs it
            at those only; False skips it. The control trains ``epochs`` epochs.
        seed: seed of the control's re-initialization (plus the round index).
        method: label of the ticket's history (the control's gets " (random re-init)").
        progress: tqdm bar over rounds.
        on_round: called as ``on_round(round, model)`` after each round's retraining (e.g. to
            save or measure the ticket at each level).
        **prune_options: passed to :class:`sparseprune.Pruner` (``scope``, ``protect``, ...).

    Returns:
        A :class:`LotteryResult`.
    """
    if not 0 <= rewind_epoch < epochs:
        raise ValueError(f"find_lottery_ticket: need 0 <= rewind_epoch < epochs, got "
                         f"rewind_epoch={rewind_epoch}, epochs={epochs}")
    sched = levels_of(schedule, rate)
    levels = [sched.sparsity_at(t) for t in range(1, sched.steps + 1)]
    if control is True:
        control_levels = set(levels)
    elif control is False:
        control_levels = set()
    else:
        control_levels = {float(s) for s in control}
        missing = [s for s in control_levels if not any(abs(s - lv) < 1e-9 for lv in levels)]
        if missing:
            raise ValueError(f"find_lottery_ticket: control levels {missing} are not in the "
                             f"schedule's levels {levels}")
    broadcast_model(model)
    template = deepcopy_model(model)  # the architecture, for the controls
    pruner = Pruner(model, schedule=sched, **prune_options)
    settings = {"schedule": repr(sched), "epochs": epochs, "rewind_epoch": rewind_epoch}
    ticket = History(method=method, extra={**settings, "rewind": f"theta_{rewind_epoch}"})
    ctrl = History(method=f"{method} (random re-init)", extra={**settings, "seed": seed})

    t0 = time.perf_counter()
    call_train_fn(train_fn, model, rewind_epoch, 1.0)
    rewind_state = snapshot(model)
    call_train_fn(train_fn, model, epochs - rewind_epoch, 1.0)
    dense = measure(model, eval_fn, 0, 0.0, time.perf_counter() - t0)
    for h in (ticket, ctrl):
        h.rounds.append(dense)
        h.baseline = dense.accuracy

    bar = None
    if progress and is_main_process():
        from tqdm.auto import tqdm

        bar = tqdm(total=sched.steps, desc=method, unit="round")
    try:
        while not pruner.done:
            t0 = time.perf_counter()
            pruner.step()
            broadcast_masks(model)
            rewind_weights(model, rewind_state)
            call_train_fn(train_fn, model, epochs - rewind_epoch, 1.0)
            r = measure(model, eval_fn, pruner.step_count, pruner.sparsity,
                        time.perf_counter() - t0)
            ticket.rounds.append(r)
            if on_round is not None:
                on_round(r, model)
            if any(abs(pruner.sparsity - s) < 1e-9 for s in control_levels):
                t0 = time.perf_counter()
                other = reinitialize(deepcopy_model(template), seed + pruner.step_count)
                broadcast_model(other)
                for qualname, mask in masks_of(model).items():
                    module_name, _, param = qualname.rpartition(".")
                    apply_mask(other.get_submodule(module_name), param, mask, pattern="ticket")
                call_train_fn(train_fn, other, epochs, 1.0)
                ctrl.rounds.append(measure(other, eval_fn, pruner.step_count, pruner.sparsity,
                                           time.perf_counter() - t0))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(sparsity=f"{r.sparsity:.1%}", acc=f"{r.accuracy:.2f}")
    finally:
        if bar is not None:
            bar.close()
    ticket.best = len(ticket.rounds) - 1
    ticket.stopped = ctrl.stopped = "target reached"
    ctrl.best = len(ctrl.rounds) - 1
    return LotteryResult(ticket=ticket, control=ctrl if control_levels else None)
