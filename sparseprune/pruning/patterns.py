"""Patterns: turn a score tensor into a keep-mask at a sparsity.

A pattern sees scores shaped like the weight (higher = more important; ``-inf`` marks weights
already pruned, which are therefore pruned first) and returns a bool mask of the same shape,
``True`` = keep. Every pattern works on the 2-D view ``[O, K]`` of the weight: ``O`` = dim 0 (output
features / channels), ``K`` = everything else flattened in memory order, i.e. ``in_features`` for
``nn.Linear`` and ``C/groups * kh * kw`` for ``nn.Conv2d``. A 1-D tensor is viewed as ``[1, n]``.

Counts are exact: a pattern prunes ``round(sparsity * units)`` of its units (elements, blocks or
channels), ties broken by a stable sort, so among equal scores the lower flat index goes first.

N:M and r x c blocks share one core (:func:`_grouped` / :func:`_ungrouped`): N:M is a 1 x M grouping
with the top N kept in each group; a block is an r x c grouping scored by the sum of its scores
(``magnitude`` / ``l1`` scores give the block's L1 norm, ``l2`` scores its squared L2 norm).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_rate, prune_count, unknown_name

__all__ = [
    "PATTERNS",
    "Block",
    "Channel",
    "NM",
    "OnIndivisible",
    "Pattern",
    "Unstructured",
    "lowest",
    "parse_pattern",
]

OnIndivisible = Literal["error", "pad", "skip"]
_ON_INDIVISIBLE = ("error", "pad", "skip")
_NEG_INF = float("-inf")


@runtime_checkable
class Pattern(Protocol):
    """What :func:`sparseprune.prune` needs from a pattern.

    Patterns that can rank units across layers (global scope) also provide
    ``units(scores) -> Tensor`` (one score per unit, 1-D) and ``expand(keep, shape) -> Tensor``.
    """

    default_scope: ClassVar[str]

    def mask(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        """Bool keep-mask shaped like ``scores``."""
        ...

    def check(self, shape: torch.Size | tuple[int, ...]) -> str | None:
        """Why this pattern does not fit ``shape`` exactly, or None if it does."""
        ...

    @property
    def fixed_sparsity(self) -> float | None:
        """The only sparsity the pattern produces (N:M), or None if any sparsity works."""
        ...


def lowest(scores: Tensor, k: int) -> Tensor:
    """Flat indices of the ``k`` lowest entries of a 1-D ``scores``, ties to the lower index.

    Args:
        scores: [n] float, no NaN.
        k: how many, 0 <= k <= n.

    Returns:
        [k] int64 indices.
    """
    # A stable sort (not topk) so ties are broken the same way on every run and every machine.
    return torch.sort(scores, stable=True).indices[:k]


def _view2d(t: Tensor) -> Tensor:
    if t.dim() == 0:
        raise ValueError("cannot prune a 0-d tensor (a scalar parameter)")
    return t.reshape(1, -1) if t.dim() == 1 else t.reshape(t.shape[0], -1)


def _shape2d(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    shape = tuple(shape)
    if len(shape) == 0:
        raise ValueError("cannot prune a 0-d tensor (a scalar parameter)")
    if len(shape) == 1:
        return 1, shape[0]
    return shape[0], math.prod(shape[1:])


def _check_nan(scores: Tensor) -> None:
    if torch.isnan(scores).any():
        raise ValueError(f"scores of shape {tuple(scores.shape)} contain NaN")


def _sum_finite(x: Tensor, dim: int) -> Tensor:
    """Sum over ``dim`` counting already-pruned (-inf) entries as 0; all -inf stays -inf.

    A block or channel that is only partly pruned (e.g. by an earlier unstructured mask) is scored
    by what survives instead of being condemned by its first zero.
    """
    pruned = x == _NEG_INF
    total = x.masked_fill(pruned, 0.0).sum(dim)
    return total.masked_fill(pruned.all(dim), _NEG_INF)


def _grouped(scores2d: Tensor, r: int, c: int) -> Tensor:
    """[O, K] -> [ceil(O/r), ceil(K/c), r*c]: the r x c tiles, padded with -inf if needed."""
    rows, cols = scores2d.shape
    pad_r, pad_c = (-rows) % r, (-cols) % c
    if pad_r or pad_c:
        # -inf padding: a padded slot is never preferred over a real weight.
        scores2d = F.pad(scores2d, (0, pad_c, 0, pad_r), value=_NEG_INF)
    nr, nc = (rows + pad_r) // r, (cols + pad_c) // c
    return scores2d.reshape(nr, r, nc, c).permute(0, 2, 1, 3).reshape(nr, nc, r * c)


def _ungrouped(groups: Tensor, r: int, c: int, rows: int, cols: int) -> Tensor:
    """Inverse of :func:`_grouped`, cropping the padding: -> [rows, cols]."""
    nr, nc, _ = groups.shape
    full = groups.reshape(nr, nc, r, c).permute(0, 2, 1, 3).reshape(nr * r, nc * c)
    return full[:rows, :cols]


def _tile_problem(shape: torch.Size | tuple[int, ...], r: int, c: int, what: str) -> str | None:
    rows, cols = _shape2d(shape)
    bad = []
    if rows % r:
        bad.append(f"output dim {rows} is not divisible by {r}")
    if cols % c:
        bad.append(f"input dim {cols} (the flattened [O, K] view's K) is not divisible by {c}")
    if not bad:
        return None
    return f"{what} does not tile shape {tuple(shape)}: " + "; ".join(bad)


def _check_policy(value: str) -> None:
    if value not in _ON_INDIVISIBLE:
        raise unknown_name("on_indivisible policy", value, _ON_INDIVISIBLE)


def _by_units(pattern: Unstructured | Block | Channel, scores: Tensor, sparsity: float) -> Tensor:
    units = pattern.units(scores)
    keep = torch.ones(units.numel(), dtype=torch.bool, device=scores.device)
    keep[lowest(units, prune_count(units.numel(), sparsity))] = False
    return pattern.expand(keep, scores.shape)


@dataclass(frozen=True)
class Unstructured:
    """Prune individual weights: the ``round(sparsity * numel)`` lowest scores."""

    default_scope: ClassVar[str] = "global"

    @property
    def fixed_sparsity(self) -> float | None:
        return None

    def check(self, shape: torch.Size | tuple[int, ...]) -> str | None:
        return None

    def units(self, scores: Tensor) -> Tensor:
        """One unit per element: [numel] scores."""
        _check_nan(scores)
        return scores.reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """[numel] bool -> bool mask of ``shape``."""
        return keep.reshape(shape)

    def mask(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        """Keep-mask pruning ``round(sparsity * scores.numel())`` elements.

        Args:
            scores: any shape, float, no NaN; ``-inf`` = already pruned.
            sparsity: fraction in [0, 1) to prune.

        Returns:
            bool tensor shaped like ``scores``.
        """
        if sparsity is None:
            raise ValueError("the unstructured pattern needs a sparsity")
        return _by_units(self, scores, check_rate(sparsity))

    def __str__(self) -> str:
        return "unstructured"


@dataclass(frozen=True)
class NM:
    """N:M: in every group of M consecutive inputs keep exactly the N highest scores.

    Groups run along the input dimension of the ``[O, K]`` view (``in_features`` for Linear,
    ``C/groups * kh * kw`` for ConvNd), as NVIDIA's 2:4 and our N:M CPU format expect.

    Its sparsity is fixed at ``1 - N/M``. A lower sparsity is allowed for gradual schedules: it
    prunes the lowest-scored weights among those the full N:M mask would drop, so the path ends
    exactly on the N:M mask (intermediate masks are not valid N:M).

    Args:
        n: weights kept per group, 1 <= n < m.
        m: group size.
        on_indivisible: when K is not a multiple of M: ``"error"`` (default), ``"pad"`` (treat K as
            zero-padded to a multiple of M: the last, short group keeps at most N) or ``"skip"``
            (leave such a layer dense; :func:`sparseprune.prune` reports it).
    """

    n: int
    m: int
    on_indivisible: OnIndivisible = "error"
    default_scope: ClassVar[str] = "layer"

    def __post_init__(self) -> None:
        for field, value in (("n", self.n), ("m", self.m)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"N:M {field} must be an int, got {value!r}")
        if not 1 <= self.n < self.m:
            raise ValueError(f"N:M needs 1 <= N < M, got {self.n}:{self.m}")
        _check_policy(self.on_indivisible)

    @property
    def fixed_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def check(self, shape: torch.Size | tuple[int, ...]) -> str | None:
        return _tile_problem(shape, 1, self.m, f"{self.n}:{self.m}")

    def mask(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        """Keep-mask with exactly N kept in every group of M (at the default sparsity).

        Args:
            scores: weight-shaped float scores, no NaN; ``-inf`` = already pruned.
            sparsity: None or ``1 - N/M`` for the N:M mask; a smaller value for a gradual step.

        Returns:
            bool tensor shaped like ``scores``.
        """
        _check_nan(scores)
        fixed = self.fixed_sparsity
        sparsity = fixed if sparsity is None else check_rate(sparsity)
        if sparsity > fixed + 1e-12:
            raise ValueError(
                f"{self} keeps {self.n} of every {self.m} weights (sparsity {fixed:g}); got "
                f"sparsity={sparsity:g}. Use a sparser N:M (e.g. 1:{self.m * 2}) or "
                "pattern='unstructured'"
            )
        problem = self.check(scores.shape)
        if problem is not None and self.on_indivisible == "error":
            raise ValueError(f"{problem}; pass on_indivisible='pad' or 'skip'")
        if problem is not None and self.on_indivisible == "skip":
            return torch.ones_like(scores, dtype=torch.bool)
        s2d = _view2d(scores)
        rows, cols = s2d.shape
        groups = _grouped(s2d, 1, self.m)
        # Prune the M-N lowest of each group; stable, so ties prune the lower index first.
        drop = torch.sort(groups, dim=-1, stable=True).indices[..., : self.m - self.n]
        keep = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        nm_keep = _ungrouped(keep, 1, self.m, rows, cols).reshape(scores.shape)
        if sparsity >= fixed - 1e-12:
            return nm_keep
        # Gradual step: prune the lowest among the weights the full N:M mask would drop.
        candidates = (~nm_keep).reshape(-1).nonzero().squeeze(1)
        k = min(prune_count(scores.numel(), sparsity), candidates.numel())
        mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        mask[candidates[lowest(scores.reshape(-1)[candidates], k)]] = False
        return mask.reshape(scores.shape)

    def __str__(self) -> str:
        return f"{self.n}:{self.m}"


@dataclass(frozen=True)
class Block:
    """r x c blocks of the ``[O, K]`` view (r outputs by c inputs), pruned whole.

    A block's score is the sum of its element scores (already-pruned elements count 0), so
    ``magnitude`` scores rank blocks by L1 norm and ``l2`` scores by L2 norm. The
    ``round(sparsity * blocks)`` lowest blocks are pruned.

    Args:
        r: block rows (outputs), >= 1.
        c: block columns (inputs), >= 1.
        on_indivisible: when O or K is not a multiple of r or c: ``"error"`` (default), ``"pad"``
            (edge blocks are partial and scored by their real weights) or ``"skip"``.
    """

    r: int
    c: int
    on_indivisible: OnIndivisible = "error"
    default_scope: ClassVar[str] = "global"

    def __post_init__(self) -> None:
        for field, value in (("r", self.r), ("c", self.c)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"block {field} must be an int >= 1, got {value!r}")
        _check_policy(self.on_indivisible)

    @property
    def fixed_sparsity(self) -> float | None:
        return None

    def check(self, shape: torch.Size | tuple[int, ...]) -> str | None:
        return _tile_problem(shape, self.r, self.c, str(self))

    def _guard(self, shape: torch.Size | tuple[int, ...]) -> str | None:
        problem = self.check(shape)
        if problem is not None and self.on_indivisible == "error":
            raise ValueError(f"{problem}; pass on_indivisible='pad' or 'skip'")
        return problem

    def units(self, scores: Tensor) -> Tensor:
        """One score per block, row-major over the block grid: [ceil(O/r) * ceil(K/c)]."""
        _check_nan(scores)
        self._guard(scores.shape)
        return _sum_finite(_grouped(_view2d(scores), self.r, self.c), -1).reshape(-1)

    def expand(self, keep: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """Per-block bool [blocks] -> element mask of ``shape``."""
        rows, cols = _shape2d(shape)
        nr, nc = -(-rows // self.r), -(-cols // self.c)
        tiles = keep.reshape(nr, nc, 1).expand(nr, nc, self.r * self.c)
        return _ungrouped(tiles, self.r, self.c, rows, cols).reshape(shape)

    def mask(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        """Keep-mask made of whole r x c blocks.

        Args:
            scores: weight-shaped float scores, no NaN; ``-inf`` = already pruned.
            sparsity: fraction of blocks to prune, in [0, 1).

        Returns:
            bool tensor shaped like ``scores``.
        """
        if sparsity is None:
            raise ValueError(f"the {self} pattern needs a sparsity")
        sparsity = check_rate(sparsity)
        if self._guard(scores.shape) is not None and self.on_indivisible == "skip":
            return torch.ones_like(scores, dtype=torch.bool)
        return _by_units(self, scores, sparsity)

    def __str__(self) -> str:
        return f"block{self.r}x{self.c}"


@dataclass(frozen=True)
class Channel:
    """Whole slices along ``dim``: ``dim=0`` prunes output channels / rows (the default).

    A channel's score is the sum of its element scores (already-pruned elements count 0). The mask
    only zeroes channels; physically removing them is ``sparseprune.structured``'s job.
    """

    dim: int = 0
    default_scope: ClassVar[str] = "layer"

    def __post_init__(self) -> None:
        if isinstance(self.dim, bool) or not isinstance(self.dim, int):
            raise TypeError(f"channel dim must be an int, got {self.dim!r}")

    @property
    def fixed_sparsity(self) -> float | None:
        return None

    @property
    def removes_outputs(self) -> bool:
        """Whether whole output rows go; :class:`Protect` then keeps the classifier dense."""
        return self.dim == 0

    def check(self, shape: torch.Size | tuple[int, ...]) -> str | None:
        if not -len(shape) <= self.dim < len(shape):
            return f"channel dim {self.dim} is out of range for shape {tuple(shape)}"
        return None

    def units(self, scores: Tensor) -> Tensor:
        """One score per slice along ``dim``: [scores.shape[dim]]."""
        _check_nan(scores)
        problem = self.check(scores.shape)
        if problem is not None:
            raise ValueError(problem)
        moved = scores.movedim(self.dim, 0)
        return _sum_finite(moved.reshape(moved.shape[0], -1), 1)

    def expand(self, keep: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
        """[shape[dim]] bool -> bool mask of ``shape``."""
        view = [1] * len(shape)
        view[self.dim] = -1
        return keep.reshape(view).expand(tuple(shape)).clone()

    def mask(self, scores: Tensor, sparsity: float | None = None) -> Tensor:
        """Keep-mask pruning ``round(sparsity * shape[dim])`` whole slices.

        Args:
            scores: weight-shaped float scores, no NaN; ``-inf`` = already pruned.
            sparsity: fraction of channels to prune, in [0, 1).

        Returns:
            bool tensor shaped like ``scores``.
        """
        if sparsity is None:
            raise ValueError("the channel pattern needs a sparsity")
        return _by_units(self, scores, check_rate(sparsity))

    def __str__(self) -> str:
        return "channel" if self.dim == 0 else f"channel{self.dim}"


# Name -> class, for configs and the CLI. Strings are parsed by _SYNTAX below.
PATTERNS: dict[str, type] = {
    "unstructured": Unstructured,
    "nm": NM,
    "block": Block,
    "channel": Channel,
}

_SYNTAX: tuple[tuple[re.Pattern[str], Callable[[re.Match[str], OnIndivisible], object]], ...] = (
    (re.compile(r"unstructured"), lambda m, policy: Unstructured()),
    (re.compile(r"(\d+):(\d+)"), lambda m, policy: NM(int(m[1]), int(m[2]), policy)),
    (re.compile(r"block(\d+)x(\d+)"), lambda m, policy: Block(int(m[1]), int(m[2]), policy)),
    (re.compile(r"channel(\d*)"), lambda m, policy: Channel(int(m[1] or 0))),
)
_SYNTAX_HELP = "'unstructured', 'N:M' (e.g. '2:4'), 'blockRxC' (e.g. 'block8x1'), 'channel'"


def parse_pattern(spec: str | Pattern, on_indivisible: OnIndivisible = "error") -> Pattern:
    """Turn ``"unstructured"``, ``"2:4"``, ``"block8x1"`` or ``"channel"`` into a pattern.

    Args:
        spec: a pattern string (case-insensitive) or a pattern object, returned unchanged.
        on_indivisible: policy given to N:M and block patterns parsed from a string.

    Raises:
        ValueError: unknown string (the message lists the valid forms), or N >= M.
    """
    if not isinstance(spec, str):
        if not isinstance(spec, Pattern):
            raise TypeError(f"pattern must be a string ({_SYNTAX_HELP}) or a pattern object, "
                            f"got {type(spec).__name__}")
        return spec
    _check_policy(on_indivisible)
    text = spec.strip().lower().replace(" ", "")
    for regex, build in _SYNTAX:
        match = regex.fullmatch(text)
        if match is not None:
            return build(match, on_indivisible)  # type: ignore[return-value]
    raise ValueError(f"unknown pattern {spec!r}; valid patterns: {_SYNTAX_HELP}")
