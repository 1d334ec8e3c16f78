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
from ._modules import deepcopy_model
from ._weights import effective_weight
from .nn import SparseLinear

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


@dataclass(frozen=True)
class LayerReport:
    """What ``convert`` did with one layer: ``format`` is set when replaced, else ``reason``.

    ``speedup`` is the measured ratio vs dense of the chosen format (worst over the batch sizes),
    ``how`` says where the choice came from ("measured", "cached", "cost model"), ``nbytes`` /
    ``dense_bytes`` are the run-time bytes of the packed and the dense weight.
    """

    name: str
    type: str
    shape: tuple[int, ...]
    sparsity: float
    format: str | None
    reason: str = ""
    speedup: float | None = None
    how: str = ""
    nbytes: int = 0
    dense_bytes: int = 0
    measured: tuple[tuple[str, float], ...] = ()
    folded: str = ""  # the BatchNorm folded into this layer's packed weight, if any


@dataclass(frozen=True)
class ConvertReport:
    """Per-layer outcome of ``convert``, printable as a table."""

    layers: tuple[LayerReport, ...]

    @property
    def converted(self) -> list[LayerReport]:
        return [r for r in self.layers if r.format is not None]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if r.format is None]

    def __str__(self) -> str:
        head = (f"{'layer':<28} {'type':<8} {'shape':<12} {'sparsity':>8} {'bytes':>9} "
                f"{'of dense':>8} {'speed':>6}  result")
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(str(s) for s in r.shape)
            result = r.format if r.format is not None else f"dense: {r.reason}"
            if r.how:
                result += f" ({r.how})"
            if r.folded:
                result += f" + {r.folded} folded"
            speed = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
            frac = f"{r.nbytes / r.dense_bytes:.1%}" if r.format and r.dense_bytes else "-"
            nbytes = f"{r.nbytes:,}" if r.format else f"{r.dense_bytes:,}"
            lines.append(f"{r.name or '(root)':<28} {r.type:<8} {shape:<12} {r.sparsity:>8.3f} "
                         f"{nbytes:>9} {frac:>8} {speed:>6}  {result}")
        lines.append(f"{len(self.converted)} converted, {len(self.skipped)} kept dense")
        return "\n".join(lines)


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
            min_speedup: float = 1.0, cache: bool = True, fold_batchnorm: bool = True
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
    cached on disk (``sparseprune.choose.cache_path()``) per CPU, shape, mask and batch sizes,
    so converting the same model again measures nothing. Without inputs a cost model decides
    (blocks or N:M when the mask has them, else SELL-C).

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

    Returns:
        (the converted model, a ``ConvertReport`` with one row per candidate layer).
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

    captured: dict[int, torch.Tensor] = {}
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        captured = _capture_inputs(model, [m for _, m in candidates], tuple(example_inputs))

    pairs = _foldable_pairs(model, names) if fold_batchnorm else {}

    rows = []
    replaced_root = None
    converted: dict[int, tuple[nn.Module, dict]] = {}  # id(original) -> (replacement, report)
    for name, module in candidates:
        weight = effective_weight(module)
        numel = weight.numel()
        sparsity = float((weight == 0).sum()) / numel if numel else 1.0
        row = dict(name=name, type=type(module).__name__, shape=tuple(weight.shape),
                   sparsity=sparsity, dense_bytes=numel * 4)
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
        if reason is not None:
            rows.append(LayerReport(**row, format=None, reason=reason))
            continue
        done = converted.get(id(module))
        bn_name = pairs.get(name, "")
        if done is None:
            source = module
            if bn_name:
                source = _fold_bn(module, model.get_submodule(bn_name))
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
    return (replaced_root if replaced_root is not None else model), ConvertReport(tuple(rows))


def _foldable_pairs(model: nn.Module, names: list[str]) -> dict[str, str]:
    """{conv name: eval-mode BatchNorm2d name} that can fold into the packed conv."""
    from .structured.fold import conv_bn_pairs
    from .structured.graph import StructuredTraceError

    if not any(isinstance(m, nn.BatchNorm2d) and not m.training for m in model.modules()):
        return {}
    try:
        pairs = conv_bn_pairs(model, prune_masks_ok=True)
    except StructuredTraceError:
        return {}  # untraceable: nothing is known to be safe to fold
    return {c: b for c, b in pairs.items()
            if c in names and type(model.get_submodule(c)) is nn.Conv2d
            and isinstance(model.get_submodule(b), nn.BatchNorm2d)
            and not model.get_submodule(b).training}


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A plain conv computing bn(conv(x)) in eval mode, from the conv's effective (masked)
    weight: pruned zeros stay zeros (each output channel is only scaled)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    weight = effective_weight(conv).to(torch.float32)
    bias = conv.bias.detach().to(torch.float32) if conv.bias is not None else None
    w, b = fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps,
                                bn.weight, bn.bias)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, True, conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(torch.where(weight == 0, torch.zeros(()), w.detach()))
        out.bias.copy_(b.detach())
    return out.eval()


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


from . import _convert_conv  # noqa: E402,F401  (registers the nn.Conv2d converter)
