"""One pruning round: set up once, then calibrate, score or reconstruct, mask and report.

:class:`Setup` validates every option before anything is pruned; :func:`run_round` prunes the
active layers in one group, or stage by stage in execution order when the round is sequential
(each stage calibrated on the model pruned so far), and returns the :class:`PruneReport`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ._checks import check_rate
from .calibration import LossFn, activation_norms, input_hessians, mean_gradients, stages
from .criteria import Context, Criterion, get_criterion, requirements
from .masks import Target, apply_mask, current_mask, effective_weight, trainable
from .patterns import OnIndivisible, Pattern, parse_pattern
from .report import LayerReport, PruneReport, record_plan
from .scope import (
    Global,
    LayerPlan,
    LayerSparsity,
    Protect,
    Scope,
    Selector,
    get_scope,
    plan_rates,
    select,
)

__all__ = ["Include", "Setup", "final_sparsity", "run_round"]

Include = Sequence[Selector] | Callable[[str, nn.Module], bool] | None


def final_sparsity(sparsity: float | None, pattern: Pattern) -> float:
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


def _without_attention(model: nn.Module, targets: list[Target], ignored: list[tuple[str, str]],
                       criterion: str) -> tuple[list[Target], list[tuple[str, str]]]:
    """Drops attention projections for criteria that read a layer's input: an
    ``nn.MultiheadAttention`` takes (query, key, value), not the one tensor a Linear sees, and
    reads ``out_proj.weight`` itself, so its ``out_proj`` never runs as a module."""
    in_attention = {id(c) for m in model.modules() if isinstance(m, nn.MultiheadAttention)
                    for c in m.modules()}
    keep = [t for t in targets if id(t.module) not in in_attention]
    ignored = ignored + [
        (t.qualname, f"criterion {criterion!r} needs the layer's input, which "
                     "nn.MultiheadAttention does not pass through its projections as modules "
                     "(prune them with magnitude)")
        for t in targets if id(t.module) in in_attention]
    if not keep:
        raise ValueError(f"criterion {criterion!r} has no layer to prune: it reads layer "
                         "inputs, and the only targets are nn.MultiheadAttention projections")
    return keep, ignored


def _criterion_name(spec: str | Criterion) -> str:
    if isinstance(spec, str):
        return spec.strip().lower()
    return getattr(spec, "__name__", type(spec).__name__)


@dataclass(frozen=True, eq=False)
class Setup:
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
    sequential: bool
    ignored: tuple[tuple[str, str], ...]

    @classmethod
    def build(cls, model: nn.Module, *, pattern: str | Pattern, criterion: str | Criterion,
              scope: str | Scope | None, exclude: Iterable[str], include: Include,
              layer_sparsity: LayerSparsity | None, protect: Protect | None, param: str,
              calibration: Iterable[object] | None, loss_fn: LossFn | None,
              on_indivisible: OnIndivisible, seed: int,
              sequential: bool | None = None) -> Setup:
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
        if "hessian" in needs:
            problem = crit.supports_pattern(pattern_obj)  # type: ignore[attr-defined]
            if problem is not None:
                raise ValueError(problem)
        targets, ignored = select(model, include=include, exclude=exclude, param=param)
        if needs & {"activations", "hessian"}:
            targets, ignored = _without_attention(model, targets, ignored, name)
        scope_obj = get_scope(scope, pattern_obj, crit)
        if sequential is None:
            sequential = bool(getattr(crit, "sequential", False))
        if not isinstance(sequential, bool):
            raise TypeError(f"sequential must be True, False or None, got {sequential!r}")
        if sequential and not needs & {"activations", "hessian"}:
            raise ValueError(f"sequential=True calibrates layer by layer; criterion {name!r} "
                             "uses no layer inputs (use wanda or sparsegpt)")
        if (sequential or "hessian" in needs) and isinstance(scope_obj, Global):
            raise ValueError(f"criterion {name!r} with sequential={sequential} prunes layer by "
                             "layer, so it cannot rank weights across layers: use scope='layer' "
                             "or 'row'")
        if "hessian" in needs:
            for target in targets:
                problem = crit.supports(target.module)  # type: ignore[attr-defined]
                if problem is not None:
                    raise ValueError(f"{target.describe()}: {problem}")
        return cls(model, tuple(targets), pattern_obj, crit, name, scope_obj, layer_sparsity,
                   protect, calibration, loss_fn, seed, sequential, tuple(ignored))

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


def _statistics(setup: Setup, targets: Sequence[Target], stop_early: bool
                ) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """(input norms, mean gradients, input Hessians) the criterion needs for ``targets``."""
    needs = requirements(setup.criterion)
    norms: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    hessians: dict[str, Tensor] = {}
    data = setup.calibration or ()
    if "activations" in needs and targets:
        norms = activation_norms(setup.model, targets, data, stop_early=stop_early)
    if "gradients" in needs and targets:
        grads = mean_gradients(setup.model, targets, data, setup.loss_fn)  # type: ignore[arg-type]
    if "hessian" in needs and targets:
        hessians = input_hessians(setup.model, targets, data, stop_early=stop_early)
    return norms, grads, hessians


def _scores(setup: Setup, plans: Sequence[LayerPlan], norms: dict[str, Tensor],
            grads: dict[str, Tensor]) -> list[Tensor]:
    generator = torch.Generator().manual_seed(setup.seed)
    out = []
    for target in (p.target for p in plans):
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


def _apply(plan: LayerPlan, new: Tensor, label: str) -> None:
    module, param = plan.target.module, plan.target.param
    old = current_mask(module, param).to(new.device)
    if bool((new | ~old).all()):
        # Nothing newly pruned: an unmasked layer stays a plain Parameter and a masked one
        # gets no no-op entry in its PruningContainer.
        return
    apply_mask(module, param, new, pattern=label)


def _prune_group(setup: Setup, plans: Sequence[LayerPlan], sparsity: float,
                 stop_early: bool) -> None:
    """Calibrate, score (or reconstruct) and mask one group of layers."""
    norms, grads, hessians = _statistics(setup, [p.target for p in plans], stop_early)
    label = str(setup.pattern)
    if hessians:
        per_row = setup.scope.name == "row"
        for plan in plans:
            target = plan.target
            rate = sparsity if plan.rate is None else plan.rate
            weight, keep = setup.criterion.reconstruct(  # type: ignore[attr-defined]
                effective_weight(target.module, target.param), hessians[target.qualname],
                current_mask(target.module, target.param), setup.pattern, rate, per_row)
            with torch.no_grad():
                trainable(target.module, target.param).copy_(weight)
            _apply(plan, keep, label)
        return
    scores = _scores(setup, plans, norms, grads)
    new_masks = setup.scope.masks(plans, scores, setup.pattern, sparsity)
    for plan, new in zip(plans, new_masks, strict=True):
        _apply(plan, new, label)


def run_round(setup: Setup, sparsity: float, progress: float, step: int | None) -> PruneReport:
    plans = setup.plans(sparsity, progress)
    active, skipped = setup.split(plans)
    if setup.sequential and active:
        order = stages(setup.model, [p.target for p in active], setup.calibration or ())
        groups = [[active[i] for i in group] for group in order.groups]
        bar = tqdm(groups, desc=f"{setup.criterion_name} layer by layer", unit="stage",
                   disable=None, leave=False)
        for group in bar:
            bar.set_postfix_str(group[0].target.name, refresh=False)
            _prune_group(setup, group, sparsity, order.stop_early)
    else:
        _prune_group(setup, active, sparsity, False)
    layers = []
    for i, plan in enumerate(plans):
        target = plan.target
        kept = current_mask(target.module, target.param)
        rate = 0.0 if i in skipped else (sparsity if plan.rate is None else plan.rate)
        reason = skipped.get(i, plan.reason)
        # So that convert can tell a layer kept below its threshold by protection from one the
        # global ranking left dense.
        record_plan(target.module, target.param, rate, reason)
        layers.append(LayerReport(
            name=target.name,
            param=target.param,
            type=type(target.module).__name__,
            shape=tuple(kept.shape),
            numel=kept.numel(),
            target=rate,
            pruned=int((~kept).sum()),
            reason=reason,
        ))
    dead = [f"{r.name}.{r.param}" for r in layers if r.numel and r.pruned == r.numel]
    if dead:
        # Global magnitude pruning can empty a whole layer (layer collapse); the model then
        # outputs a constant. Legal, but almost never intended.
        warnings.warn(f"fully pruned, so the network is cut there: {', '.join(dead)}. Lower the "
                      "sparsity, use scope='layer', or give them layer_sparsity",
                      stacklevel=3)
    return PruneReport(sparsity=sparsity, pattern=str(setup.pattern),
                       criterion=setup.criterion_name, scope=setup.scope.name, step=step,
                       layers=tuple(layers), ignored=setup.ignored)


