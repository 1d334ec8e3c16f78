"""Whole-model files: :func:`save` a converted model, :func:`load` it back without its code.

A file holds plain data only (it loads with ``torch.load(weights_only=True)``; nothing in it is
run): the ``state_dict`` (CSR indices delta + varint coded, ~1 B per nonzero), the constructor
arguments of every packed layer (``SparseLinear``, ``SparseConv2d``), the width config of
structured pruning (channel counts, resized tensors, folded BatchNorms), the names of modules
that ``convert`` replaced by ``nn.Identity`` and of the max pools it runs natively. :func:`load`
builds the architecture with your ``model_factory`` (the unpruned, dense model), puts the packed
layers in place from the file's validated packed data, resizes what structured pruning shrank,
and loads the state_dict strictly, so every packed buffer is checked (header, sizes, index
ranges) before a kernel sees it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from ._compact import decode_columns, decode_rows, encode_columns, encode_rows
from .formats.base import parse_header
from .nn import SparseConv2d, SparseLinear
from .nn.conv import conv_pair
from .nn.packed import _HEADER
from .nn.pool import MaxPool2d
from .structured.io import apply_widths, read_weights_only, width_config

__all__ = ["FORMAT", "load", "save"]

FORMAT = "sparseprune.model/1"

_LINEAR_ARGS = ("in_features", "out_features")
_CONV_ARGS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
              "groups", "padding_mode")


def _spec(module: nn.Module) -> dict | None:
    """Constructor arguments of a packed layer (plain ints, lists and strings), or None."""
    if isinstance(module, SparseLinear):
        spec = {a: getattr(module, a) for a in _LINEAR_ARGS}
        kind = "SparseLinear"
    elif isinstance(module, SparseConv2d):
        spec = {a: getattr(module, a) for a in _CONV_ARGS}
        spec = {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}
        kind = "SparseConv2d"
    else:
        return None
    return {"type": kind, **spec, "bias": module.bias is not None}


def save(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model`` (converted, pruned or plain) to ``path`` as plain data.

    Args:
        model: any module; packed layers may sit anywhere, the root included.
        path: file to write (``torch.save``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"save: expected an nn.Module, got {type(model).__name__}")
    packed = {name: spec for name, m in model.named_modules()
              if (spec := _spec(m)) is not None}
    widths = width_config(model)
    # Packed layers are rebuilt from their own header and buffers, not resized.
    def ours(key: str) -> bool:
        """Whether ``key`` names a packed layer or something inside one."""
        return any(not n or key == n or key.startswith(n + ".") for n in packed)

    widths["attrs"] = {k: v for k, v in widths["attrs"].items() if not ours(k)}
    widths["shapes"] = {k: v for k, v in widths["shapes"].items()
                        if not any(not n or k.startswith(n + ".") for n in packed)}
    identities = [name for name, m in model.named_modules()
                  if isinstance(m, nn.Identity) and name and not ours(name)]
    state = model.state_dict()
    compact = []
    for name in packed:
        prefix = f"{name}." if name else ""
        if prefix + "row_ptr" in state and prefix + "col_idx" in state:
            row_ptr = state[prefix + "row_ptr"]
            state[prefix + "col_idx"] = encode_columns(row_ptr, state[prefix + "col_idx"])
            state[prefix + "row_ptr"] = encode_rows(row_ptr)
            compact.append(prefix)
    pools = [name for name, m in model.named_modules() if type(m) is MaxPool2d]
    torch.save({"format": FORMAT, "packed": packed, "identity": identities, "widths": widths,
                "compact": compact, "native_pools": pools, "state_dict": state}, path)


def _check_spec(name: str, spec: object, path: object) -> dict:
    if not isinstance(spec, dict) or spec.get("type") not in ("SparseLinear", "SparseConv2d"):
        raise ValueError(f"{path}: packed layer {name!r}: not a SparseLinear/SparseConv2d spec")
    args = _LINEAR_ARGS if spec["type"] == "SparseLinear" else _CONV_ARGS
    unknown = set(spec) - {"type", "bias", *args}
    if unknown or any(a not in spec for a in args) or not isinstance(spec.get("bias"), bool):
        raise ValueError(f"{path}: packed layer {name!r}: spec keys {sorted(spec)} do not match "
                         f"{spec['type']}({', '.join(args)}, bias)")
    def size(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    for key in args:
        value = spec[key]
        if key == "padding_mode":
            ok = isinstance(value, str)
        elif key in ("kernel_size", "stride", "dilation", "padding"):  # int, pair (or a word)
            ok = size(value) or (isinstance(value, list) and len(value) == 2
                                 and all(size(v) for v in value)) or (
                key == "padding" and isinstance(value, str))
        else:  # feature / channel counts, groups
            ok = size(value)
        if not ok:
            raise ValueError(f"{path}: packed layer {name!r}: {key}={value!r} is not a valid "
                             f"{spec['type']} {key}")
    return spec


def _expand(sd: dict, prefix: str, path: object) -> None:
    """Decode a layer's compact ``row_ptr`` / ``col_idx`` entries of ``sd`` in place."""
    where = f"{path}: packed layer {prefix[:-1] or '<root>'!r}"
    if not isinstance(sd.get(prefix + _HEADER), torch.Tensor):
        raise ValueError(f"{where}: compact indices without a packed header")
    _, (rows, cols), _ = parse_header(sd[prefix + _HEADER], name=where)
    row_ptr = decode_rows(sd.get(prefix + "row_ptr"), rows, name=f"{where} row_ptr")
    dtype = torch.uint16 if cols <= 1 << 16 else torch.int32
    sd[prefix + "col_idx"] = decode_columns(sd.get(prefix + "col_idx"), row_ptr, dtype,
                                            name=f"{where} col_idx")
    sd[prefix + "row_ptr"] = row_ptr


def _packed_layer(name: str, spec: dict, sd: dict, path: object) -> nn.Module:
    """The layer of ``spec`` with its packed weight built (and validated) from ``sd``."""
    prefix = f"{name}." if name else ""
    where = f"{path}: packed layer {name or '<root>'!r}"
    if prefix + _HEADER not in sd:
        raise ValueError(f"{where}: the state_dict has no {prefix + _HEADER}")
    cls, shape, params = parse_header(sd[prefix + _HEADER], name=where)
    missing = [b for b in cls.BUFFERS if not isinstance(sd.get(prefix + b), torch.Tensor)]
    if missing:
        raise ValueError(f"{where}: the state_dict lacks the {cls.NAME} buffers {missing}")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()
            if k not in ("type", "bias")}
    if spec["type"] == "SparseLinear":
        expected = (args["out_features"], args["in_features"])
    else:
        try:  # the shape the filter must have; the layer checks the rest of its arguments
            kh, kw = conv_pair(args["kernel_size"], "kernel_size", 1, where)
        except ValueError as err:
            raise ValueError(str(err)) from None
        groups = args["groups"]
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{where}: groups must be a positive int, got {groups!r}")
        expected = (args["out_channels"], args["in_channels"] // groups * kh * kw)
    if tuple(shape) != expected:
        raise ValueError(f"{where}: header shape {list(shape)} does not match the layer's "
                         f"{list(expected)}")
    weight = cls.from_tensors({b: sd[prefix + b] for b in cls.BUFFERS}, shape, params,
                              name=where)
    layer_cls = SparseLinear if spec["type"] == "SparseLinear" else SparseConv2d
    try:
        return layer_cls(**args, bias=spec["bias"], weight=weight, name=name)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def _set(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """``model`` with its submodule ``name`` (which exists) replaced by ``module``."""
    if not name:
        return module
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)
    return model


def load(path: str | os.PathLike, model_factory: Callable[[], nn.Module] | None = None
         ) -> nn.Module:
    """Rebuild a model written by :func:`save`.

    Args:
        path: the file.
        model_factory: builds the model's dense architecture (e.g. ``lambda: MyNet()``; the
            weights it starts with are replaced). May be None only when the saved model is a
            single packed layer.

    Returns:
        The model, packed layers in place, in the factory's training mode (eval when it holds
        folded BatchNorms).

    Raises:
        ValueError: the file is not a sparseprune model file, is damaged or tampered with (a
            packed buffer out of range, a shape that does not fit), or does not fit the
            factory's model (the message names the layer).
    """
    data = read_weights_only(path, "model")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path} is not a sparseprune model file (format {fmt!r}; "
                         f"sparseprune.save writes {FORMAT!r})")
    packed, sd = data.get("packed"), data.get("state_dict")
    identities = data.get("identity", [])
    if not isinstance(packed, dict) or not isinstance(sd, dict) or not isinstance(
            identities, list) or not all(isinstance(n, str) for n in [*packed, *identities]):
        raise ValueError(f"{path}: a model file holds 'packed', 'identity' and 'state_dict'")
    specs = {name: _check_spec(name, spec, path) for name, spec in packed.items()}
    compact = data.get("compact", [])
    if not isinstance(compact, list) or not all(
            isinstance(p, str) and (p == "" or p[:-1] in specs) for p in compact):
        raise ValueError(f"{path}: 'compact' must list packed layers' state_dict prefixes")
    sd = dict(sd)
    for prefix in compact:
        _expand(sd, prefix, path)
    if model_factory is None:
        if set(specs) != {""}:
            raise ValueError(f"{path}: holds a {len(specs)}-packed-layer model; pass "
                             "model_factory=... to build its architecture (the file holds "
                             "weights and sizes, no code)")
        model = _packed_layer("", specs[""], sd, path)
        model.load_state_dict(sd, strict=True)
        return model
    model = model_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"load: model_factory returned {type(model).__name__}, not an "
                        "nn.Module")
    for name in [*identities, *specs]:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: {type(model).__name__} from model_factory has no "
                             f"module {name!r}") from None
    for name in identities:
        model = _set(model, name, nn.Identity())
    for name, spec in specs.items():
        model = _set(model, name, _packed_layer(name, spec, sd, path))
    apply_widths(model, data.get("widths"), sd, path)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:  # missing/unexpected keys, size mismatches
        raise ValueError(f"{path}: does not fit {type(model).__name__}: "
                         f"{str(err).splitlines()[0]}") from None
    pools = data.get("native_pools", [])
    if not isinstance(pools, list) or not all(isinstance(n, str) for n in pools):
        raise ValueError(f"{path}: 'native_pools' must list module names")
    for name in pools:  # the pools convert() ran natively run so again
        try:
            pool = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"{path}: {type(model).__name__} from model_factory has no "
                             f"module {name!r}") from None
        if type(pool) is nn.MaxPool2d and not pool.return_indices:
            model = _set(model, name, MaxPool2d.from_torch(pool))
    if identities:
        model.eval()  # BatchNorms folded into a packed conv are inference-only
    return model
