"""The front door: :func:`prune` for one round, :class:`Pruner` for a schedule, :func:`remove`.

A round: select the target tensors, give each a rate (scope.py), score the weights (criteria.py,
with calibration.py for data-aware criteria), force already-pruned weights to ``-inf`` so they stay
pruned, turn scores into masks (patterns.py through the scope), AND them into the existing masks
the ``torch.nn.utils.prune`` way (masks.py), and report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._checks import check_rate
from .calibration import LossFn, activation_norms, mean_gradients
from .criteria import Context, Criterion, get_criterion, requirements
from .masks import Target, apply_mask, current_mask, effective_weight, remove
from .patterns import OnIndivisible, Pattern, parse_pattern
from .report import LayerReport, PruneReport
from .schedules import Schedule, make_schedule
from .scope import LayerPlan, LayerSparsity, Protect, Scope, Selector, get_scope, plan_rates
from .scope import select_targets as _select_targets

__all__ = ["DEFAULT_PROTECT", "Pruner", "prune", "remove"]

#: The default protection: first conv dense, last Linear at half the target rate.
DEFAULT_PROTECT = Protect()

Include = Sequence[Selector] | Callable[[str, nn.Module], bool] | None


def _final_sparsity(sparsity: float | None, pattern: Pattern) -> float:
    fixed = pattern.fixed_sparsity
    if sparsity is None:
        if fixed is None:
            raise ValueError(f"sparsity is required for pattern {pattern} (a float in [0, 1))")
        return fixed
    sparsity = check_rate(sparsity)
    if fixed is not None and sparsity > fixed + 1e-12:
        raise ValueError(f"pattern {pattern} prunes exactly {fixed:g} of the weights; got "
                         f"sparsity={sparsity:g} (leave sparsity out, or use a sparser N:M)")
    return sparsity


def _criterion_name(spec: str | Criterion) -> str:
    if isinstance(spec, str):
        return spec.strip().lower()
    return getattr(spec, "__name__", type(spec).__name__)


@dataclass(frozen=True, eq=False)
class _Setup:
    """Everything a round needs, validated once (so a bad option fails before any pruning)."""

    model: nn.Module
    targets: tuple[Target, ...]
    pattern: Pattern
    criterion: Criterion
    criterion_name: str
    scope: Scope
    layer_sparsity: LayerSparsity | None
    protect: Protect | None
    calibration: Iterable[object] | None
    loss_fn: LossFn | None
    seed: int

    @classmethod
    def build(cls, model: nn.Module, *, pattern: str | Pattern, criterion: str | Criterion,
              scope: str | Scope | None, exclude: Iterable[str], include: Include,
              layer_sparsity: LayerSparsity | None, protect: Protect | None, param: str,
              calibration: Iterable[object] | None, loss_fn: LossFn | None,
              on_indivisible: OnIndivisible, seed: int) -> _Setup:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if protect is not None and not isinstance(protect, Protect):
            raise TypeError(f"protect must be a Protect(first=..., last=...) or None, got "
                            f"{protect!r}")
        pattern_obj = parse_pattern(pattern, on_indivisible)
        crit = get_criterion(criterion)
        needs = requirements(crit)
        name = _criterion_name(criterion)
        if needs and calibration is None:
            raise ValueError(f"criterion {name!r} needs calibration data: pass calibration="
                             "[batch, ...] (a list or DataLoader; batches are inputs or "
                             "(inputs, targets))")
        if "gradients" in needs and loss_fn is None:
            raise ValueError(f"criterion {name!r} needs loss_fn(outputs, targets) -> loss")
        targets = _select_targets(model, include=include, exclude=exclude, param=param)
        return cls(model, tuple(targets), pattern_obj, crit, name,
                   get_scope(scope, pattern_obj), layer_sparsity, protect, calibration,
                   loss_fn, seed)

    def plans(self, sparsity: float, progress: float) -> list[LayerPlan]:
        return plan_rates(self.targets, sparsity, layer_sparsity=self.layer_sparsity,
                          protect=self.protect, pattern=self.pattern, progress=progress)

    def split(self, plans: Sequence[LayerPlan]) -> tuple[list[LayerPlan], dict[int, str]]:
        """(plans to score, {target index: why skipped}); raises on an untileable layer."""
        active, skipped = [], {}
        policy = getattr(self.pattern, "on_indivisible", "error")
        for i, plan in enumerate(plans):
            if plan.rate == 0.0:
                continue  # dense by plan: no score, no pattern check (e.g. a 3-channel stem)
            problem = self.pattern.check(plan.target.shape)
            if problem is None or policy == "pad":
                active.append(plan)
            elif policy == "skip":
                skipped[i] = f"skipped: {problem}"
            else:
                raise ValueError(
                    f"{plan.target.describe()}: {problem}. Pass on_indivisible='pad' (zero-pad "
                    "the last group) or 'skip' (leave such layers dense), or exclude "
                    f"[{plan.target.name!r}]"
                )
        return active, skipped


def _scores(setup: _Setup, plans: Sequence[LayerPlan]) -> list[Tensor]:
    targets = [p.target for p in plans]
    needs = requirements(setup.criterion)
    norms = grads = {}
    if "activations" in needs and targets:
        norms = activation_norms(setup.model, targets, setup.calibration or ())
    if "gradients" in needs and targets:
        grads = mean_gradients(setup.model, targets, setup.calibration or (),
                               setup.loss_fn)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(setup.seed)
    out = []
    for target in targets:
        mask = current_mask(target.module, target.param)
        ctx = Context(
            name=target.name,
            param=target.param,
            weight=effective_weight(target.module, target.param),
            mask=mask,
            act_norms=norms.get(target.qualname),
            grad=grads.get(target.qualname),
            generator=generator,
        )
        with torch.no_grad():
            scores = setup.criterion(target.module, ctx)
        if not isinstance(scores, Tensor):
            raise TypeError(f"criterion {setup.criterion_name!r} returned "
                            f"{type(scores).__name__} for {target.describe()}; expected a tensor")
        if tuple(scores.shape) != tuple(mask.shape):
            raise ValueError(f"criterion {setup.criterion_name!r} returned scores of shape "
                             f"{list(scores.shape)} for {target.describe()}")
        scores = scores.detach()
        if not scores.is_floating_point():
            scores = scores.to(torch.float32)
        if torch.isnan(scores).any():
            raise ValueError(f"criterion {setup.criterion_name!r} returned NaN scores for "
                             f"{target.describe()}")
        # Already-pruned weights rank below everything, so they are pruned again first and a
        # higher sparsity never revives them.
        out.append(scores.masked_fill(~mask.to(scores.device), float("-inf")))
    return out


def _round(setup: _Setup, sparsity: float, progress: float, step: int | None) -> PruneReport:
    plans = setup.plans(sparsity, progress)
    active, skipped = setup.split(plans)
    scores = _scores(setup, active)
    new_masks = setup.scope.masks(active, scores, setup.pattern, sparsity)
    label = str(setup.pattern)
    for plan, new in zip(active, new_masks, strict=True):
        module, param = plan.target.module, plan.target.param
        old = current_mask(module, param).to(new.device)
        if bool((new | ~old).all()):
            # Nothing newly pruned: an unmasked layer stays a plain Parameter and a masked one
            # gets no no-op entry in its PruningContainer.
            continue
        apply_mask(module, param, new, pattern=label)
    layers = []
    for i, plan in enumerate(plans):
        target = plan.target
        kept = current_mask(target.module, target.param)
        layers.append(LayerReport(
            name=target.name,
            param=target.param,
            type=type(target.module).__name__,
            shape=tuple(kept.shape),
            numel=kept.numel(),
            target=0.0 if i in skipped else (sparsity if plan.rate is None else plan.rate),
            pruned=int((~kept).sum()),
            reason=skipped.get(i, plan.reason),
        ))
    dead = [f"{r.name}.{r.param}" for r in layers if r.numel and r.pruned == r.numel]
    if dead:
        # Global magnitude pruning can empty a whole layer (layer collapse); the model then
        # outputs a constant. Legal, but almost never intended.
        warnings.warn(f"fully pruned, so the network is cut there: {', '.join(dead)}. Lower the "
                      "sparsity, use scope='layer', or give them layer_sparsity",
                      stacklevel=3)
    return PruneReport(sparsity=sparsity, pattern=label, criterion=setup.criterion_name,
                       scope=setup.scope.name, step=step, layers=tuple(layers))


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
            ``wanda``, ``random``) or a callable ``(module, ctx) -> scores``.
        scope: ``"global"`` (one threshold across layers) or ``"layer"``; None = the pattern's
            default (global for unstructured and blocks, per layer for N:M and channels).
        exclude: layer names (exact, parent container, or glob) to leave dense.
        include: None = every Linear and Conv1d/2d/3d; else module types and/or layer names, or a
            predicate ``(name, module) -> bool``.
        layer_sparsity: own rates for some layers: dict ``{name or glob: sparsity}`` or a function
            ``(name, module) -> sparsity | None``. Wins over ``protect``.
        protect: :class:`Protect` factors for the first conv and the last Linear (default: dense
            and half rate); None prunes them like any other layer.
        param: the parameter to prune in each layer.
        calibration: re-iterable batches for ``wanda`` (inputs) and ``taylor`` (inputs, targets).
        loss_fn: ``loss_fn(outputs, targets)`` for ``taylor``.
        on_indivisible: for N:M / block pattern strings, a layer whose shape does not tile:
            ``"error"``, ``"pad"`` or ``"skip"`` (reported).
        seed: seed for the ``random`` criterion.

    Returns:
        A :class:`PruneReport`: per-layer target and achieved sparsity, protected and skipped
        layers, and the total sparsity (``print`` it for a table).

    Raises:
        ValueError: sparsity outside [0, 1), unknown pattern/criterion/scope, N >= M, a layer
            the pattern does not tile (naming it and its shape), missing calibration data, an
            ``exclude`` or ``layer_sparsity`` name that matches nothing. Nothing is modified.
    """
    setup = _Setup.build(model, pattern=pattern, criterion=criterion, scope=scope,
                         exclude=exclude, include=include, layer_sparsity=layer_sparsity,
                         protect=protect, param=param, calibration=calibration,
                         loss_fn=loss_fn, on_indivisible=on_indivisible, seed=seed)
    target = _final_sparsity(sparsity, setup.pattern)
    return _round(setup, target, 1.0, None)


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
    ) -> None:
        self._setup = _Setup.build(model, pattern=pattern, criterion=criterion, scope=scope,
                                   exclude=exclude, include=include,
                                   layer_sparsity=layer_sparsity, protect=protect, param=param,
                                   calibration=calibration, loss_fn=loss_fn,
                                   on_indivisible=on_indivisible, seed=seed)
        if sparsity is None and not isinstance(schedule, str):
            sparsity = getattr(schedule, "final", None)
        final = _final_sparsity(sparsity, self._setup.pattern)
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
        report = _round(self._setup, target, progress, self.step_count)
        self.reports.append(report)
        return report

    def __repr__(self) -> str:
        return (f"Pruner({self.schedule!r}, step {self.step_count}/{self.schedule.steps}, "
                f"pattern={self._setup.pattern}, criterion={self._setup.criterion_name!r})")
