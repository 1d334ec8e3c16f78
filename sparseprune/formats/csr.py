"""CSR and K-blocked SELL-C: the unstructured formats. Both store the same canonical buffers.

Buffer layout (all contiguous, CPU), W ``[rows, cols]`` (rows = output features):

- ``row_ptr``: int64 ``[rows + 1]``; row ``o``'s entries are ``row_ptr[o]:row_ptr[o + 1]``.
- ``col_idx``: uint16 ``[nnz]`` when ``cols <= 65536`` (2 B per nonzero), else int32; sorted and
  unique within each row.
- ``values``: float32 ``[nnz]``.

``CSR`` runs these buffers as they are. ``SELL`` re-lays them out natively into tiles of 128 rows
x 256 columns, rows sorted by length and run 4 at a time in lockstep with uint8 column offsets
(~5 B per nonzero; csrc/formats/sell_weight.h): the faster layout at every batch size on the
shapes measured. A SELL weight gives the CSR buffers back for a state_dict (stored exact zeros
are dropped: they cannot be told from its padding, and never change a result).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .base import PackedWeight, register_format

__all__ = ["CSR", "SELL"]

_UINT16_MAX_COLS = 1 << 16  # uint16 indexes at most 65536 columns (0..65535)


def _index_dtype(cols: int) -> torch.dtype:
    return torch.uint16 if cols <= _UINT16_MAX_COLS else torch.int32


@register_format
class CSR(PackedWeight):
    """Compressed sparse rows; any unstructured mask."""

    NAME = "csr"
    FORMAT_ID = 1
    BUFFERS = ("row_ptr", "col_idx", "values")
    NATIVE = "CsrWeight"

    @classmethod
    def pack(cls, weight, keep, params, *, name):
        rows, cols = weight.shape
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(keep.sum(dim=1), dim=0, out=row_ptr[1:])
        # nonzero() walks row-major, so column indices come out sorted within each row.
        col_idx = keep.nonzero()[:, 1].to(torch.int32).to(_index_dtype(cols)).contiguous()
        return {"row_ptr": row_ptr, "col_idx": col_idx, "values": weight[keep].contiguous()}

    @classmethod
    def dtypes(cls, shape):
        return {"row_ptr": torch.int64, "col_idx": _index_dtype(shape[1]),
                "values": torch.float32}

    @classmethod
    def expected_sizes(cls, shape, params, tensors: Mapping[str, torch.Tensor]):
        rows, cols = shape
        nnz = tensors["values"].numel()
        if nnz > rows * cols:  # refused before any copy (an expanded tensor may claim GiBs)
            raise ValueError(f"values has {nnz} entries, more than rows * cols = {rows * cols}")
        return {"row_ptr": rows + 1, "col_idx": nnz}

    def to_dense(self) -> torch.Tensor:
        t = self.tensors()
        dense = torch.zeros(self.shape, dtype=torch.float32)
        counts = t["row_ptr"][1:] - t["row_ptr"][:-1]
        rows = torch.repeat_interleave(torch.arange(self.rows), counts)
        dense[rows, t["col_idx"].to(torch.int64)] = t["values"]
        return dense


@register_format
class SELL(CSR):
    """K-blocked SELL-C (C = 4) built natively from CSR buffers; any unstructured mask."""

    NAME = "sell"
    FORMAT_ID = 2
    NATIVE = "SellWeight"
