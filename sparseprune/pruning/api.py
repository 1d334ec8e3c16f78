"""The front door: :func:`prune` for one round, :class:`Pruner` for a schedule, :func:`remove`.

A round: select the target tensors, give each a rate (scope.py), score the weights (criteria.py,
with calibration.py for data-aware criteria), force already-pruned weights to ``-inf`` so they stay
pruned, turn scores into masks (patterns.py through the scope), AND them into the existing masks
the ``torch.nn.utils.prune`` way (masks.py), and report.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .calibration import LossFn
from .criteria import Criterion
from .masks import remove
from .patterns import OnIndivisible, Pattern
from .report import PruneReport
from .rounds import Include, Setup, final_sparsity, run_round
from .schedules import Schedule, make_schedule
from .scope import LayerSparsity, Protect, Scope

__all__ = ["DEFAULT_PROTECT", "Pruner", "prune", "remove"]

#: The default protection: first conv dense, last Linear at half the target rate.
DEFAULT_PROTECT = Protect()


def prune(
    model: nn.Module,
    sparsity: float | None = None,
    *,
    pattern: str | Pattern = "unstructured",
    criterion: str | Criterion = "magnitude",
    scope: str | Scope | None = None,
    exclude: Iterable[str] = (),
    include: Include = None,
    layer_sparsity: LayerSparsity | None = None,
    protect: Protect | None = DEFAULT_PROTECT,
    param: str = "weight",
    calibration: Iterable[object] | None = None,
    loss_fn: LossFn | None = None,
    on_indivisible: OnIndivisible = "error",
    seed: int = 0,
    sequential: bool | None = None,
) -> PruneReport:
    """Prune ``model`` in place, once, to ``sparsity``.

    Masks follow ``torch.nn.utils.prune`` (``weight_orig`` x buffer ``weight_mask`` + pre-hook) and
    are ANDed into any existing ones, so pruning again at a higher sparsity keeps earlier zeros:
    already-pruned weights are scored ``-inf`` and counted toward the new target.

    Args:
        model: any ``nn.Module``; modified in place.
        sparsity: fraction in [0, 1) to prune, counted as ``round(sparsity * n)``; optional for
            N:M (``1 - N/M``).
        pattern: ``"unstructured"``, ``"N:M"`` (e.g. ``"2:4"``), ``"blockRxC"`` (e.g.
            ``"block8x1"``), ``"channel"``, or a pattern object (:mod:`.patterns`).
        criterion: a :data:`CRITERIA` name (``magnitude``, ``l1``, ``l2``, ``taylor``,
            ``wanda``, ``sparsegpt``, ``random``) or a callable ``(module, ctx) -> scores``.
            ``sparsegpt`` (nn.Linear only) also rewrites the surviving weights to keep each
            layer's output on the calibration data.
        scope: ``"global"`` (one threshold across layers), ``"layer"`` or ``"row"`` (every
            output row to the rate, unstructured only); None = the criterion's default where it
            has one (``wanda``: row), else the pattern's (global for unstructured and blocks,
            per layer for N:M and channels).
        exclude: layer names (exact, parent container, or glob) to leave dense.
        include: None = every Linear and Conv1d/2d/3d; else module types and/or layer names, or a
            predicate ``(name, module) -> bool``.
        layer_sparsity: own rates for some layers: dict ``{name or glob: sparsity}`` or a function
            ``(name, module) -> sparsity | None``. Wins over ``protect``.
        protect: :class:`Protect` factors for the first conv and the last Linear (default: dense
            and half rate); None prunes them like any other layer.
        param: the parameter to prune in each layer.
        calibration: re-iterable batches for ``wanda`` / ``sparsegpt`` (inputs, or dicts of
            keyword inputs) and ``taylor`` (inputs, targets). For ``sparsegpt`` prefer unpadded
            batches: padding positions count as inputs.
        loss_fn: ``loss_fn(outputs, targets)`` for ``taylor``.
        on_indivisible: for N:M / block pattern strings, a layer whose shape does not tile:
            ``"error"``, ``"pad"`` or ``"skip"`` (reported).
        seed: seed for the ``random`` criterion.
        sequential: calibrate layer by layer in execution order, each on the activations of the
            model pruned so far (one partial forward pass over the calibration data per stage);
            None = the criterion's default (``sparsegpt``: True, ``wanda``: False).

    Returns:
        A :class:`PruneReport`: per-layer target and achieved sparsity, protected and skipped
        layers, and the total sparsity (``print`` it for a table).

    Raises:
        ValueError: sparsity outside [0, 1), unknown pattern/criterion/scope, N >= M, a layer
            the pattern does not tile (naming it and its shape), missing calibration data, an
            ``exclude`` or ``layer_sparsity`` name that matches nothing. Nothing is modified.
    """
    setup = Setup.build(model, pattern=pattern, criterion=criterion, scope=scope,
                         exclude=exclude, include=include, layer_sparsity=layer_sparsity,
                         protect=protect, param=param, calibration=calibration,
                         loss_fn=loss_fn, on_indivisible=on_indivisible, seed=seed,
                         sequential=sequential)
    target = final_sparsity(sparsity, setup.pattern)
    return run_round(setup, target, 1.0, None)


class Pruner:
    """Iterative pruning along a schedule: call :meth:`step` between fine-tuning phases.

    Each step re-scores only the surviving weights and prunes to the schedule's next target, so
    pruned weights stay pruned and counts are exact at every step. Takes the options of
    :func:`prune`, plus:

    Args:
        schedule: a :data:`SCHEDULES` name (``oneshot``, ``geometric``, ``linear``, ``cubic``) or a
            schedule object (then ``sparsity`` may be left out).
        steps: number of rounds for a named schedule.

    Layers with their own rate (``layer_sparsity``) follow the schedule proportionally
    (``rate * s_t / s_final``); protected layers get their factor of ``s_t``.

    Example::

        pruner = Pruner(model, 0.9, schedule="geometric", steps=5)
        while not pruner.done:
            report = pruner.step()
            fine_tune(model)
    """

    def __init__(
        self,
        model: nn.Module,
        sparsity: float | None = None,
        *,
        schedule: str | Schedule = "geometric",
        steps: int = 5,
        pattern: str | Pattern = "unstructured",
        criterion: str | Criterion = "magnitude",
        scope: str | Scope | None = None,
        exclude: Iterable[str] = (),
        include: Include = None,
        layer_sparsity: LayerSparsity | None = None,
        protect: Protect | None = DEFAULT_PROTECT,
        param: str = "weight",
        calibration: Iterable[object] | None = None,
        loss_fn: LossFn | None = None,
        on_indivisible: OnIndivisible = "error",
        seed: int = 0,
        sequential: bool | None = None,
    ) -> None:
        self._setup = Setup.build(model, pattern=pattern, criterion=criterion, scope=scope,
                                   exclude=exclude, include=include,
                                   layer_sparsity=layer_sparsity, protect=protect, param=param,
                                   calibration=calibration, loss_fn=loss_fn,
                                   on_indivisible=on_indivisible, seed=seed,
                                   sequential=sequential)
        if sparsity is None and not isinstance(schedule, str):
            sparsity = getattr(schedule, "final", None)
        final = final_sparsity(sparsity, self._setup.pattern)
        self.schedule: Schedule = make_schedule(schedule, final, steps)
        if abs(self.schedule.final - final) > 1e-12:
            raise ValueError(f"sparsity={final:g} disagrees with the schedule's final "
                             f"{self.schedule.final:g}; give one of them")
        # Fail now, not at step 3: check layer_sparsity names and that every layer tiles.
        self._setup.split(self._setup.plans(final, 1.0))
        self.step_count = 0
        self.reports: list[PruneReport] = []

    @property
    def done(self) -> bool:
        """Whether the schedule has reached its final sparsity."""
        return self.step_count >= self.schedule.steps

    @property
    def sparsity(self) -> float:
        """The target reached by the last step (the schedule's ``initial`` before any)."""
        return self.schedule.sparsity_at(self.step_count)

    def step(self) -> PruneReport:
        """Prune to the schedule's next target and return that round's report.

        After the last round it prunes nothing and returns the last report again, so a training
        loop may keep calling it.
        """
        if self.done and self.reports:
            return self.reports[-1]
        self.step_count += 1
        target = self.schedule.sparsity_at(self.step_count)
        final = self.schedule.final
        progress = target / final if final > 0 else 1.0
        report = run_round(self._setup, target, progress, self.step_count)
        self.reports.append(report)
        return report

    def __repr__(self) -> str:
        return (f"Pruner({self.schedule!r}, step {self.step_count}/{self.schedule.steps}, "
                f"pattern={self._setup.pattern}, criterion={self._setup.criterion_name!r})")
