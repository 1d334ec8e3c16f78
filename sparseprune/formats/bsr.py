"""BSR: dense r x c blocks (r outputs x c inputs) on a block grid; any 1 <= r, c <= 16.

Buffer layout (canonical, all contiguous, CPU), W ``[rows, cols]``, ``block_rows =
ceil(rows / r)``, ``block_cols = ceil(cols / c)``:

- ``block_row_ptr``: int64 ``[block_rows + 1]``; block row i holds blocks
  ``block_row_ptr[i]:block_row_ptr[i + 1]``;
- ``block_col``: int32 ``[nblocks]``: block column indices, strictly increasing within a
  block row;
- ``values``: float32 ``[nblocks * r * c]``: each block row-major; entry (a, b) of block j of
  block row i is ``W[i * r + a, block_col[j] * c + b]``. Entries of edge blocks outside the
  matrix must be 0.

r x 1 blocks let one broadcast input feed r outputs (the batch-1 win); r x c blocks reuse each
activation-panel load r times at larger batches.
"""

from __future__ import annotations

import torch

from .base import PackedWeight, register_format

__all__ = ["BSR"]


@register_format
class BSR(PackedWeight):
    """Block sparse rows; params (r, c)."""

    NAME = "bsr"
    FORMAT_ID = 3
    BUFFERS = ("block_row_ptr", "block_col", "values")
    NATIVE = "BsrWeight"
    NUM_PARAMS = 2

    @classmethod
    def check_params(cls, params, *, name="weight"):
        super().check_params(params, name=name)
        r, c = params
        if not (1 <= r <= 16 and 1 <= c <= 16):
            raise ValueError(f"{name}: BSR blocks need 1 <= r, c <= 16, got {r}x{c}")

    @staticmethod
    def _grid(weight: torch.Tensor, r: int, c: int) -> torch.Tensor:
        """[rows, cols] -> [block_rows, block_cols, r, c], zero-padded at the edges."""
        rows, cols = weight.shape
        br, bc = -(-rows // r), -(-cols // c)
        padded = torch.zeros(br * r, bc * c, dtype=weight.dtype)
        padded[:rows, :cols] = weight
        return padded.reshape(br, r, bc, c).permute(0, 2, 1, 3)

    @classmethod
    def fill(cls, keep: torch.Tensor, r: int, c: int) -> float:
        """Stored values / kept values if packed with r x c blocks (1.0: a perfect block mask)."""
        kept = int(keep.sum())
        if kept == 0:
            return 1.0
        grid = cls._grid(keep.to(torch.uint8), r, c)
        blocks = int(grid.reshape(*grid.shape[:2], r * c).any(-1).sum())
        return blocks * r * c / kept

    @classmethod
    def pack(cls, weight, keep, params, *, name):
        r, c = params
        grid = cls._grid(weight * keep, r, c)  # masked entries are exact zeros (even NaN)
        grid_keep = cls._grid(keep, r, c).reshape(*grid.shape[:2], r * c).any(-1)
        counts = grid_keep.sum(1)
        block_row_ptr = torch.zeros(grid.shape[0] + 1, dtype=torch.int64)
        torch.cumsum(counts, 0, out=block_row_ptr[1:])
        nz = grid_keep.nonzero()
        return {"block_row_ptr": block_row_ptr,
                "block_col": nz[:, 1].to(torch.int32).contiguous(),
                "values": grid[nz[:, 0], nz[:, 1]].reshape(-1).contiguous()}

    @classmethod
    def dtypes(cls, shape):
        return {"block_row_ptr": torch.int64, "block_col": torch.int32, "values": torch.float32}

    @classmethod
    def expected_sizes(cls, shape, params, tensors):
        rows, cols = shape
        r, c = params
        br, bc = -(-rows // r), -(-cols // c)
        nblocks = tensors["block_col"].numel()
        if nblocks > br * bc:
            raise ValueError(f"block_col has {nblocks} entries, more than the {br * bc} blocks "
                             "of the grid")
        return {"block_row_ptr": br + 1, "values": nblocks * r * c}

    def to_dense(self) -> torch.Tensor:
        r, c = self.params
        t = self.tensors()
        br, bc = -(-self.rows // r), -(-self.cols // c)
        grid = torch.zeros(br, bc, r, c, dtype=torch.float32)
        counts = t["block_row_ptr"][1:] - t["block_row_ptr"][:-1]
        brow = torch.repeat_interleave(torch.arange(br), counts)
        grid[brow, t["block_col"].to(torch.int64)] = t["values"].reshape(-1, r, c)
        return grid.permute(0, 2, 1, 3).reshape(br * r, bc * c)[: self.rows, : self.cols].clone()

    @property
    def nnz(self) -> int:
        """Stored nonzero values (zeros inside blocks excluded)."""
        return int((self.tensors()["values"] != 0).sum())
