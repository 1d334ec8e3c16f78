"""``convert``: replace eligible layers of a model by packed sparse counterparts, in the format
that is fastest for each (sparseprune.choose), and report what it did."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import choose as _choose
from ._convert_report import ConvertReport, LayerReport, plan_note
from ._modules import deepcopy_model
from ._weights import effective_weight, fold_masks
from .nn import SparseLinear
from .pruning.masks import masked_tensors
from .pruning.report import PLAN_ATTR, planned
from .pruning.scope import ATTENTION_PARAMS

__all__ = ["convert", "ConvertReport", "LayerReport", "register_converter"]


@dataclass(frozen=True)
class Converter:
    """How one module type converts: ``build(module, name, candidate)`` makes the packed module,
    ``dense(module)`` the dense reference op (x -> y) it is measured against."""

    build: Callable[[nn.Module, str, _choose.Candidate], nn.Module]
    dense: Callable[[nn.Module], Callable[[torch.Tensor], torch.Tensor]]
    # The format names it can build (None: every registered one).
    formats: tuple[str, ...] | None = None
    # (captured input, batch) -> the measuring input at that batch size, and its batch size.
    at_batch: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    batch_of: Callable[[torch.Tensor], int] | None = None
    # (module, input) -> what the speed depends on besides the mask (cache key), or None.
    context: Callable[[nn.Module, torch.Tensor], tuple] | None = None
    # (module, candidates, keep, min_sparsity) -> the choice without a measurement.
    cost: Callable | None = None
    # (module, candidate) -> whether this module can run that candidate (e.g. block shapes).
    accepts: Callable[[nn.Module, _choose.Candidate], bool] | None = None


# Module type -> its converter. Keyed by exact type so that a subclass with its own forward is
# never silently replaced by a plain sparse layer.
_CONVERTERS: dict[type, Converter] = {}


def register_converter(module_type: type, dense: Callable | None = None, **hooks) -> Callable:
    """Decorator: ``@register_converter(nn.Linear) def f(module, name, candidate) -> nn.Module``.

    ``dense(module) -> (x -> y)`` is the reference timed against (default: the module itself).
    A two-argument ``f(module, name)`` is accepted too (it then builds one fixed format).
    ``hooks``: the optional ``Converter`` fields (``formats``, ``at_batch``, ``batch_of``,
    ``context``, ``cost``, ``accepts``) for layers whose input is not ``[..., features]``.
    """
    unknown = set(hooks) - {"formats", "at_batch", "batch_of", "context", "cost", "accepts"}
    if unknown:
        raise TypeError(f"register_converter: unknown hooks {sorted(unknown)}")

    def wrap(fn: Callable) -> Callable:
        import inspect

        takes_candidate = len(inspect.signature(fn).parameters) >= 3
        build = fn if takes_candidate else (lambda module, name, cand: fn(module, name))
        _CONVERTERS[module_type] = Converter(build, dense or (lambda module: module), **hooks)
        return fn

    return wrap


def _linear_dense(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    w = effective_weight(module)
    b = module.bias.detach() if module.bias is not None else None
    return lambda x: F.linear(x, w, b)


@register_converter(nn.Linear, dense=_linear_dense)
def _linear_to_sparse(module: nn.Module, name: str, cand: _choose.Candidate) -> nn.Module:
    return SparseLinear.from_dense(module, format=cand.format, params=cand.params, name=name)


def _matches(name: str, patterns: list[str]) -> list[str]:
    return [p for p in patterns if name == p or fnmatch.fnmatchcase(name, p)]


def _check_patterns(what: str, patterns: list[str], names: list[str]) -> None:
    unused = [p for p in patterns if not any(_matches(n, [p]) for n in names)]
    if unused:
        raise ValueError(f"convert: {what} pattern(s) {unused} match no convertible layer; "
                         f"candidates are {names}")


def _capture_inputs(model: nn.Module, modules: list[nn.Module],
                    example_inputs: tuple) -> dict[int, torch.Tensor]:
    """The first input each of ``modules`` sees when ``model`` runs on ``example_inputs``."""
    seen: dict[int, torch.Tensor] = {}

    def hook(module, args):
        seen.setdefault(id(module), args[0].detach())

    handles = [m.register_forward_pre_hook(hook) for m in {id(m): m for m in modules}.values()]
    try:
        with torch.inference_mode():
            model(*example_inputs)
    finally:
        for h in handles:
            h.remove()
    return seen


def _at_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """The captured input reshaped to [batch, features], its rows repeated as needed."""
    rows = x.reshape(-1, x.shape[-1]).float()
    if rows.shape[0] == 0:
        return torch.randn(batch, rows.shape[1])
    idx = torch.arange(batch) % rows.shape[0]
    return rows[idx].contiguous()


def convert(model: nn.Module, *, min_sparsity: float = 0.5, include: Iterable[str] | None = None,
            exclude: Iterable[str] | None = None, inplace: bool = False,
            example_inputs: tuple | torch.Tensor | None = None,
            batch_sizes: Iterable[int] | None = None, formats: str | Iterable[str] = "auto",
            min_speedup: float = 1.0, cache: bool = True, fold_batchnorm: bool = True,
            fold_prune_masks: bool = True, native_pooling: bool = True
            ) -> tuple[nn.Module, ConvertReport]:
    """Replaces eligible layers (``nn.Linear``, ``nn.Conv2d``, plain or carrying prune masks)
    by packed ones (``SparseLinear``, ``SparseConv2d``).

    A layer is a candidate when its effective weight (``weight_orig * weight_mask`` under a
    ``torch.nn.utils.prune`` mask) has at least ``min_sparsity`` zeros, it matches ``include``
    (when given) and does not match ``exclude``. Names are the qualified names of
    ``model.named_modules()``; patterns may use shell wildcards (``"encoder.*.fc1"``).

    Each candidate layer gets the format its mask allows that runs fastest: with
    ``example_inputs``, the model runs once, every format (dense included) is timed on the input
    the layer really sees, at each of ``batch_sizes``, and the one with the best worst-case ratio
    is kept, dense unless it is at least ``min_speedup`` faster at every batch size. Choices are
    cached on disk (``sparseprune.choose.cache_path()``) per CPU, shape, mask, batch sizes and
    thread count, so converting the same model again measures nothing. Formats are timed at the
    current ``torch.get_num_threads()``: convert under the thread count the model will run at
    (the fastest format for a small layer at 1 thread is not always the fastest at 2). Without
    inputs a cost model decides (blocks or N:M when the mask has them, else SELL-C).

    Args:
        model: any module (the root itself may be an ``nn.Linear``).
        min_sparsity: in [0, 1]; below it the layer stays dense without being measured.
        include / exclude: layer-name patterns.
        inplace: modify ``model`` itself instead of a deep copy.
        example_inputs: input(s) the model is run on once to capture each layer's input.
        batch_sizes: the batch sizes the model will run at (default: the example's own).
        formats: "auto" (every registered format) or the names to choose from, e.g.
            ["sell", "bsr"]; dense is always possible.
        min_speedup: see above.
        cache: read and write the on-disk cache of measured choices.
        fold_batchnorm: fold an eval-mode ``BatchNorm2d`` that is the only consumer of a
            converted conv into its packed weight and bias (the BatchNorm becomes
            ``nn.Identity``; pairs found with ``torch.fx`` under the same safety checks as
            ``sparseprune.structured.fold_batchnorm``; an untraceable model folds nothing).
            False keeps every BatchNorm.
        fold_prune_masks: make every ``torch.nn.utils.prune`` mask of the returned model
            permanent, on every module type (layers kept dense, BatchNorm, Embedding,
            attention): no forward pre-hook recomputes ``weight = weight_orig * weight_mask``
            on each call any more (on a pruned ResNet-18 the hooks alone cost ~8 %). False
            keeps the masks on the layers that stay dense (e.g. to fine-tune them further).
            With ``inplace=False`` the model passed in keeps its masks either way.
        native_pooling: replace every ``nn.MaxPool2d`` (without ``return_indices``) by
            ``sparseprune.nn.MaxPool2d``, the same pool with a native NCHW kernel (torch's
            NCHW max pooling takes ~10x longer: on a converted ResNet-18 its stem pool would be
            ~20 % of the run time). Results are identical; False keeps torch's.

    Returns:
        (the converted model, a ``ConvertReport`` with one row per candidate layer and per
        pruned tensor that has no packed form, e.g. ``nn.MultiheadAttention``'s projections).
    """
    if not 0.0 <= float(min_sparsity) <= 1.0:
        raise ValueError(f"convert: min_sparsity must be in [0, 1], got {min_sparsity}")
    allowed = None if formats == "auto" else [formats] if isinstance(formats, str) else \
        list(formats)
    _choose.check_formats(allowed)
    sizes = None if batch_sizes is None else list(batch_sizes)
    if sizes is not None and (not sizes or any(isinstance(b, bool) or not isinstance(b, int)
                                               or b < 1 for b in sizes)):
        raise ValueError(f"convert: batch_sizes must be positive ints, got {batch_sizes}")
    include = list(include) if include is not None else None
    exclude = list(exclude) if exclude is not None else []
    if not inplace:
        model = deepcopy_model(model)
    # remove_duplicate=False: a layer shared under several names is replaced at every name.
    candidates = [(n, m) for n, m in model.named_modules(remove_duplicate=False)
                  if type(m) in _CONVERTERS]
    names = [n for n, _ in candidates]
    if include is not None:
        _check_patterns("include", include, names)
    _check_patterns("exclude", exclude, names)
    others = _unconvertible(model, {id(m) for _, m in candidates})
    folded = fold_masks(model) if fold_prune_masks else []

    captured: dict[int, torch.Tensor] = {}
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        captured = _capture_inputs(model, [m for _, m in candidates], tuple(example_inputs))

    pairs = _convert_conv.foldable_pairs(model, names) if fold_batchnorm else {}

    rows = []
    replaced_root = None
    converted: dict[int, tuple[nn.Module, dict]] = {}  # id(original) -> (replacement, report)
    for name, module in candidates:
        weight = effective_weight(module)
        numel = weight.numel()
        sparsity = float((weight == 0).sum()) / numel if numel else 1.0
        plan = planned(module)
        row = dict(name=name, type=type(module).__name__, shape=tuple(weight.shape),
                   sparsity=sparsity, dense_bytes=numel * 4, plan=plan[1] if plan else "")
        reason = None
        if include is not None and not _matches(name, include):
            reason = "not in include"
        elif _matches(name, exclude):
            reason = "excluded"
        elif weight.device.type != "cpu":
            reason = f"on {weight.device}"
        elif numel == 0:
            reason = "empty weight"
        elif sparsity < min_sparsity:
            reason = f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity}"
            note = plan_note(row["plan"], plan[0] if plan else None)
            reason += f" ({note})" if note else ""
        if reason is not None:
            rows.append(LayerReport(**row, format=None, reason=reason))
            continue
        done = converted.get(id(module))
        bn_name = pairs.get(name, "")
        if done is None:
            source = module
            if bn_name:
                source = _convert_conv.fold_bn(module, model.get_submodule(bn_name))
            done = _convert_one(source, name, weight, captured.get(id(module)), sizes, allowed,
                                min_speedup, cache, min_sparsity)
            converted[id(module)] = done
        new, info = done
        rows.append(LayerReport(**row, **info, folded=bn_name if new is not None else ""))
        if new is None:
            continue
        if bn_name:
            parent_name, _, child = bn_name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child,
                    nn.Identity())
        if name == "":
            replaced_root = new
        else:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, new)
    order = {n: i for i, (n, _) in enumerate(model.named_modules(remove_duplicate=False))}
    rows = [r for _, r in sorted([(order.get(r.name, -1), r) for r in rows]
                                 + [(order.get(owner, -1), r) for owner, r in others],
                                 key=lambda pair: pair[0])]
    result = replaced_root if replaced_root is not None else model
    pools: list[str] = []
    if native_pooling:
        result, pools = _native_pools(result)
    report = ConvertReport(tuple(rows), tuple(folded), float(min_sparsity), tuple(pools))
    return result, report


def _native_pools(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """``model`` with its plain ``nn.MaxPool2d`` modules run by ``sparseprune.nn.MaxPool2d``,
    and their names."""
    from .nn.pool import MaxPool2d

    def plain(m: nn.Module) -> bool:
        return type(m) is nn.MaxPool2d and not m.return_indices

    if plain(model):
        return MaxPool2d.from_torch(model), [""]
    names = [n for n, m in model.named_modules(remove_duplicate=False) if n and plain(m)]
    for name in names:
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent) if parent else model
        if plain(getattr(owner, child)):  # a pool shared under two names is swapped once
            setattr(owner, child, MaxPool2d.from_torch(getattr(owner, child)))
    return model, names


# Why an attention layer's projections stay dense whatever their sparsity.
_ATTENTION_REASON = ("no packed form: nn.MultiheadAttention's forward reads {what} itself "
                     "(F.multi_head_attention_forward), so a packed layer cannot sit there")


def _unconvertible(model: nn.Module, candidate_ids: set[int]) -> list[tuple[str, LayerReport]]:
    """(owner module name, row) for each pruned tensor convert has no packed form for: the
    projections of ``nn.MultiheadAttention``, subclasses of a converted type (their forward may
    differ), and any other module carrying a prune mask or plan (Conv1d, BatchNorm, ...)."""
    masked = {(id(t.module), t.param) for t in masked_tensors(model)}
    out = []
    parents = {id(c): m for m in model.modules() for c in m.children()}
    for name, module in model.named_modules():
        if id(module) in candidate_ids:
            continue
        if isinstance(module, nn.MultiheadAttention):
            tensors = [(p, _ATTENTION_REASON.format(what=p)) for p in ATTENTION_PARAMS
                       if isinstance(getattr(module, p, None), torch.Tensor)]
        elif isinstance(parents.get(id(module)), nn.MultiheadAttention):
            tensors = [("weight", _ATTENTION_REASON.format(what="out_proj.weight"))]
        elif isinstance(module, tuple(_CONVERTERS)):
            base = next(t for t in _CONVERTERS if isinstance(module, t)).__name__
            tensors = [("weight", f"no packed form: a subclass of nn.{base} (its forward may "
                                  f"differ; convert replaces exact nn.{base} layers only)")]
        else:
            params = {p for i, p in masked if i == id(module)} | set(
                getattr(module, PLAN_ATTR, None) or {})
            tensors = [(p, f"no packed form for {type(module).__name__}")
                       for p in sorted(params) if isinstance(getattr(module, p, None),
                                                             torch.Tensor)]
        # "MHA" for attention's rows: the reason names the class, the table keeps its columns.
        in_attention = isinstance(module, nn.MultiheadAttention) or isinstance(
            parents.get(id(module)), nn.MultiheadAttention)
        kind = "MHA" if in_attention else type(module).__name__
        for param, reason in tensors:
            weight = effective_weight(module, param)
            numel = weight.numel()
            plan = planned(module, param)
            note = plan_note(plan[1], plan[0]) if plan else ""
            label = name if param == "weight" else (f"{name}.{param}" if name else param)
            out.append((name, LayerReport(
                name=label, type=kind, shape=tuple(weight.shape),
                sparsity=float((weight == 0).sum()) / numel if numel else 0.0, format=None,
                reason=reason + (f" ({note})" if note else ""), dense_bytes=numel * 4,
                plan=plan[1] if plan else "")))
    return out


def _convert_one(module, name, weight, x, sizes, allowed, min_speedup, cache, min_sparsity):
    conv = _CONVERTERS[type(module)]
    weight = effective_weight(module)
    keep = weight.reshape(weight.shape[0], -1) != 0
    if conv.formats is not None:
        allowed = [f for f in (allowed if allowed is not None else conv.formats)
                   if f in conv.formats or f == _choose.DENSE]
    cands = _choose.candidates_for(keep, allowed)
    if conv.accepts is not None:
        cands = [c for c in cands if c.format == _choose.DENSE or conv.accepts(module, c)]
    built: dict[_choose.Candidate, nn.Module] = {}

    def build(cand):
        if cand not in built:
            built[cand] = conv.build(module, name, cand)
        return built[cand]

    if x is not None:
        batch_of = conv.batch_of or (lambda t: t.reshape(-1, t.shape[-1]).shape[0])
        batches = sizes or [batch_of(x)]
        inputs = [(conv.at_batch or _at_batch)(x, b) for b in batches]
        context = conv.context(module, x) if conv.context is not None else None
        choice = _choose.choose(cands, keep, inputs, build, conv.dense(module),
                                min_speedup=min_speedup, cache=cache, batch_sizes=batches,
                                context=context)
    elif conv.cost is not None:
        choice = _choose.Choice(conv.cost(module, cands, keep, min_sparsity), "cost model")
    else:
        choice = _choose.Choice(_choose.cost_model(cands, keep, min_sparsity), "cost model")
    measured = tuple(sorted(choice.speedups.items()))
    best = max((v for k, v in choice.speedups.items() if k != _choose.DENSE), default=None)
    if choice.candidate.format == _choose.DENSE:
        if choice.how == "cost model":
            reason = "cost model: no sparse format pays at this sparsity"
        else:
            at = ", ".join(str(b) for b in choice.batch_sizes)
            reason = (f"measured: no format at least {min_speedup}x faster at batch {at}"
                      + (f" (best {best:.2f}x)" if best is not None else ""))
        return None, dict(format=None, reason=reason, how=choice.how, measured=measured,
                          speedup=best if choice.how != "cost model" else None)
    new = build(choice.candidate)
    return new, dict(format=choice.candidate.label, speedup=choice.speedup, how=choice.how,
                     nbytes=new.weight.nbytes, measured=measured)


from . import _convert_conv  # noqa: E402  (registers the nn.Conv2d converter)
