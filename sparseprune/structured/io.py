"""Save and load pruned models as a plain state_dict plus a small width config.

No module is pickled and no pruning history is replayed: ``load_pruned(factory, path)`` builds a
fresh model with ``factory()``, sets the recorded width attributes, resizes the tensors whose
shapes changed and loads the state_dict. The file loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable

import torch
from torch import nn

from .fold import FOLDED_ATTR, folded_batchnorms
from .mha import mark_head_pruned
from .norms import PrunedLayerNorm, to_pruned_layer_norm
from .rules import HEAD_ATTRS
from .rules.shapes import WIDTH_NAME_ATTRS
from .window_attention import mark_window_pruned

__all__ = ["WIDTH_ATTRS", "apply_widths", "load_pruned", "read_weights_only", "save_pruned",
           "width_config"]

FORMAT = "sparseprune.structured/1"

# Module attributes that describe widths; recorded when they are ints.
WIDTH_ATTRS = (
    "in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
    "num_groups", "num_channels", "num_parameters", "embedding_dim", "kdim", "vdim",
    *HEAD_ATTRS, *WIDTH_NAME_ATTRS,
)
# Generic names (``dim``, ``width``, ...) are recorded only as plain positive int attributes:
# ``nn.Softmax(dim=-1)`` or a read-only ``width`` property is not a width.
_GENERIC = frozenset(WIDTH_NAME_ATTRS) - {"embed_dim"}


def _width_attrs(mod: nn.Module) -> dict[str, int]:
    found = {}
    for a in WIDTH_ATTRS:
        v = getattr(mod, a, None) if a not in _GENERIC else mod.__dict__.get(a)
        if isinstance(v, int) and not isinstance(v, bool) and (a not in _GENERIC or v > 0):
            found[a] = v
    return found


def width_config(model: nn.Module) -> dict:
    """``{"attrs": {module: {attr: int}}, "shapes": {tensor: [sizes]}, "folded": {bn: conv}}``.

    ``folded`` lists the BatchNorms that ``fold_batchnorm`` replaced by ``nn.Identity`` (in
    ``model`` or any submodule); ``load_pruned`` replaces them again and returns eval mode.
    """
    attrs = {}
    for name, mod in model.named_modules():
        found = _width_attrs(mod)
        if isinstance(mod, (nn.LayerNorm, nn.RMSNorm)):  # widths shrink with layer_norm=...
            found["normalized_shape"] = list(mod.normalized_shape)
            found["eps"] = mod.eps
        if isinstance(mod, PrunedLayerNorm):
            found["full_width"] = mod.full_width
            found["channel_dim"] = mod.channel_dim
        if found:
            attrs[name] = found
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"attrs": attrs, "shapes": shapes, "folded": folded_batchnorms(model)}


def save_pruned(model: nn.Module, path: str | os.PathLike) -> None:
    """Write ``model``'s state_dict and width config to ``path`` (one ``torch.save`` file)."""
    torch.save({"format": FORMAT, "widths": width_config(model),
                "state_dict": model.state_dict()}, path)


def load_pruned(factory: Callable[[], nn.Module], path: str | os.PathLike) -> nn.Module:
    """Rebuild a pruned model: ``factory()`` makes the unpruned architecture.

    Raises:
        ValueError: the file is not a pruned-model file, or does not fit ``factory()``'s model.
    """
    data = read_weights_only(path, "structured model")
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a sparseprune structured model file (format "
                         f"{data.get('format') if isinstance(data, dict) else type(data)})")
    if not isinstance(data.get("state_dict"), dict) or "widths" not in data:
        raise ValueError(f"{path}: a structured model file holds 'widths' and 'state_dict'")
    model = factory()
    apply_widths(model, data["widths"], data["state_dict"], path)
    model.load_state_dict(data["state_dict"], strict=True)
    if folded_batchnorms(model):
        model.eval()  # folded BatchNorms are inference-only, as fold_batchnorm returned them
    return model


def read_weights_only(path: str | os.PathLike, what: str) -> object:
    """``torch.load(path, weights_only=True)`` on the CPU; a damaged file is a ValueError."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (EOFError, RuntimeError, ValueError, OSError, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable sparseprune {what} file ({first})") from None


def apply_widths(model: nn.Module, widths: dict, sd: dict, path: object) -> None:
    """Set ``widths`` (from :func:`width_config`) on ``model`` and resize its tensors to the
    recorded shapes (empty: ``load_state_dict`` fills them). Raises ValueError on a mismatch."""
    if not isinstance(widths, dict) or not isinstance(widths.get("attrs"), dict) or \
            not isinstance(widths.get("shapes"), dict):
        raise ValueError(f"{path}: the width config must hold 'attrs' and 'shapes' dicts")
    mods = dict(model.named_modules())
    for name, attrs in widths["attrs"].items():
        if name not in mods:
            raise ValueError(f"{path}: module {name!r} not in {type(model).__name__}")
        if not isinstance(attrs, dict):
            raise ValueError(f"{path}: module {name!r}: widths must be a dict")
        counted = {a: attrs[a] for a in ("full_width", "channel_dim") if a in attrs}
        for attr, value in attrs.items():
            if attr in counted:
                continue  # set below, with normalized_shape
            if attr == "normalized_shape" and isinstance(value, list) and all(
                isinstance(v, int) for v in value
            ):
                value = tuple(value)
            elif attr == "eps" and (value is None or isinstance(value, float)):
                pass
            elif attr not in WIDTH_ATTRS or not isinstance(value, int) or value < 0:
                raise ValueError(f"{path}: module {name!r}: {attr}={value!r} is not a width "
                                 f"attribute (expected an int >= 0 for one of {WIDTH_ATTRS})")
            try:  # a packed layer's sizes are fixed: it refuses with AttributeError
                setattr(mods[name], attr, value)
            except (AttributeError, TypeError, ValueError) as err:
                raise ValueError(f"{path}: module {name!r}: cannot set {attr}={value!r} "
                                 f"({err})") from None
        if counted:
            _make_pruned_norm(mods[name], name, counted, path)
    mark_head_pruned(model)
    mark_window_pruned(model)
    _refold(model, widths.get("folded", {}), path)
    mods = dict(model.named_modules())
    for key, shape in widths["shapes"].items():
        mod_name, _, attr = key.rpartition(".")
        mod = mods.get(mod_name)
        old = getattr(mod, attr, None) if mod is not None else None
        if not isinstance(old, torch.Tensor):
            raise ValueError(f"{path}: tensor {key!r} not in {type(model).__name__}")
        if not isinstance(shape, list) or not all(isinstance(v, int) and v >= 0 for v in shape):
            raise ValueError(f"{path}: tensor {key!r}: recorded shape {shape!r} is not a list "
                             "of sizes")
        if list(old.shape) == list(shape):
            continue
        if key not in sd or not isinstance(sd[key], torch.Tensor):
            raise ValueError(f"{path}: the state_dict has no tensor {key!r} for the recorded "
                             f"shape {list(shape)}")
        if list(sd[key].shape) != list(shape):
            # Checked before allocating: a recorded shape must be the stored tensor's.
            raise ValueError(f"{path}: tensor {key!r} is stored as {list(sd[key].shape)} but "
                             f"recorded as {list(shape)}")
        new = torch.empty(shape, dtype=sd[key].dtype)
        if isinstance(old, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            mod._buffers[attr] = new


def _make_pruned_norm(mod: nn.Module, name: str, counted: dict, path: object) -> None:
    """A LayerNorm recorded as a ``PrunedLayerNorm`` becomes one again."""
    if set(counted) != {"full_width", "channel_dim"} or not isinstance(mod, nn.LayerNorm):
        raise ValueError(f"{path}: module {name!r}: full_width/channel_dim {counted!r} need "
                         f"both keys on a LayerNorm, not a {type(mod).__name__}")
    try:
        to_pruned_layer_norm(mod, tuple(mod.normalized_shape)[0], counted["full_width"],
                             counted["channel_dim"])
    except (ValueError, IndexError) as err:
        raise ValueError(f"{path}: module {name!r}: {err}") from None


def _refold(model: nn.Module, folded: dict, path) -> None:
    """Replace the recorded BatchNorms by ``nn.Identity``; give their convs a bias."""
    if not isinstance(folded, dict):
        raise ValueError(f"{path}: 'folded' must map BatchNorm names to conv names")
    for bn_name, conv_name in folded.items():
        try:
            bn, conv = model.get_submodule(bn_name), model.get_submodule(conv_name)
        except AttributeError as exc:
            raise ValueError(f"{path}: folded pair {bn_name!r} -> {conv_name!r} not in "
                             f"{type(model).__name__}: {exc}") from None
        if not isinstance(bn, (nn.modules.batchnorm._BatchNorm, nn.Identity)) or not hasattr(
            conv, "out_channels"
        ):
            raise ValueError(f"{path}: folded pair {bn_name!r} -> {conv_name!r} is a "
                             f"{type(bn).__name__} -> {type(conv).__name__}, expected "
                             "BatchNorm -> conv")
        parent, _, attr = bn_name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, nn.Identity())
        if conv.bias is None:  # resized from the recorded shapes afterwards
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype,
                                                 device=conv.weight.device))
    setattr(model, FOLDED_ATTR, dict(folded))
