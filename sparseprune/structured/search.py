"""How many units each group keeps: the floors, rounding and per-group amounts of a
``PlanConfig``, and the search for the widths that meet a budget under a cost function
(channels, MACs, parameters or predicted latency). Used by ``planner.plan`` and the latency
calibration (``calibrate.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import numpy as np

from .budget import CostModel
from .graph import DependencyGraph, Group
from .importance import get_importance

if TYPE_CHECKING:
    from .planner import PlanConfig


@dataclass
class _GroupState:
    group: Group
    order: np.ndarray  # unit indices, most important first
    scores: np.ndarray  # importance normalised by the group mean
    step: int  # rounding unit, in units
    floor: int  # fewest units kept
    align: int = 1  # amount= budgets with round_to="auto": widths drop to a multiple of this
    ignored: bool = False  # a producer matches ``ignore``: kept whole (floor = all units)
    amount: float | None = None  # amount= budgets: this group's amount
    note: str = ""  # why the group's width follows other rules than the config's (printed)


# round_to="auto": groups this wide (channels) round to multiples of AUTO_ROUND channels (an
# amount= budget picks widths as round_to=1 does, then drops them to such a multiple: a MAC cut
# at least round_to=1's, the cut Torch-Pruning makes)
AUTO_ROUND = 16
AUTO_ROUND_MIN_WIDTH = 256


def _step(g: Group, round_to: int | str) -> int:
    """Rounding unit of group ``g`` in units (a unit is ``g.unit_channels`` channels)."""
    u = g.unit_channels
    if round_to == "auto":
        round_to = AUTO_ROUND if len(g) * u >= AUTO_ROUND_MIN_WIDTH else 1
    return max(1, round_to // u) if round_to % u == 0 else 1


def _target(config: PlanConfig, base: float) -> float:
    if config.amount is not None:
        return base * (1 - config.amount)
    v = getattr(config, config.metric)
    return base * v if v <= 1 else float(v)


def _match(graph: DependencyGraph, config: PlanConfig) -> None:
    """Check that every glob of ``ignore`` and ``amounts`` matches a module with prunable
    output channels (a producer of some group)."""
    prunable = list(dict.fromkeys(p for g in graph.groups for p in g.producers))
    globs = [("ignore", g) for g in config.ignore] + [
        ("amounts", g) for g in (config.amounts or {})]
    for what, glob in globs:
        if any(fnmatchcase(p, glob) for p in prunable):
            continue
        others = [n for n, _ in graph.model.named_modules() if n and fnmatchcase(n, glob)]
        hint = (f" (it matches {', '.join(others[:3])}, whose output channels are kept "
                "anyway)" if others else "")
        names = ", ".join(prunable[:6]) + (", ..." if len(prunable) > 6 else "")
        raise ValueError(
            f"{what} glob {glob!r} matches no module with prunable output channels{hint}; "
            f"prunable: {names or 'none'} ({len(prunable)} in all)"
        )


def _group_amount(g: Group, config: PlanConfig) -> tuple[bool, float | None, str]:
    """``(ignored, amount, note)`` of group ``g``: ignored when a producer matches ``ignore``;
    the note says why the group is not planned like the others."""
    for p in g.producers:
        if any(fnmatchcase(p, glob) for glob in config.ignore):
            return True, None, f"ignored: {p}"
    hits: dict[str, float] = {}
    for p in g.producers:
        glob = next((k for k in config.amounts or {} if fnmatchcase(p, k)), None)
        if glob is not None:
            hits[glob] = float(config.amounts[glob])
    if not hits:
        return False, config.amount, ""
    amount = min(hits.values())
    if len(set(hits.values())) == 1:
        return False, amount, f"amount={amount:g} from {', '.join(map(repr, hits))}"
    each = ", ".join(f"{k!r}={v:g}" for k, v in hits.items())
    return False, amount, f"amount={amount:g}, the smallest of the coupled modules' {each}"


def _group_states(graph: DependencyGraph, config: PlanConfig) -> list[_GroupState]:
    imp = get_importance(config.importance)
    _match(graph, config)
    states = []
    for g in graph.groups:
        n = len(g)
        scores = np.asarray(imp(graph, g), dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"importance returned shape {scores.shape} for group {g.name} of "
                             f"{n} units")
        mean = scores.mean()
        norm = scores / mean if mean > 0 else np.zeros(n)
        step, align = _step(g, config.round_to), 1
        if config.round_to == "auto" and config.metric == "channels":
            step, align = 1, step  # amount=: chosen like round_to=1, then aligned down
        u = g.unit_channels
        floor = max(math.ceil(n * config.min_ratio), math.ceil(config.min_channels / u))
        # An int round_to rounds the floor up to its step; "auto" leaves it (a group at its
        # floor stays unaligned rather than keep up to 15 more channels than the floor asks).
        floor = min(n, floor if config.round_to == "auto" else -(-floor // step) * step)
        ignored, amount, note = _group_amount(g, config)
        if ignored:
            floor = n  # kept whole, whatever the budget
        states.append(_GroupState(g, np.argsort(-norm, kind="stable"), norm, step, floor,
                                  align, ignored, amount, note))
    return states


def _counts(states: list[_GroupState], p: float, scope: str, threshold: float) -> list[int]:
    counts = []
    for s in states:
        n = len(s.group)
        if scope == "local":
            k = n - p * n
        else:
            k = float((s.scores > threshold).sum())
        k = round(k / s.step) * s.step
        counts.append(int(min(n, max(s.floor, k))))
    return counts


def _keep_from_counts(states, counts, costs: CostModel) -> np.ndarray:
    """Keep vector with the ``counts[i]`` best units of ``states[i]`` (groups not in
    ``states``: none kept)."""
    keep = np.zeros(costs.n_units + 1, dtype=bool)
    keep[-1] = True
    for s, k in zip(states, counts, strict=True):
        keep[costs.offsets[s.group.index] + s.order[:k]] = True
    return keep


def _floor_keep(states, costs: CostModel) -> np.ndarray:
    """The smallest plan: every group at its floor."""
    return _keep_from_counts(states, [s.floor for s in states], costs)


def _search_amounts(states, costs: CostModel, cost, config: PlanConfig
                    ) -> tuple[np.ndarray, float]:
    """``amount`` budgets: the groups of each amount are searched on their own, for that
    fraction of their channels (ignored groups are kept whole). Without ``ignore`` and
    ``amounts`` this is one search over all groups, for ``amount`` of all channels.
    Returns the keep vector and the channel target."""
    keep = _keep_from_counts([], [], costs)
    target = 0.0
    by_amount: dict[float | None, list[_GroupState]] = {}
    for s in states:
        by_amount.setdefault(None if s.ignored else s.amount, []).append(s)
    for amount, part in by_amount.items():
        full = _keep_from_counts(part, [len(s.group) for s in part], costs)
        if amount is None or amount == 0:
            keep |= full
            target += cost(full)
            continue
        t = cost(full) * (1 - amount)
        try:
            keep |= _search(part, costs, cost, t, config)
        except ValueError as err:
            if len(by_amount) == 1:
                raise
            names = ", ".join(s.group.name for s in part[:3]) + (", ..." if len(part) > 3
                                                                  else "")
            raise ValueError(f"groups with amount={amount:g} ({names}): {err}") from None
        target += t
    return _align_down(states, keep, costs), target


def _align_down(states, keep: np.ndarray, costs: CostModel) -> np.ndarray:
    """Each group with ``align > 1`` that is not kept whole drops to the multiple of ``align``
    at or below its width (never below its floor): more is removed than the amount asks, at
    most ``align - 1`` units a group, and every width stays at or under round_to=1's."""
    counts = []
    for s in states:
        n = len(s.group)
        k = int(keep[costs.offsets[s.group.index] + np.arange(n)].sum())
        if s.align > 1 and k < n:
            k = max(s.floor, k // s.align * s.align)
        counts.append(k)
    return _keep_from_counts(states, counts, costs)


def _search(states, costs: CostModel, cost, target: float, config: PlanConfig) -> np.ndarray:
    all_scores = np.sort(np.concatenate([s.scores for s in states])) if states else np.zeros(0)

    def keep_at(p: float) -> tuple[np.ndarray, list[int]]:
        thr = -np.inf
        if config.scope == "global" and all_scores.size:
            thr = all_scores[min(int(p * all_scores.size), all_scores.size - 1)] if p > 0 else -1
        counts = _counts(states, p, config.scope, thr)
        return _keep_from_counts(states, counts, costs), counts

    keep, counts = keep_at(0.0)
    if cost(keep) <= target * (1 + 1e-9):
        return keep
    low_keep, low_counts = keep_at(1.0)
    if cost(low_keep) > target * (1 + 1e-9):
        base = cost(costs.full())
        raise ValueError(
            f"{config.metric} budget {target:.4g} ({target / base:.1%} of the unpruned model) is "
            f"unreachable: with the floors (min_ratio={config.min_ratio}, min_channels="
            f"{config.min_channels}), round_to={config.round_to!r} and the unprunable ops the "
            "smallest model costs "
            f"{cost(low_keep):.4g} ({cost(low_keep) / base:.1%}); lower the floors or raise the "
            "budget"
        )
    lo, hi = 0.0, 1.0  # cost(lo) > target >= cost(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(keep_at(mid)[0]) <= target:
            hi = mid
        else:
            lo = mid
    keep, counts = keep_at(hi)
    return _rebalance(states, counts, costs, cost, target)


def _rebalance(states, counts: list[int], costs: CostModel, cost, target: float) -> np.ndarray:
    """Add back one rounding step at a time, most important first, while the budget holds."""
    counts = list(counts)
    for _ in range(10 * len(states) + 10):
        best = None
        for i, s in enumerate(states):
            k = counts[i]
            n = len(s.group)
            if k >= n:
                continue
            nxt = min(n, (k // s.step + 1) * s.step)  # the next multiple (k may be a floor)
            gain = float(s.scores[s.order[k:nxt]].mean())
            if gain <= 0:  # zero-importance units (dead, or removed in an earlier round)
                continue
            trial = counts[:i] + [nxt] + counts[i + 1 :]
            if cost(_keep_from_counts(states, trial, costs)) <= target and (
                best is None or gain > best[0]
            ):
                best = (gain, i, nxt)
        if best is None:
            break
        counts[best[1]] = best[2]
    return _keep_from_counts(states, counts, costs)
