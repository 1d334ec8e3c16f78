"""``sparseprune inspect`` / ``sparseprune convert`` on the user's saved models.

A file may hold a whole ``nn.Module`` (``torch.save(model)``), a state_dict, or a checkpoint dict
with a ``"state_dict"`` / ``"model"`` entry (``save_pruned`` files included). It is loaded with
``torch.load(weights_only=True)`` unless the caller allows more (``unsafe=True``,
``--unsafe-load``), which runs the file's pickled code: only for files you trust.
"""

from __future__ import annotations

import fnmatch
import os
import pickle
import re
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from .._timing import interleaved
from .._weights import masked
from ..formats import parse_header
from ..formats.base import claims_more_than_it_holds, describe_tensor
from ..pruning.summary import LayerSummary, tensor_bytes

__all__ = ["LayerInfo", "ModelFileError", "convert_file", "inspect_state", "load_model_file",
           "read_model_file"]

_HEADER = "format_header"


class ModelFileError(ValueError):
    """The file cannot be read as a model or state_dict; the message says why and what to do."""


def load_model_file(path: str | os.PathLike, unsafe: bool = False
                    ) -> tuple[nn.Module | None, dict[str, Tensor]]:
    """``(module or None, state_dict)`` from a ``torch.save`` file (tensor entries only; see
    :func:`read_model_file` for the others).

    Raises:
        ModelFileError: missing file, not a torch save, needs code to unpickle (with
            ``unsafe=False``), or holds no state_dict.
    """
    module, state, _ = read_model_file(path, unsafe)
    return module, state


def read_model_file(path: str | os.PathLike, unsafe: bool = False
                    ) -> tuple[nn.Module | None, dict[str, Tensor], dict[str, object]]:
    """``(module or None, tensors, others)`` from a ``torch.save`` file.

    ``tensors`` are the state_dict's tensor entries; ``others`` its non-tensor entries
    (``get_extra_state`` values, an ``"epoch"`` saved next to the weights), which the callers
    name and pass through but do not analyse.

    Raises:
        ModelFileError: as :func:`load_model_file`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelFileError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive (PK..); the legacy format is a pickle (protocol 2+: 0x80).
    if not (magic.startswith(b"PK") or magic[:1] == b"\x80"):
        raise ModelFileError(f"{path}: not a torch save file (it starts with {magic!r}, not a "
                             "zip archive or a pickle)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(err))
        if unsafe or found is None:
            raise ModelFileError(f"{path}: cannot be read as a torch save file "
                                 f"({_first_line(err)})") from err
        raise ModelFileError(
            f"{path}: loading it needs code to unpickle ({found.group(0)}: the file holds "
            "Python objects, e.g. a whole nn.Module, not only tensors). It was read with "
            "torch.load(weights_only=True). If you trust the file, pass --unsafe-load "
            "(torch.load(weights_only=False), which runs code from the file), or re-save it "
            "with torch.save(model.state_dict(), path).") from err
    except Exception as err:  # a corrupt or truncated file fails in many ways inside torch
        raise ModelFileError(f"{path}: not a readable torch save file ({type(err).__name__}: "
                             f"{_first_line(err)})") from err
    if isinstance(obj, nn.Module):
        return (obj, *_split(obj.state_dict()))
    state = obj
    if isinstance(obj, Mapping) and not _all_tensors(obj):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return (inner, *_split(inner.state_dict()))
            if isinstance(inner, Mapping) and _any_tensors(inner):
                state = inner
                break
    if not isinstance(state, Mapping) or not _any_tensors(state):
        what = f"a dict with keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) \
            else type(obj).__name__
        raise ModelFileError(f"{path}: found {what}, not a model or a state_dict (a dict of "
                             "tensors, or a checkpoint with a 'state_dict' entry)")
    return (None, *_split(state, path))


def _split(state: Mapping, path: object = None) -> tuple[dict[str, Tensor], dict[str, object]]:
    tensors = {k: v for k, v in state.items() if isinstance(v, Tensor)}
    if path is not None:  # a file's tensors: reported and packed, so read; check them first
        for key, t in tensors.items():
            if t.layout != torch.strided or t.device.type != "cpu":
                raise ModelFileError(f"{path}: {key} is a {describe_tensor(t)}; a state_dict "
                                     "entry must be a dense CPU tensor")
            if claims_more_than_it_holds(t):
                raise ModelFileError(f"{path}: {key} claims {t.numel()} entries but its "
                                     f"storage holds {t.untyped_storage().nbytes()} bytes (an "
                                     "expanded view); refusing to read it")
    return tensors, {k: v for k, v in state.items() if not isinstance(v, Tensor)}


def _any_tensors(d: Mapping) -> bool:
    return any(isinstance(v, Tensor) for v in d.values())


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _all_tensors(d: Mapping) -> bool:
    return all(isinstance(v, Tensor) for v in d.values())


# One weight tensor of a state_dict: the same row as ``sparseprune.summary`` gives for a
# module (``type`` is "" where no module names it, "SparseLinear" for packed layers).
LayerInfo = LayerSummary


def _pattern(w: Tensor) -> str:
    """What the zeros of ``w`` ([out, ...]) look like."""
    if w.dim() < 2:
        return "vector"
    if w.numel() == 0:
        return "empty"
    nz = w.reshape(w.shape[0], -1) != 0
    if bool(nz.all()):
        return "dense"
    parts = []
    k = nz.shape[1]
    for n_of, m in ((1, 4), (2, 4), (4, 8)):  # tightest first: 1:4 is also 2:4 and 4:8
        if k % m == 0 and int(nz.reshape(nz.shape[0], -1, m).sum(-1).max()) <= n_of:
            parts.append(f"{n_of}:{m}")
            break
    empty_rows = int((~nz.any(1)).sum())
    if empty_rows:
        parts.append(f"{empty_rows} empty rows")
    return ", ".join(parts) if parts else "unstructured"


def effective_weights(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``{'fc.weight': tensor}``: the float tensors, ``*_orig * *_mask`` folded (masks and
    non-float entries left out)."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, Tensor) or key.endswith("_mask") or \
                not value.is_floating_point():
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            mask = state.get(base + "_mask")
            out[base] = masked(value, mask)
        else:
            out[key] = value
    return out


def _packed_layers(state: Mapping[str, Tensor]) -> dict[str, object]:
    """``{prefix: PackedWeight}`` for every packed layer of a state_dict, each validated in full
    (a tampered entry raises ValueError naming the layer, before anything reports on it)."""
    out = {}
    for key, header in state.items():
        if key != _HEADER and not key.endswith("." + _HEADER):
            continue
        prefix = key[: -len(_HEADER)].rstrip(".")
        where = prefix or "(root)"
        cls, shape, params = parse_header(header, name=where)
        dot = prefix + "." if prefix else ""
        missing = [b for b in cls.BUFFERS if dot + b not in state]
        if missing:
            raise ValueError(f"{where}: packed {cls.NAME} weight without {missing}")
        out[prefix] = cls.from_tensors({b: state[dot + b] for b in cls.BUFFERS}, shape, params,
                                       name=where)
    return out


def inspect_state(state: Mapping[str, Tensor]) -> list[LayerInfo]:
    """Per weight (``*.weight`` with 2+ dims, and packed layers) of a state_dict.

    Packed layers are validated first and reported with their real packed bytes; for dense
    weights the packed size is the CSR estimate of :func:`sparseprune.summary`.
    """
    rows = []
    packed = _packed_layers(state)
    packed_keys = {(p + "." if p else "") + b for p, w in packed.items()
                   for b in (*w.BUFFERS, _HEADER)}
    for prefix, w in packed.items():
        # Nonzero stored values (positions are unique once validated); never densified: a
        # valid header may claim 2**31 columns.
        nnz = int((w.tensors()["values"] != 0).sum())
        rows.append(LayerInfo(
            name=prefix or "(root)", param="weight", type="SparseLinear", shape=w.shape,
            params=w.rows * w.cols, nonzeros=nnz, pattern=f"packed {w.NAME}",
            dense_bytes=w.rows * w.cols * 4, packed_bytes=w.nbytes))
    for key, w in effective_weights(state).items():
        if key in packed_keys:
            continue
        if not (key == "weight" or key.endswith(".weight")) or w.dim() < 2:
            continue
        nnz, dense, packed_bytes = tensor_bytes(w)
        rows.append(LayerInfo(
            name=key.rpartition(".")[0] or key, param="weight", type="", shape=tuple(w.shape),
            params=w.numel(), nonzeros=nnz, pattern=_pattern(w), dense_bytes=dense,
            packed_bytes=packed_bytes))
    return rows


def format_layers(rows: list[LayerInfo]) -> str:
    head = ("layer", "shape", "params", "nonzeros", "sparsity", "pattern", "dense B", "CSR B")
    body = [(r.name, "x".join(map(str, r.shape)), f"{r.params:,}", f"{r.nonzeros:,}",
             f"{r.sparsity:.1%}", r.pattern, f"{r.dense_bytes:,}", f"{r.packed_bytes:,}")
            for r in rows]
    params, nnz = sum(r.params for r in rows), sum(r.nonzeros for r in rows)
    total = ("total", "", f"{params:,}", f"{nnz:,}", f"{1 - nnz / params:.1%}" if params else "",
             "", f"{sum(r.dense_bytes for r in rows):,}", f"{sum(r.packed_bytes for r in rows):,}")
    widths = [max(len(c) for c in col) for col in zip(head, *body, total, strict=True)]
    num = {2, 3, 4, 6, 7}
    fmt = "  ".join(f"{{:{'>' if i in num else '<'}{w}}}" for i, w in enumerate(widths))
    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([fmt.format(*head), rule, *(fmt.format(*b) for b in body), rule,
                      fmt.format(*total)])


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)


def convert_file(path: str | os.PathLike, out: str | os.PathLike, *, unsafe: bool = False,
                 min_sparsity: float = 0.5, exclude: list[str] | None = None,
                 batches: tuple[int, ...] = (1, 64), calls: int = 20) -> str:
    """Pack a pruned model file's eligible Linear weights; returns the report text.

    A whole module (``unsafe=True``) goes through :func:`sparseprune.convert` and is saved as a
    module. A state_dict's 2-D ``*.weight`` tensors (masks folded) are packed as ``nn.Linear``
    weights (``exclude`` others, e.g. embeddings) and saved as a state_dict that a converted model
    loads (``SparseLinear`` keys: ``format_header`` and the format's buffers).
    Each packed layer is timed against dense ``F.linear`` at ``batches``.
    """
    from ..convert import convert
    from ..nn import SparseLinear

    exclude = list(exclude or [])
    if not 0.0 <= float(min_sparsity) <= 1.0:  # the same checks as convert() for modules
        raise ValueError(f"convert: min_sparsity must be in [0, 1], got {min_sparsity}")
    module, state, others = read_model_file(path, unsafe=unsafe)
    timings: list[tuple[str, nn.Linear, SparseLinear]] = []
    if module is not None:
        sparse, report = convert(module, min_sparsity=min_sparsity, exclude=exclude or None)
        lines = [str(report)]
        for row in report.converted:
            timings.append((row.name, _as_linear(module.get_submodule(row.name)),
                            sparse.get_submodule(row.name)))
        torch.save(sparse, out)
        if others:
            lines.append(f"non-tensor state entries (kept in the module): {_names(others)}")
    else:
        _packed_layers(state)  # packed entries are validated before anything is written
        weights = effective_weights(state)
        names = [k.rpartition(".")[0] for k, w in weights.items()
                 if (k.endswith(".weight") or k == "weight") and w.dim() == 2]
        unused = [p for p in exclude if not any(_matches(n, [p]) for n in names)]
        if unused:
            raise ValueError(f"convert: exclude pattern(s) {unused} match no 2-D weight; "
                             f"candidates are {names}")
        new: dict[str, Tensor] = {}
        lines = [f"{'layer':<32} {'shape':<14} {'sparsity':>8}  result"]
        done: set[str] = set()  # plain names (``fc.weight``) packed into a SparseLinear
        for key, w in weights.items():
            prefix = key.rpartition(".")[0]
            if not (key.endswith(".weight") or key == "weight") or w.dim() != 2 or \
                    not w.is_floating_point():
                continue
            sparsity = float((w == 0).sum()) / w.numel() if w.numel() else 0.0
            result = None
            if w.numel() == 0:
                result = "skipped: empty"
            elif _matches(prefix, exclude):
                result = "skipped: excluded"
            elif sparsity < min_sparsity:
                result = f"skipped: sparsity {sparsity:.3f} < min_sparsity {min_sparsity}"
            if result is None:
                bias = weights.get(f"{prefix}.bias" if prefix else "bias")
                lin = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if bias is not None:
                        lin.bias.copy_(bias)
                packed = SparseLinear.from_dense(lin, name=prefix)
                for k, v in packed.state_dict().items():
                    new[f"{prefix}.{k}" if prefix else k] = v
                done.update({key, f"{prefix}.bias" if prefix else "bias"})
                timings.append((prefix, lin, packed))
                result = packed.format
            lines.append(f"{prefix or '(root)':<32} {'x'.join(map(str, w.shape)):<14} "
                         f"{sparsity:>8.3f}  {result}")
        for key, value in state.items():  # everything else as it was, masks folded
            base = key[: -len("_orig")] if key.endswith("_orig") else key
            if key.endswith("_mask") and f"{key[: -len('_mask')]}_orig" in state:
                continue
            if base in done:
                continue
            new[base] = weights[base] if base != key else value
        new.update(others)
        if others:
            lines.append(f"non-tensor entries copied as they are: {_names(others)}")
        lines.append(f"{len(timings)} converted (state_dict input: every 2-D '*.weight' is "
                     "treated as an nn.Linear weight; --exclude others, e.g. embeddings)")
        torch.save(new, out)
    if timings:
        lines += ["", f"measured speed, {torch.get_num_threads()} thread(s), ms per call:",
                  f"{'layer':<32} " + "  ".join(f"{'b' + str(b) + ' dense':>10} "
                                                f"{'sparse':>8} {'speedup':>7}" for b in batches)]
        with torch.inference_mode():
            for name, lin, packed in timings:
                cells = []
                for b in batches:
                    x = torch.randn(b, lin.in_features)
                    ts, td, _ = interleaved(lambda x=x, p=packed: p(x),
                                            lambda x=x, lin=lin: lin(x), calls, rounds=5)
                    cells.append(f"{td * 1e3:>10.3f} {ts * 1e3:>8.3f} {td / ts:>6.2f}x")
                lines.append(f"{name or '(root)':<32} " + "  ".join(cells))
    lines.append(f"\nwrote {os.fspath(out)}")
    return "\n".join(lines)


def _names(others: Mapping[str, object]) -> str:
    return ", ".join(map(str, others))


def _as_linear(module: nn.Module) -> nn.Linear:
    """A plain dense copy (masks folded) of a Linear, for the dense timing."""
    from .._weights import effective_weight

    lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
    with torch.no_grad():
        lin.weight.copy_(effective_weight(module))
        if module.bias is not None:
            lin.bias.copy_(module.bias.detach())
    return lin
