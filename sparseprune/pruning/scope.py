"""Scopes: which tensors are pruned, at which rate, and which of them compete with each other.

* :func:`select_targets` picks the tensors (default: the ``weight`` of every ``nn.Linear`` and
  ``nn.Conv1d/2d/3d``, and the input projections of every ``nn.MultiheadAttention``), minus
  ``exclude``.
* :func:`plan_rates` gives each one a rate: explicit ``layer_sparsity`` first, then the
  :class:`Protect` defaults (first conv dense, last ``nn.Linear`` at half the rate), else the pool.
* :class:`PerLayer` prunes every pooled tensor to the target on its own; :class:`PerRow` prunes
  every output row (the ``[O, K]`` view's row) to it, the comparison group of Wanda;
  :class:`Global` ranks all pooled tensors' units together (one threshold), like
  ``torch.nn.utils.prune.global_unstructured``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ._checks import check_fraction, check_rate, prune_count, unknown_name
from .masks import Target, trainable
from .patterns import NM, Pattern, Unstructured, lowest

__all__ = [
    "ATTENTION_PARAMS",
    "DEFAULT_TYPES",
    "SCOPES",
    "Global",
    "LayerPlan",
    "PerLayer",
    "PerRow",
    "Protect",
    "Scope",
    "get_scope",
    "plan_rates",
    "row_mask",
    "select",
    "select_targets",
]

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# What param="weight" means for an nn.MultiheadAttention: its fused [3E, E] input projection
# (or the separate q/k/v ones when kdim/vdim differ), each pruned like a Linear's [O, K] weight.
# out_proj is an nn.Linear child and selected as one. In ViT-B/16 in_proj_weight holds 24 % of
# the parameters, so leaving it out caps what "90 %" means.
ATTENTION_PARAMS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
_SELECTED_TYPES = (*DEFAULT_TYPES, nn.MultiheadAttention)

# A selector: a module type, a name / glob, or a predicate (name, module) -> bool.
Selector = type | str
LayerSparsity = Mapping[str, float] | Callable[[str, nn.Module], float | None]


def _name_matches(pattern: str, name: str) -> bool:
    """Exact name, a parent container (``"features"`` covers ``"features.0"``), or a glob."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def _has_param(module: nn.Module, param: str) -> bool:
    try:
        trainable(module, param)
    except AttributeError:
        return False
    return True


def _params_of(module: nn.Module, param: str) -> list[str]:
    """The tensors ``param`` names in ``module``: itself, or an attention's input projections."""
    if param == "weight" and isinstance(module, nn.MultiheadAttention):
        return [p for p in ATTENTION_PARAMS if _has_param(module, p)]
    return [param] if _has_param(module, param) else []


def _some(names: Iterable[str], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def select_targets(
    model: nn.Module,
    *,
    include: Sequence[Selector] | Callable[[str, nn.Module], bool] | None = None,
    exclude: Iterable[str] = (),
    param: str = "weight",
) -> list[Target]:
    """The tensors to prune, in ``model.named_modules()`` order (see :func:`select`)."""
    return select(model, include=include, exclude=exclude, param=param)[0]


def select(
    model: nn.Module,
    *,
    include: Sequence[Selector] | Callable[[str, nn.Module], bool] | None = None,
    exclude: Iterable[str] = (),
    param: str = "weight",
) -> tuple[list[Target], list[tuple[str, str]]]:
    """The tensors to prune, and the modules a name in ``include`` matched but left alone.

    Args:
        model: the model.
        include: None for :data:`DEFAULT_TYPES` and ``nn.MultiheadAttention`` (whose
            :data:`ATTENTION_PARAMS` stand for ``param="weight"``); a sequence of module types
            and/or layer names; or a predicate ``(name, module) -> bool`` (which selects any
            module with ``param``). A glob or a parent container name (``"encoder"``,
            ``"encoder.*"``) selects the :data:`DEFAULT_TYPES` and attention layers under it,
            so it may also cover LayerNorms and embeddings, which are named in the second
            return value instead of being pruned; an exact module name selects that module
            whatever its type.
        exclude: layer names (exact, parent container or glob) to leave alone; each must match
            at least one included layer.
        param: name of the parameter to prune in each layer.

    Returns:
        (targets, [(name, why not pruned), ...]).

    Raises:
        ValueError: an ``exclude`` or ``include`` name matches nothing, a named layer lacks
            ``param``, or nothing is left to prune.
    """
    if isinstance(exclude, str):
        exclude = [exclude]  # a lone string is one name, not a sequence of characters
    exclude = list(exclude)
    modules = list(model.named_modules())
    ignored: list[tuple[str, str]] = []
    if include is None:
        include = _SELECTED_TYPES
    if callable(include) and not isinstance(include, type):
        chosen = [(n, m) for n, m in modules if include(n, m) and _params_of(m, param)]
    else:
        if isinstance(include, (str, type)):
            include = [include]
        types = tuple(s for s in include if isinstance(s, type))
        names = [s for s in include if isinstance(s, str)]
        bad = [s for s in include if not isinstance(s, (str, type))]
        if bad:
            raise TypeError(f"include entries must be module types or layer names, got {bad!r}")
        for pattern in names:
            hits = [(n, m) for n, m in modules if _name_matches(pattern, n)]
            if not hits:
                raise ValueError(f"include name {pattern!r} matches no module; modules: "
                                 f"{_some(n for n, _ in modules if n)}")
            if not any(_params_of(m, param) for _, m in hits):
                raise ValueError(f"include name {pattern!r} matches modules without a "
                                 f"parameter {param!r}")
        chosen = []
        for n, m in modules:
            if not _params_of(m, param):
                continue
            if isinstance(m, types) or n in names:
                chosen.append((n, m))
            elif any(_name_matches(p, n) for p in names):
                if isinstance(m, _SELECTED_TYPES):
                    chosen.append((n, m))
                else:
                    ignored.append((n, f"{type(m).__name__} is not a Linear/Conv layer (name it "
                                       "exactly, or pass its type in include=, to prune it)"))
        if names and not chosen:
            raise ValueError(f"include names {names!r} match no Linear/Conv layer with a "
                             f"parameter {param!r}; they matched only "
                             f"{_some(n for n, _ in ignored)}")
    for pattern in exclude:
        if not any(_name_matches(pattern, n) for n, _ in chosen):
            raise ValueError(f"exclude name {pattern!r} matches no prunable layer; prunable "
                             f"layers: {_some(n for n, _ in chosen)}")
    targets = [
        Target(n, m, p) for n, m in chosen if not any(_name_matches(e, n) for e in exclude)
        for p in _params_of(m, param)
    ]
    if not targets:
        raise ValueError(f"no layers left to prune in {type(model).__name__} (param={param!r}, "
                         f"exclude={exclude!r})")
    return targets, ignored


@dataclass(frozen=True)
class Protect:
    """Lower rates for the layers that hurt accuracy most and hold few weights.

    Each field multiplies the target sparsity for that layer: 0.0 keeps it dense, 1.0 does not
    protect it. Patterns with a fixed rate (N:M) cannot go lower, so any factor below 1.0 keeps
    the layer dense there; output-channel pruning keeps the last Linear dense (its rows are the
    classes). Nothing is protected when there is only one target.

    Attributes:
        first: for the first ConvNd among the targets (the stem; MLPs have none, as their first
            Linear holds most weights). Default 0.0: dense.
        last: for the last ``nn.Linear`` among the targets (the classifier). Default 0.5: half
            the rate, which beat both dense and full rate in our MLP measurements (design.md §7).
    """

    first: float = 0.0
    last: float = 0.5

    def __post_init__(self) -> None:
        check_fraction(self.first, "Protect.first")
        check_fraction(self.last, "Protect.last")


@dataclass(frozen=True)
class LayerPlan:
    """One target and its rate: ``None`` = the scope's pool at the target sparsity."""

    target: Target
    rate: float | None
    reason: str


def _explicit_rates(
    targets: Sequence[Target], layer_sparsity: LayerSparsity | None
) -> dict[int, float]:
    if layer_sparsity is None:
        return {}
    out: dict[int, float] = {}
    if isinstance(layer_sparsity, Mapping):
        for pattern, rate in layer_sparsity.items():
            hits = [i for i, t in enumerate(targets) if _name_matches(pattern, t.name)]
            if not hits:
                raise ValueError(f"layer_sparsity key {pattern!r} matches no prunable layer; "
                                 f"prunable layers: {_some(t.name for t in targets)}")
            rate = check_rate(rate, f"layer_sparsity[{pattern!r}]")
            for i in hits:
                out.setdefault(i, rate)  # the first matching key wins, in dict order
        return out
    if not callable(layer_sparsity):
        raise TypeError("layer_sparsity must be a dict name -> sparsity or a function "
                        f"(name, module) -> sparsity | None; got {type(layer_sparsity).__name__}")
    for i, t in enumerate(targets):
        rate = layer_sparsity(t.name, t.module)
        if rate is not None:
            out[i] = check_rate(rate, f"layer_sparsity({t.name!r})")
    return out


def plan_rates(
    targets: Sequence[Target],
    sparsity: float,
    *,
    layer_sparsity: LayerSparsity | None = None,
    protect: Protect | None = None,
    pattern: Pattern | None = None,
    progress: float = 1.0,
) -> list[LayerPlan]:
    """Each target's rate at the current step.

    Args:
        targets: from :func:`select_targets`.
        sparsity: the pool's target at this step.
        layer_sparsity: explicit final rates by layer (dict of names/globs, or a function).
        protect: protection factors, or None for none.
        pattern: consulted for a fixed rate (N:M), which makes protection all-or-nothing.
        progress: ``s_t / s_final`` of a schedule; explicit rates are scaled by it.
    """
    explicit = _explicit_rates(targets, layer_sparsity)
    protected: dict[int, tuple[float, str]] = {}
    # A lone layer is no network's stem or classifier: pruning it is the whole request.
    if protect is not None and len(targets) > 1:
        convs = [i for i, t in enumerate(targets) if isinstance(t.module, nn.modules.conv._ConvNd)]
        linears = [i for i, t in enumerate(targets) if isinstance(t.module, nn.Linear)]
        fixed = pattern.fixed_sparsity if pattern is not None else None
        last = protect.last
        if getattr(pattern, "removes_outputs", False):
            last = 0.0  # the classifier's output rows are the classes: never drop whole ones
        for indices, factor, what in ((linears[-1:], last, "last linear"),
                                      (convs[:1], protect.first, "first conv")):
            if indices and factor < 1.0:
                if fixed is not None:
                    factor = 0.0  # N:M cannot be applied at a fraction of its rate
                protected[indices[0]] = (factor, f"protected ({what}, x{factor:g})")
    plans = []
    for i, target in enumerate(targets):
        if i in explicit:
            plans.append(LayerPlan(target, explicit[i] * progress, "layer_sparsity"))
        elif i in protected:
            factor, reason = protected[i]
            plans.append(LayerPlan(target, factor * sparsity, reason))
        else:
            plans.append(LayerPlan(target, None, "pool"))
    return plans


class Scope:
    """Base for scopes: turns per-target scores into masks."""

    name: ClassVar[str]

    def masks(self, plans: Sequence[LayerPlan], scores: Sequence[Tensor], pattern: Pattern,
              sparsity: float) -> list[Tensor]:
        """Bool keep-masks, one per plan, shaped like its scores."""
        raise NotImplementedError


@dataclass(frozen=True)
class PerLayer(Scope):
    """Every tensor is pruned to its own rate (the target, unless its plan says otherwise)."""

    name: ClassVar[str] = "layer"

    def masks(self, plans: Sequence[LayerPlan], scores: Sequence[Tensor], pattern: Pattern,
              sparsity: float) -> list[Tensor]:
        return [pattern.mask(s, sparsity if p.rate is None else p.rate)
                for p, s in zip(plans, scores, strict=True)]


def row_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Keep-mask pruning ``round(sparsity * K)`` lowest scores in every row of the [O, K] view.

    Args:
        scores: [O, ...] float scores, no NaN; ``-inf`` = already pruned (pruned first).
        sparsity: fraction in [0, 1).

    Returns:
        bool tensor shaped like ``scores``; ties prune the lower column first.
    """
    rows = scores.reshape(scores.shape[0], -1) if scores.dim() else scores.reshape(1, 1)
    if torch.isnan(rows).any():
        raise ValueError("scores contain NaN")
    k = prune_count(rows.shape[1], sparsity)
    keep = torch.ones_like(rows, dtype=torch.bool)
    if k:
        drop = torch.sort(rows, dim=1, stable=True).indices[:, :k]
        keep.scatter_(1, drop, False)
    return keep.reshape(scores.shape)


@dataclass(frozen=True)
class PerRow(Scope):
    """Every output row is pruned to the rate on its own: ``round(rate * K)`` per row.

    The comparison group of Wanda (Sun et al., ICLR 2024, §3: "per output"): scores scaled by
    input norms are comparable within a row, which sees every input, but not across rows or
    layers. Defined for the unstructured pattern; N:M groups already lie within rows, so N:M
    masks are the pattern's own. Block and channel patterns have no row form.
    """

    name: ClassVar[str] = "row"

    def masks(self, plans: Sequence[LayerPlan], scores: Sequence[Tensor], pattern: Pattern,
              sparsity: float) -> list[Tensor]:
        if isinstance(pattern, NM):
            return PerLayer().masks(plans, scores, pattern, sparsity)
        if not isinstance(pattern, Unstructured):
            raise ValueError(f"scope='row' compares weights within an output row; pattern "
                             f"{pattern} prunes whole blocks or channels: use scope='layer' "
                             "or 'global'")
        return [row_mask(s, sparsity if p.rate is None else p.rate)
                for p, s in zip(plans, scores, strict=True)]


@dataclass(frozen=True)
class Global(Scope):
    """One threshold across all pooled tensors: ``round(sparsity * units)`` pruned in total.

    Units are the pattern's (elements, blocks); ties are broken by layer order, then flat index.
    Tensors with their own rate (explicit or protected) are pruned per layer.
    """

    name: ClassVar[str] = "global"

    def masks(self, plans: Sequence[LayerPlan], scores: Sequence[Tensor], pattern: Pattern,
              sparsity: float) -> list[Tensor]:
        units_of = getattr(pattern, "units", None)
        expand = getattr(pattern, "expand", None)
        if units_of is None or expand is None:
            raise ValueError(f"pattern {pattern} keeps a fixed share of each group and has no "
                             "global ranking; use scope='layer'")
        out: list[Tensor | None] = [None] * len(plans)
        pool = []
        for i, (plan, s) in enumerate(zip(plans, scores, strict=True)):
            if plan.rate is None:
                pool.append(i)
            else:
                out[i] = pattern.mask(s, plan.rate)
        if pool:
            units = [units_of(scores[i]) for i in pool]
            # Ranked on the CPU in float64 so tensors on different devices / dtypes compare.
            flat = torch.cat([u.detach().to("cpu", torch.float64) for u in units])
            keep = torch.ones(flat.numel(), dtype=torch.bool)
            keep[lowest(flat, prune_count(flat.numel(), sparsity))] = False
            for i, part in zip(pool, keep.split([u.numel() for u in units]), strict=True):
                out[i] = expand(part.to(scores[i].device), scores[i].shape)
        return out  # type: ignore[return-value]


SCOPES: dict[str, type[Scope]] = {"layer": PerLayer, "row": PerRow, "global": Global}


def get_scope(spec: str | Scope | None, pattern: Pattern, criterion: object = None) -> Scope:
    """A scope from a :data:`SCOPES` name.

    None picks the criterion's ``default_scope`` where it has one and the pattern is
    unstructured (Wanda: ``"row"``), else the pattern's ``default_scope``.
    """
    if spec is None:
        preferred = getattr(criterion, "default_scope", None)
        if preferred is not None and isinstance(pattern, Unstructured):
            spec = preferred
        else:
            spec = getattr(pattern, "default_scope", "layer")
    if isinstance(spec, Scope):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"scope must be one of {sorted(SCOPES)} or a Scope, got {spec!r}")
    key = spec.strip().lower()
    if key not in SCOPES:
        raise unknown_name("scope", spec, SCOPES)
    return SCOPES[key]()
