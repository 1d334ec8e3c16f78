"""``iterative_prune``: rounds of prune + fine-tune, recorded as a :class:`History`."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from torch import nn

from ..pruning import Pruner, Schedule
from ._state import levels_of, load_snapshot, nonzero_params, snapshot
from .distributed import broadcast_masks, broadcast_model, broadcast_value, is_main_process
from .train import EvalFn, TrainFn, call_train_fn

__all__ = ["History", "Round", "iterative_prune"]


@dataclass(frozen=True)
class Round:
    """One measured point of a pruning run.

    Attributes:
        round: 0 = before pruning (baseline), then 1, 2, ...
        target: the schedule's sparsity for this round (over the pruned layers' pool).
        sparsity: achieved sparsity over all parameters (biases and protected layers included).
        params: nonzero parameters.
        accuracy: ``eval_fn(model)`` after this round's fine-tuning.
        seconds: wall time of this round (prune + fine-tune + eval).
    """

    round: int
    target: float
    sparsity: float
    params: int
    accuracy: float
    seconds: float


@dataclass
class History:
    """What a run measured, per round; JSON- and plot-ready.

    Attributes:
        method: label for tables and plot legends.
        rounds: the measured rounds, baseline (round 0) first.
        baseline: accuracy before pruning.
        best: index into ``rounds`` of the kept checkpoint (the sparsest that met the tolerance).
        stopped: why the run ended (``"target reached"`` or the tolerance that was exceeded).
        extra: free-form metadata (settings, seeds).
    """

    method: str
    rounds: list[Round] = field(default_factory=list)
    baseline: float = float("nan")
    best: int = 0
    stopped: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def final(self) -> Round:
        """The kept round (``rounds[best]``)."""
        return self.rounds[self.best]

    def to_dict(self) -> dict:
        return {"method": self.method, "baseline": self.baseline, "best": self.best,
                "stopped": self.stopped, "extra": self.extra,
                "rounds": [asdict(r) for r in self.rounds]}

    @classmethod
    def from_dict(cls, data: Mapping) -> History:
        return cls(method=data["method"], rounds=[Round(**r) for r in data["rounds"]],
                   baseline=data["baseline"], best=data["best"], stopped=data["stopped"],
                   extra=dict(data.get("extra", {})))

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        """The history as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            with open(path, "w") as f:
                f.write(text + "\n")
        return text

    def plot(self, path: str | os.PathLike, *others: History, title: str = "") -> None:
        """PNG of accuracy vs sparsity, one line per history (this one and ``others``)."""
        from .plots import plot_histories

        plot_histories([self, *others], path, title=title)

    def __str__(self) -> str:
        lines = [f"{self.method}: baseline {self.baseline:.2f}, stopped: {self.stopped}",
                 f"{'round':>5} {'target':>7} {'sparsity':>8} {'params':>10} {'accuracy':>8} "
                 f"{'s':>6}"]
        for i, r in enumerate(self.rounds):
            mark = " *" if i == self.best else ""
            lines.append(f"{r.round:>5} {r.target:>7.1%} {r.sparsity:>8.1%} {r.params:>10,} "
                         f"{r.accuracy:>8.2f} {r.seconds:>6.1f}{mark}")
        return "\n".join(lines)


def measure(model: nn.Module, eval_fn: EvalFn, index: int, target: float,
            seconds: float) -> Round:
    """Evaluate ``model`` and count its parameters into a :class:`Round`.

    Under ``torch.distributed`` the accuracy is rank 0's on every rank: decisions taken from it
    (the tolerance stop) must be the same everywhere, or the ranks deadlock.
    """
    nonzero, total = nonzero_params(model)
    accuracy = broadcast_value(float(eval_fn(model)))
    return Round(round=index, target=target, sparsity=1.0 - nonzero / total if total else 0.0,
                 params=nonzero, accuracy=accuracy, seconds=seconds)


def iterative_prune(
    model: nn.Module,
    schedule: Schedule | float | Sequence[float],
    train_fn: TrainFn,
    eval_fn: EvalFn,
    *,
    rate: float = 0.2,
    epochs: int = 1,
    final_epochs: int = 0,
    lr_scale: float = 0.1,
    baseline_epochs: int = 0,
    tolerance: float | None = 1.0,
    method: str = "iterative",
    progress: bool = True,
    **prune_options: object,
) -> History:
    """Train (optionally), then prune + fine-tune round by round; keep the best checkpoint.

    Each round prunes to the schedule's next level (already-pruned weights stay pruned, so a
    geometric schedule removes ``rate`` of the remaining weights), fine-tunes ``epochs`` epochs at
    ``lr_scale`` times the base LR, and evaluates. The run stops after the last level, or as soon
    as accuracy falls more than ``tolerance`` below the baseline; the model is then left at the
    sparsest round that met the tolerance (the baseline if none did); a NaN accuracy counts as
    missing it. Under ``torch.distributed`` the model is broadcast from rank 0 first and rank 0's
    accuracy decides for every rank, so all ranks run the same rounds.

    Args:
        model: modified in place (masks in the ``torch.nn.utils.prune`` convention).
        schedule: a final sparsity (geometric at ``rate`` of the remaining weights per round;
            0.9 at 0.2 is 11 rounds), a list of levels (``[0.9]`` is one-shot), or a schedule
            object (``sparseprune.pruning.Cubic(0.9, 10)``).
        train_fn: ``train_fn(model, epochs, lr_scale=...)`` (see :mod:`.train`).
        eval_fn: ``eval_fn(model) -> float``, higher is better.
        rate: per-round fraction for a float ``schedule``.
        epochs: fine-tuning epochs after each round.
        final_epochs: extra fine-tuning epochs after the last round (counted in that round).
        lr_scale: fine-tuning LR as a fraction of the base LR.
        baseline_epochs: train this long at the full LR before pruning (0: the model is trained).
        tolerance: allowed drop below the baseline, in ``eval_fn``'s units (points when it
            returns percent); None never stops early.
        method: label of the history.
        progress: tqdm bar over rounds (and nothing printed when False).
        **prune_options: passed to :class:`sparseprune.Pruner` (``pattern``, ``criterion``,
            ``scope``, ``protect``, ``layer_sparsity``, ``exclude``, ...).

    Returns:
        A :class:`History`; ``model`` holds its ``best`` round.
    """
    sched = levels_of(schedule, rate)
    broadcast_model(model)  # under torch.distributed every rank starts from rank 0's weights
    pruner = Pruner(model, schedule=sched, **prune_options)  # validates options before training
    history = History(method=method, extra={
        "schedule": repr(sched), "epochs": epochs, "final_epochs": final_epochs,
        "lr_scale": lr_scale, "baseline_epochs": baseline_epochs, "tolerance": tolerance})
    t0 = time.perf_counter()
    call_train_fn(train_fn, model, baseline_epochs, 1.0)
    history.rounds.append(measure(model, eval_fn, 0, 0.0, time.perf_counter() - t0))
    history.baseline = history.rounds[0].accuracy
    best_state = snapshot(model)
    bar = None
    if progress and is_main_process():
        from tqdm.auto import tqdm

        bar = tqdm(total=sched.steps, desc=method, unit="round")
    history.stopped = "target reached"
    try:
        while not pruner.done:
            t0 = time.perf_counter()
            pruner.step()
            broadcast_masks(model)
            last = pruner.done
            call_train_fn(train_fn, model, epochs + (final_epochs if last else 0), lr_scale)
            r = measure(model, eval_fn, pruner.step_count, pruner.sparsity,
                        time.perf_counter() - t0)
            history.rounds.append(r)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(sparsity=f"{r.sparsity:.1%}", acc=f"{r.accuracy:.2f}")
            if tolerance is not None and (math.isnan(r.accuracy) or  # diverged: a failure
                                          r.accuracy < history.baseline - tolerance):
                history.stopped = (f"accuracy {r.accuracy:.2f} fell more than {tolerance:g} "
                                   f"below the baseline {history.baseline:.2f}")
                break
            history.best = len(history.rounds) - 1
            best_state = snapshot(model)
    finally:
        if bar is not None:
            bar.close()
    if history.best != len(history.rounds) - 1:
        load_snapshot(model, best_state)
    return history
