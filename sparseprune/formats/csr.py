"""CSR packing of a 2-D float32 weight ``W [rows, cols]`` (rows = output features).

Buffer layout (all contiguous, CPU):

- ``row_ptr``: int64 ``[rows + 1]``; row ``o``'s entries are ``row_ptr[o]:row_ptr[o + 1]``.
  (int64 always: N + 1 entries cost nothing next to nnz, and one type keeps kernels simple.)
- ``col_idx``: uint16 ``[nnz]`` when ``cols <= 65536`` (2 B per nonzero), else int32; sorted and
  unique within each row.
- ``values``: float32 ``[nnz]``.

A packed weight also carries a header (see ``header()``): magic, format id, dtype id, layout
version, rows, cols; ``from_tensors`` checks it so data from a file is never trusted blindly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops

__all__ = ["CSR", "CSR_MAGIC", "CSR_LAYOUT_VERSION"]

CSR_MAGIC = 0x53505253  # "SPRS"
CSR_FORMAT_ID = 1
CSR_LAYOUT_VERSION = 1
_DTYPE_F32 = 1
# uint16 indexes at most 65536 columns (0..65535).
_UINT16_MAX_COLS = 1 << 16


def _index_dtype(cols: int) -> torch.dtype:
    return torch.uint16 if cols <= _UINT16_MAX_COLS else torch.int32


@dataclass(frozen=True, eq=False)
class CSR:
    """A float32 matrix ``[rows, cols]`` in compressed sparse row form.

    Build one with ``CSR.from_dense`` (packing) or ``CSR.from_tensors`` (validating existing
    buffers, e.g. from a state_dict); the constructor itself does not validate.
    """

    row_ptr: torch.Tensor
    col_idx: torch.Tensor
    values: torch.Tensor
    shape: tuple[int, int]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, *,
                   name: str = "weight") -> CSR:
        """Packs the nonzeros of ``weight`` (optionally only where ``mask`` is nonzero).

        Args:
            weight: [rows, cols] floating point (any float dtype; stored as float32), CPU.
            mask: optional [rows, cols] bool or 0/1 tensor; entries where it is 0 are dropped.
            name: used in error messages (e.g. the layer name).

        Exact zeros are never stored, so the packed sparsity is the true one. NaN and Inf values
        are kept as values (they propagate through the matmul like in torch).
        """
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D weight [rows, cols], got shape "
                             f"{tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise TypeError(f"{name}: expected a floating point weight, got {weight.dtype}")
        if weight.device.type != "cpu":
            raise ValueError(f"{name}: packing runs on CPU tensors, got one on {weight.device}")
        w = weight.detach().to(torch.float32)
        keep = w != 0
        if mask is not None:
            if tuple(mask.shape) != tuple(w.shape):
                raise ValueError(f"{name}: mask shape {tuple(mask.shape)} does not match weight "
                                 f"shape {tuple(w.shape)}")
            keep &= mask.detach().to("cpu") != 0
        rows, cols = w.shape
        row_ptr = torch.zeros(rows + 1, dtype=torch.int64)
        torch.cumsum(keep.sum(dim=1), dim=0, out=row_ptr[1:])
        # nonzero() walks row-major, so column indices come out sorted within each row.
        col_idx = keep.nonzero()[:, 1].to(torch.int32).to(_index_dtype(cols)).contiguous()
        values = w[keep].contiguous()
        return cls(row_ptr, col_idx, values, (int(rows), int(cols)))

    @classmethod
    def from_tensors(cls, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
                     shape: tuple[int, int], *, name: str = "weight") -> CSR:
        """Wraps existing buffers after a full validation; raises ValueError naming the problem."""
        rows, cols = (int(s) for s in shape)
        for what, t in (("row_ptr", row_ptr), ("col_idx", col_idx), ("values", values)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name}: {what} must be a tensor, got {type(t).__name__}")
            if t.dim() != 1:
                raise ValueError(f"{name}: {what} must be 1-D, got shape {tuple(t.shape)}")
        if rows < 0 or cols < 0:
            raise ValueError(f"{name}: negative shape {(rows, cols)}")
        if row_ptr.dtype != torch.int64:
            raise ValueError(f"{name}: row_ptr must be int64, got {row_ptr.dtype}")
        if col_idx.dtype != _index_dtype(cols):
            raise ValueError(f"{name}: col_idx must be {_index_dtype(cols)} for {cols} columns, "
                             f"got {col_idx.dtype}")
        if values.dtype != torch.float32:
            raise ValueError(f"{name}: values must be float32, got {values.dtype}")
        if row_ptr.numel() != rows + 1:
            raise ValueError(f"{name}: row_ptr has {row_ptr.numel()} entries, expected rows + 1 = "
                             f"{rows + 1}")
        row_ptr, col_idx, values = (t.detach().cpu().contiguous()
                                    for t in (row_ptr, col_idx, values))
        problem = ops.validate_csr(row_ptr, col_idx, values, cols)
        if problem:
            raise ValueError(f"{name}: invalid CSR data: {problem}")
        return cls(row_ptr, col_idx, values, (rows, cols))

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        """Stored nonzeros."""
        return int(self.values.numel())

    @property
    def sparsity(self) -> float:
        """Fraction of zeros, in [0, 1]; 1.0 for an empty (0-element) matrix."""
        total = self.rows * self.cols
        return 1.0 - self.nnz / total if total else 1.0

    @property
    def nbytes(self) -> int:
        """Bytes of the packed buffers (row_ptr + col_idx + values)."""
        return sum(t.numel() * t.element_size() for t in (self.row_ptr, self.col_idx, self.values))

    def to_dense(self) -> torch.Tensor:
        """The exact dense float32 matrix [rows, cols]."""
        dense = torch.zeros(self.shape, dtype=torch.float32)
        counts = self.row_ptr[1:] - self.row_ptr[:-1]
        rows = torch.repeat_interleave(torch.arange(self.rows), counts)
        dense[rows, self.col_idx.to(torch.int64)] = self.values
        return dense

    def header(self) -> torch.Tensor:
        """int64 [6]: magic, format id, dtype id, layout version, rows, cols."""
        return torch.tensor([CSR_MAGIC, CSR_FORMAT_ID, _DTYPE_F32, CSR_LAYOUT_VERSION,
                             self.rows, self.cols], dtype=torch.int64)

    @staticmethod
    def shape_from_header(header: torch.Tensor, *, name: str = "weight") -> tuple[int, int]:
        """Checks a header made by ``header()`` and returns (rows, cols)."""
        if not isinstance(header, torch.Tensor) or header.dtype != torch.int64 or \
                tuple(header.shape) != (6,):
            raise ValueError(f"{name}: format header must be an int64 tensor of shape (6,)")
        magic, fmt, dtype, version, rows, cols = (int(v) for v in header.tolist())
        if magic != CSR_MAGIC or fmt != CSR_FORMAT_ID:
            raise ValueError(f"{name}: not a sparseprune CSR weight (magic {magic:#x}, "
                             f"format {fmt})")
        if dtype != _DTYPE_F32:
            raise ValueError(f"{name}: unsupported value dtype id {dtype} (only float32)")
        if version != CSR_LAYOUT_VERSION:
            raise ValueError(f"{name}: CSR layout version {version} is not supported by this "
                             f"sparseprune (expects {CSR_LAYOUT_VERSION})")
        return rows, cols

    def __repr__(self) -> str:
        return (f"CSR(shape={self.shape}, nnz={self.nnz}, sparsity={self.sparsity:.3f}, "
                f"index={str(self.col_idx.dtype).replace('torch.', '')})")
