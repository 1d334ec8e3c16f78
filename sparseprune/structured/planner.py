"""Decide the width of every group under a budget, before cutting anything.

``plan(model, example_inputs, amount=0.5)`` traces the model, scores every unit, and picks how many
units each group keeps so that the budget holds: a fraction of channels removed (``amount``), or
a MAC / parameter / latency budget. Every group keeps a floor (``min_ratio`` of its width and at
least ``min_channels``) and widths round to multiples of ``round_to`` (to the nearest, then units
are added back greedily while the budget still holds; by default wide groups round to 16).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .budget import CostModel
from .calibrate import _calibrate
from .graph import GROUPED, DependencyGraph, Group, trace
from .importance import Importance
from .latency import LatencyModel, WallClock
from .search import (
    _floor_keep,
    _group_states,
    _search,
    _search_amounts,
    _target,
)
from .surgery import removed_norm_inputs
from .width_attrs import unproven_widths
from .zeros import nonzero_reason

__all__ = ["Plan", "PlanConfig", "plan"]


@dataclass(frozen=True)
class PlanConfig:
    """What to prune and how; exactly one of ``amount``, ``macs``, ``params``, ``latency``
    (``amounts`` alone means ``amount=0`` for the groups no glob matches).

    Attributes:
        amount: fraction of prunable channels to remove, in [0, 1).
        macs: MAC budget: a fraction of the model's MACs (<= 1) or an absolute count (> 1).
        params: parameter budget: a fraction (<= 1) or an absolute count (> 1).
        latency: measured latency budget as a fraction of the unpruned model's, in (0, 1].
        importance: a name in ``IMPORTANCE`` ("l1", "l2", "bn", "taylor", "random") or a callable
            ``(graph, group) -> scores``.
        scope: "local" (every group loses the same fraction) or "global" (units compete across
            groups by importance normalised per group).
        round_to: widths become multiples of this (1 disables rounding); "auto" (default):
            groups at least ``AUTO_ROUND_MIN_WIDTH`` (256) channels wide round to multiples of
            ``AUTO_ROUND`` (16; a group whose unit, e.g. a head, does not divide 16 is not
            rounded, nor is a width at its floor), narrower ones are not rounded -- dense GEMMs
            fall off a cliff at some unaligned widths (a 636 -> 2546 Linear runs as slow as
            the full 768 -> 3072 one on Zen 4, 636 -> 2544 at 0.70 of it) while 16 channels
            cost a wide group at most 1/16 of its width, and narrow layers keep the cut
            Torch-Pruning makes.
            Under ``amount=`` widths are picked as with 1 and the wide ones then drop to a
            multiple of 16 (a MAC cut at least round_to=1's).
        min_channels: no group keeps fewer channels than this.
        min_ratio: no group keeps less than this fraction of its width.
        protect_output: never change the model's output shape.
        leaf_modules: module types not traced into (their channels are kept).
        layer_norm: "prune" (default: LayerNorm widths shrink with their group, so residual
            streams of ConvNeXt-style or transformer blocks can too; exact, the shrunk norms
            become ``PrunedLayerNorm``s whose statistics still count the removed channels,
            which are zero -- a norm whose removed channels are not zero in the masked model
            keeps its width, named in the plan) or "keep" (LayerNorm widths stay). RMSNorm
            widths always shrink, exactly.
        fold_bn: ``apply()`` folds BatchNorm into the convs (``fold_batchnorm``; inference
            only); a latency budget is then measured folded against the folded unpruned model.
        calibrate: latency budgets only: rounds of measuring the pruned model against the
            unpruned one (interleaved runs on the example input) and re-planning with the
            table's target scaled by the miss; 0 trusts the table's prediction.
        tolerance: latency budgets only: a measured ratio within this relative distance of
            the budget ends calibration (0.03: 50 % means 48.5-51.5 %).
        ignore: ``fnmatch`` globs of module names (as in ``model.named_modules()``) whose
            output channels are never pruned: the coupled group they belong to is kept whole
            under any budget (``amount`` is then the fraction of the other groups' channels). A
            glob that matches no module with prunable outputs is an error.
        amounts: ``{glob: amount}``: the groups that the matched modules' outputs belong to
            lose this fraction of their channels instead of ``amount`` (the first matching glob
            wins per module; a group coupling modules with different amounts takes the
            smallest). The groups of each amount are planned like ``amount`` plans all groups
            (same floors, rounding and scope, within them). Only with ``amount=`` (or alone).
        grouped: grouped convs (1 < groups < in_channels, not depthwise): "channels" (the same
            positions leave every group; the group count stays) or "groups" (whole groups
            leave: ``groups``, the in/out channels and the next layers shrink). Both exact.
    """

    amount: float | None = None
    macs: float | None = None
    params: float | None = None
    latency: float | None = None
    importance: str | Importance = "l2"
    scope: str = "local"
    round_to: int | str = "auto"
    min_channels: int = 1
    min_ratio: float = 1 / 8
    protect_output: bool = True
    leaf_modules: tuple[type, ...] = ()
    layer_norm: str = "prune"
    fold_bn: bool = False
    calibrate: int = 8
    tolerance: float = 0.03
    ignore: tuple[str, ...] = ()
    amounts: dict[str, float] | None = None
    grouped: str = "channels"

    def __post_init__(self) -> None:
        given = {k: getattr(self, k) for k in ("amount", "macs", "params", "latency")
                 if getattr(self, k) is not None}
        self._check_globs(given)
        if not given and self.amounts:
            object.__setattr__(self, "amount", 0.0)  # frozen: set once, before use
            given = {"amount": 0.0}
        if len(given) != 1:
            raise ValueError(
                "give exactly one budget: amount=, macs=, params= or latency=; got "
                f"{given or 'none'}"
            )
        if self.amount is not None and not 0 <= self.amount < 1:
            raise ValueError(f"amount must be in [0, 1) (fraction of channels removed); got "
                             f"{self.amount}")
        for k in ("macs", "params"):
            v = getattr(self, k)
            if v is not None and v <= 0:
                raise ValueError(f"{k} budget must be > 0; got {v}")
        if self.latency is not None and not 0 < self.latency <= 1:
            raise ValueError(f"latency must be a fraction of the current latency in (0, 1]; got "
                             f"{self.latency}")
        if self.calibrate < 0 or not 0 < self.tolerance < 1:
            raise ValueError(f"need calibrate >= 0 and 0 < tolerance < 1; got calibrate="
                             f"{self.calibrate}, tolerance={self.tolerance}")
        if self.grouped not in GROUPED:
            raise ValueError(f"grouped must be one of {GROUPED}; got {self.grouped!r}")
        if self.layer_norm not in ("keep", "prune"):
            raise ValueError(f"layer_norm must be 'keep' or 'prune'; got {self.layer_norm!r}")
        if self.scope not in ("local", "global"):
            raise ValueError(f"scope must be 'local' or 'global'; got {self.scope!r}")
        if self.round_to != "auto":
            if not isinstance(self.round_to, numbers.Integral) or isinstance(self.round_to, bool):
                raise ValueError(f"round_to must be a positive int or 'auto'; got "
                                 f"{self.round_to!r}")
            object.__setattr__(self, "round_to", int(self.round_to))  # a frozen dataclass
        if (self.round_to != "auto" and self.round_to < 1) or self.min_channels < 1 or not (
                0 < self.min_ratio <= 1):
            raise ValueError(
                f"need round_to >= 1 (or 'auto'), min_channels >= 1 and 0 < min_ratio <= 1; got "
                f"round_to={self.round_to}, min_channels={self.min_channels}, "
                f"min_ratio={self.min_ratio}"
            )

    def _check_globs(self, budgets: dict) -> None:
        """Normalise ``ignore`` to a tuple of str and check ``amounts`` (the globs are matched
        against the model in ``plan``)."""
        ignore = (self.ignore,) if isinstance(self.ignore, str) else self.ignore
        try:
            ignore = tuple(ignore)
        except TypeError:
            raise ValueError(f"ignore must be a tuple of module-name globs; got "
                             f"{self.ignore!r}") from None
        bad = [g for g in ignore if not isinstance(g, str) or not g]
        if bad:
            raise ValueError(f"ignore must hold module-name globs (non-empty str); got {bad!r}")
        object.__setattr__(self, "ignore", ignore)  # frozen: normalised once, before use
        if self.amounts is None:
            return
        if not isinstance(self.amounts, dict):
            raise ValueError(f"amounts must be a dict {{module glob: amount}}; got "
                             f"{self.amounts!r}")
        object.__setattr__(self, "amounts", dict(self.amounts))  # the caller's dict may change
        for glob, v in self.amounts.items():
            if not isinstance(glob, str) or not glob:
                raise ValueError(f"amounts keys must be module-name globs (non-empty str); got "
                                 f"{glob!r}")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
                raise ValueError(f"amounts[{glob!r}] must be in [0, 1) (fraction of channels "
                                 f"removed); got {v!r}")
        other = sorted(k for k in budgets if k != "amount")
        if self.amounts and other:
            raise ValueError(
                f"amounts= sets channel fractions per group and cannot be combined with a "
                f"{other[0]}= budget (which decides every group's width itself); use amount= "
                f"with amounts=, or ignore= to keep groups whole under a {other[0]} budget"
            )

    @property
    def metric(self) -> str:
        if self.amount is not None:
            return "channels"
        return next(k for k in ("macs", "params", "latency") if getattr(self, k) is not None)


@dataclass
class Plan:
    """Widths chosen for every group; ``apply()`` builds the smaller model."""

    graph: DependencyGraph
    config: PlanConfig
    keep: np.ndarray  # bool [n_units + 1], last entry always True
    costs: CostModel
    target: float
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    latency_table: object | None = None
    # latency budgets: {"ratio": measured pruned/unpruned, "rounds": [(predicted, measured)]}
    measured: dict = field(default_factory=dict)
    # group index -> why its width follows other rules ("ignored: conv1", "amount=0.3 ...")
    notes: dict[int, str] = field(default_factory=dict)

    # ---- queries ------------------------------------------------------------------------------

    def keep_of(self, atoms: np.ndarray) -> np.ndarray:
        """Whether each atom's channel survives, bool, same shape as ``atoms``."""
        return self.keep[self.costs.index(atoms)]

    def kept_units(self, group: Group) -> int:
        off = self.costs.offsets[group.index]
        return int(self.keep[off : off + len(group)].sum())

    def widths(self) -> list[tuple[str, int, int]]:
        """``(group name, channels before, channels after)`` per group."""
        return [
            (g.name, len(g) * g.unit_channels, self.kept_units(g) * g.unit_channels)
            for g in self.graph.groups
        ]

    @property
    def unprunable(self):
        return self.graph.unprunable

    def __str__(self) -> str:
        c = self.config
        if c.amount is not None:
            budget = f"channels amount={c.amount}"
            if c.amounts:
                budget += f", amounts={c.amounts}"
        elif c.latency is not None:
            budget = f"latency <= {c.latency:.1%} of the unpruned model"
        else:
            budget = f"{c.metric} <= {self.target:.4g}"
        lines = [f"Structured pruning plan ({budget}, importance={_name(c.importance)}, "
                 f"scope={c.scope}, round_to={c.round_to}, floor=max({c.min_ratio:.3g}*width, "
                 f"{c.min_channels}))"]
        if c.ignore or c.grouped != "channels":
            extra = [f"ignore={c.ignore}"] if c.ignore else []
            extra += [f"grouped={c.grouped!r}"] if c.grouped != "channels" else []
            lines[0] = lines[0][:-1] + ", " + ", ".join(extra) + ")"
        for k in self.before:
            b, a = self.before[k], self.after[k]
            if k == "latency_s":
                lines.append(f"  latency  {b * 1e3:>11.2f} ms -> {a * 1e3:>11.2f} ms  "
                             f"({a / b:6.1%}, predicted by the table)")
                continue
            lines.append(f"  {k:<9} {b:>14,.0f} -> {a:>14,.0f}  ({a / b:6.1%})" if b else
                         f"  {k}: 0")
        lines.append(f"  {'group':<48} {'before':>7} {'after':>7}")
        for i, (name, b, a) in enumerate(self.widths()):
            note = f"  ({self.notes[i]})" if i in self.notes else ""
            lines.append(f"  {name[:48]:<48} {b:>7} {a:>7}{note}")
        if self.measured:
            rounds = ", ".join(f"{m:.1%}" for _, m in self.measured["rounds"])
            lines.insert(1, f"  latency measured: {self.measured['ratio']:.1%} of the unpruned "
                            f"model (budget {c.latency:.1%}; rounds: {rounds})")
        shrunk = [n for n, a in self.graph.norms.items() if not self.keep_of(a).all()
                  and isinstance(self.graph.model.get_submodule(n), nn.LayerNorm)]
        if shrunk:
            names = ", ".join(shrunk[:4]) + (f", ... ({len(shrunk)} in all)" if len(shrunk) > 4
                                             else "")
            lines.append(f"  LayerNorms that shrink (exact: PrunedLayerNorm, statistics over "
                         f"the full width): {names}")
        if self.graph.unprunable:
            lines.append("  kept (cannot prove safe to prune):")
            lines += [f"    {u}" for u in self.graph.unprunable]
        return "\n".join(lines)

    __repr__ = __str__

    # ---- actions ------------------------------------------------------------------------------

    def apply(
        self, *, inplace: bool = False, channels_last: bool = False, fold_bn: bool | None = None
    ) -> nn.Module:
        """The pruned model: a plain module with smaller tensors (see ``surgery.apply_plan``).

        ``fold_bn`` defaults to the plan's ``config.fold_bn``.
        """
        from .surgery import apply_plan

        fold = self.config.fold_bn if fold_bn is None else fold_bn
        return apply_plan(self, inplace=inplace, channels_last=channels_last, fold_bn=fold)

    def masked_model(self) -> nn.Module:
        """A copy of the original with every removed channel's slices zeroed (same shapes)."""
        from .surgery import masked_model

        return masked_model(self)


def _name(imp) -> str:
    return imp if isinstance(imp, str) else type(imp).__name__


def plan(
    model: nn.Module,
    example_inputs: tuple | torch.Tensor,
    *,
    config: PlanConfig | None = None,
    graph: DependencyGraph | None = None,
    timer: WallClock | None = None,
    progress: bool = True,
    **kwargs,
) -> Plan:
    """Plan structured pruning of ``model``.

    Args:
        model: the model (not modified).
        example_inputs: a tensor or tuple of inputs, e.g. ``[1, 3, 224, 224]`` float32.
        config: a ``PlanConfig``; or pass its fields as keyword arguments
            (``amount=0.5, importance="l2", round_to=8, ...``).
        graph: a dependency graph already traced from this model (reused; traced again only
            when a width attribute or a norm fails the final checks and must be kept).
        timer: latency budgets: how time is measured (default ``WallClock()``).
        progress: latency budgets: progress bars while the table is measured and calibrated.

    Returns:
        A ``Plan``; ``print(plan)`` shows widths and unprunable ops, ``plan.apply()`` prunes.

    Raises:
        ValueError: a bad budget, or one the floors make unreachable; an ``ignore`` or
            ``amounts`` glob that matches no module with prunable output channels.
        StructuredTraceError: the model cannot be traced by ``torch.fx``.
    """
    if config is None:
        config = PlanConfig(**kwargs)
    elif kwargs:
        raise ValueError(f"pass either config= or keyword options, not both: {sorted(kwargs)}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    fixed_norms = dict(graph.fixed_norms) if graph is not None else {}
    fixed_widths = dict(graph.fixed_widths) if graph is not None else {}
    while True:
        result = _plan_once(model, example_inputs, config, graph, timer, progress)
        # Checks that need the planned widths; a failure keeps that width and plans again (the
        # graph is traced again, so a given ``graph`` is not reused then).
        bad_widths = unproven_widths(result)
        fixed_widths.update(bad_widths)
        # A norm whose removed channels are not zero in the masked model (a sigmoid, an added
        # constant on the way) would not stay exact: keep its width. Proven on the graph for
        # any input (zeros.py), then checked on the example input.
        bad_norms: dict[str, str] = {}
        if not bad_widths:
            for name, atoms in result.graph.norms.items():
                if not result.keep_of(atoms).all():
                    why = nonzero_reason(result.graph, name, atoms[~result.keep_of(atoms)])
                    if why is not None:
                        bad_norms[name] = (f"its removed channels may reach it non-zero (at "
                                           f"{why}), so its statistics would change")
        if not bad_widths and not bad_norms:
            for name, worst in removed_norm_inputs(result).items():
                bad_norms[name] = (f"its removed channels reach it non-zero in the masked "
                                   f"model (max |x| = {worst:.3g}), so its statistics would "
                                   "change")
        fixed_norms.update(bad_norms)
        if not bad_widths and not bad_norms:
            return result
        graph = _trace(model, example_inputs, config, fixed_norms, fixed_widths)


def _trace(model: nn.Module, example_inputs: tuple, config: PlanConfig,
           fixed_norms: dict | None = None, fixed_widths: dict | None = None) -> DependencyGraph:
    return trace(model, example_inputs, protect_output=config.protect_output,
                 leaf_modules=config.leaf_modules, layer_norm=config.layer_norm,
                 grouped=config.grouped, fixed_norms=fixed_norms, fixed_widths=fixed_widths)


def _plan_once(model: nn.Module, example_inputs: tuple, config: PlanConfig,
               graph: DependencyGraph | None, timer: WallClock | None, progress: bool) -> Plan:
    if graph is None:
        graph = _trace(model, example_inputs, config)
    elif graph.grouped != config.grouped:
        raise ValueError(f"the graph was traced with grouped={graph.grouped!r} but the config "
                         f"asks for grouped={config.grouped!r}; trace again or pass no graph")
    costs = CostModel(graph)
    table = None
    if config.metric == "latency":
        timer = timer or WallClock()
        table = LatencyModel(graph, costs, timer, progress, fold_bn=config.fold_bn,
                             leaf_modules=config.leaf_modules)
        cost = table.latency
    else:
        cost = costs.metric(config.metric)
    full = costs.full()
    base = cost(full)
    target = _target(config, base)
    states = _group_states(graph, config)
    try:
        if config.metric == "channels":
            keep, target = _search_amounts(states, costs, cost, config)
        else:
            keep = _search(states, costs, cost, target, config)
    except ValueError:
        if table is None or not config.calibrate:
            raise
        # The table overestimates small models (widths below 1/4 are clamped); the smallest
        # plan is measured before the budget is called unreachable.
        keep = _floor_keep(states, costs)
        target = cost(keep)
    result = Plan(graph=graph, config=config, keep=keep, costs=costs, target=target,
                  latency_table=table,
                  notes={s.group.index: s.note for s in states if s.note})
    for k in ("channels", "params", "macs"):
        result.before[k] = costs.metric(k)(full)
        result.after[k] = costs.metric(k)(keep)
    if table is not None:
        result.before["latency_s"] = base
        if config.calibrate:
            _calibrate(result, states, cost, timer, progress)
        result.after["latency_s"] = cost(result.keep)
        for k in ("channels", "params", "macs"):
            result.after[k] = costs.metric(k)(result.keep)
    return result
