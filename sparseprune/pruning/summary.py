"""``summary(model)``: per-layer sparsity and the model's size dense vs packed.

Packed size is an estimate for CSR, the format any mask can use: values ``e * nnz`` (``e`` = element
size, 4 B for float32) + column indices ``2 B * nnz`` when the flattened input dim is <= 65536
(uint16) else ``4 B * nnz`` + row pointers ``8 B * (rows + 1)``. A tensor counts as the smaller of
that and dense (``e * numel``), since nothing would store it larger.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from .masks import effective_weight, is_masked, masked_tensors, pattern_label, trainable
from .scope import DEFAULT_TYPES

__all__ = ["LayerSummary", "Summary", "csr_bytes", "summary", "tensor_bytes"]


def csr_bytes(rows: int, cols: int, nnz: int, element_size: int = 4) -> int:
    """Bytes of a CSR matrix ``[rows, cols]`` with ``nnz`` stored values.

    Args:
        rows: number of rows (output features).
        cols: flattened input dim; decides 2- or 4-byte column indices.
        nnz: stored nonzeros.
        element_size: bytes per value (4 for float32).
    """
    index = 2 if cols <= 65536 else 4
    return element_size * nnz + index * nnz + 8 * (rows + 1)


def tensor_bytes(weight: Tensor) -> tuple[int, int, int]:
    """``(nnz, dense_bytes, packed_bytes)`` of a tensor ([rows, ...], 1-D as one row).

    ``packed_bytes`` is the smaller of the :func:`csr_bytes` estimate and dense; an empty tensor
    (a zero in its shape) is ``(0, 0, 0)``.
    """
    if weight.numel() == 0:
        return 0, 0, 0
    rows = 1 if weight.dim() <= 1 else weight.shape[0]
    cols = weight.numel() // rows
    nnz = int(torch.count_nonzero(weight))
    dense = weight.numel() * weight.element_size()
    return nnz, dense, min(dense, csr_bytes(rows, cols, nnz, weight.element_size()))


@dataclass(frozen=True)
class LayerSummary:
    """One tensor's row of the table. ``nonzeros`` counts the effective weight ``orig * mask``."""

    name: str
    param: str
    type: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    pattern: str
    dense_bytes: int
    packed_bytes: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.params if self.params else 0.0


@dataclass(frozen=True)
class Summary:
    """Result of :func:`summary`: ``rows``, totals, and model bytes; ``str()`` is a table.

    Attributes:
        rows: the prunable / pruned tensors in model order.
        dense_bytes: every parameter and buffer of the model (masks excluded, ``*_orig`` counted
            once as its tensor) stored dense.
        packed_bytes: the same with each row's tensor at its ``packed_bytes``.
    """

    rows: tuple[LayerSummary, ...]
    dense_bytes: int
    packed_bytes: int

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def nonzeros(self) -> int:
        return sum(r.nonzeros for r in self.rows)

    @property
    def sparsity(self) -> float:
        """Over the listed tensors."""
        return 1.0 - self.nonzeros / self.params if self.params else 0.0

    def to_dicts(self) -> list[dict[str, object]]:
        """One plain dict per row (``sparsity`` included), no pandas needed."""
        return [{**asdict(r), "shape": list(r.shape), "sparsity": r.sparsity} for r in self.rows]

    def __str__(self) -> str:
        head = ("name", "type", "shape", "params", "nonzeros", "sparsity", "pattern")
        body = [
            (f"{r.name}.{r.param}" if r.name else r.param, r.type, "x".join(map(str, r.shape)),
             f"{r.params:,}", f"{r.nonzeros:,}", f"{r.sparsity:.2%}", r.pattern)
            for r in self.rows
        ]
        total = ("total", "", "", f"{self.params:,}", f"{self.nonzeros:,}",
                 f"{self.sparsity:.2%}", "")
        widths = [max(len(x) for x in col) for col in zip(head, *body, total, strict=False)]
        numeric = {3, 4, 5}
        fmt = "  ".join(f"{{:{'>' if i in numeric else '<'}{w}}}" for i, w in enumerate(widths))
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        lines = [fmt.format(*head), rule, *(fmt.format(*row) for row in body), rule,
                 fmt.format(*total),
                 f"model size: {_human(self.dense_bytes)} dense, {_human(self.packed_bytes)} "
                 f"packed (CSR estimate, {self.dense_bytes / max(self.packed_bytes, 1):.2f}x)"]
        return "\n".join(line.rstrip() for line in lines)


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024**2:
        return f"{n / 1024:.2f} KiB"
    return f"{n / 1024**2:.2f} MiB"


def _row(name: str, module: nn.Module, param: str) -> LayerSummary:
    weight = effective_weight(module, param)
    nnz, dense, packed = tensor_bytes(weight)
    pattern = pattern_label(module, param)
    if pattern == "dense" and nnz < weight.numel():
        pattern = "zeros, no mask"  # e.g. after sparseprune.remove: the pattern is not recorded
    return LayerSummary(
        name=name, param=param, type=type(module).__name__, shape=tuple(weight.shape),
        params=weight.numel(), nonzeros=nnz, pattern=pattern,
        dense_bytes=dense, packed_bytes=packed,
    )


def _state_bytes(model: nn.Module) -> int:
    total = 0
    for module in model.modules():
        for tensor in module._parameters.values():
            if tensor is not None:
                total += tensor.numel() * tensor.element_size()
        for key, tensor in module._buffers.items():
            masks_a_tensor = key.endswith("_mask") and is_masked(module, key[: -len("_mask")])
            if tensor is not None and not masks_a_tensor:
                total += tensor.numel() * tensor.element_size()
    return total


def summary(model: nn.Module, param: str = "weight") -> Summary:
    """Per-layer table of the model's prunable and pruned tensors.

    Rows: ``<param>`` of every Linear and Conv1d/2d/3d, plus every tensor with a pruning mask
    (ours or ``torch.nn.utils.prune``'s), in model order.

    Args:
        model: the model (masked or not, or after :func:`sparseprune.remove`).
        param: the parameter listed for Linear / ConvNd layers.

    Returns:
        A :class:`Summary`; ``print`` it for the table, ``.to_dicts()`` for programs.
    """
    wanted: dict[tuple[int, str], tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if isinstance(module, DEFAULT_TYPES):
            try:
                trainable(module, param)
            except AttributeError:
                continue
            wanted[(id(module), param)] = (name, module)
    for target in masked_tensors(model):
        wanted.setdefault((id(target.module), target.param), (target.name, target.module))
    order = {id(m): i for i, m in enumerate(model.modules())}
    keys = sorted(wanted, key=lambda k: (order[k[0]], k[1] != param, k[1]))  # param first
    rows = tuple(_row(*wanted[k], k[1]) for k in keys)
    dense = _state_bytes(model)
    saved = sum(r.dense_bytes - r.packed_bytes for r in rows)
    return Summary(rows=rows, dense_bytes=dense, packed_bytes=dense - saved)
