"""N:M along the input dimension: every group of M consecutive inputs of a row keeps at most N
values (2:4, 1:4, 4:8 fast; any 1 <= N < M <= 16 correct).

Buffer layout (canonical, all contiguous, CPU), W ``[rows, cols]``, ``groups = ceil(cols / m)``:

- ``values``: float32 ``[rows * groups * n]``: row-major ``[rows, groups, n]``;
- ``pos``: uint8 ``[rows * groups * n]``: the in-group position of each value, strictly
  increasing within a group, ``< m``. Value j of group g of row o sits at column
  ``g * m + pos``.

A group with fewer than N kept values is padded with zero-valued slots at unused positions; a
slot at a column ``>= cols`` (the last, short group) must hold 0. The native ``NmWeight``
re-lays this out (rows interleaved in tiles, offsets within a vector of x) for its kernels, which
load each group of inputs once and pick each row's value in registers.
"""

from __future__ import annotations

import torch

from .base import PackedWeight, register_format

__all__ = ["NMFormat"]


@register_format
class NMFormat(PackedWeight):
    """N:M packed weight; params (n, m)."""

    NAME = "nm"
    FORMAT_ID = 4
    BUFFERS = ("values", "pos")
    NATIVE = "NmWeight"
    NUM_PARAMS = 2

    @classmethod
    def check_params(cls, params, *, name="weight"):
        super().check_params(params, name=name)
        n, m = params
        if not 1 <= n < m <= 16:
            raise ValueError(f"{name}: N:M needs 1 <= N < M <= 16, got {n}:{m}")

    @staticmethod
    def _groups(cols: int, m: int) -> int:
        return -(-cols // m)

    @classmethod
    def fits(cls, keep: torch.Tensor, n: int, m: int) -> bool:
        """Whether a keep-mask [rows, cols] has at most n kept per group of m."""
        rows, cols = keep.shape
        g = cls._groups(cols, m)
        padded = torch.zeros(rows, g * m, dtype=torch.bool)
        padded[:, :cols] = keep
        return bool((padded.reshape(rows, g, m).sum(-1) <= n).all())

    @classmethod
    def pack(cls, weight, keep, params, *, name):
        n, m = params
        rows, cols = weight.shape
        g = cls._groups(cols, m)
        wp = torch.zeros(rows, g * m, dtype=torch.float32)
        kp = torch.zeros(rows, g * m, dtype=torch.bool)
        wp[:, :cols] = weight
        kp[:, :cols] = keep
        wp, kp = wp.reshape(rows, g, m), kp.reshape(rows, g, m)
        counts = kp.sum(-1)
        if rows and g and bool((counts > n).any()):
            r, grp = (int(i) for i in (counts > n).nonzero()[0])
            raise ValueError(f"{name}: not {n}:{m}: row {r}, group {grp} (columns "
                             f"{grp * m}..{grp * m + m - 1}) keeps {int(counts[r, grp])} values")
        # Kept positions first, then the lowest unused ones as zero padding; then sorted.
        idx = torch.arange(m)
        key = kp.to(torch.int64) * (2 * m) + (m - idx)
        chosen = torch.topk(key, n, dim=-1).indices.sort(dim=-1).values
        values = torch.gather(wp * kp, -1, chosen)
        return {"values": values.reshape(-1).contiguous(),
                "pos": chosen.to(torch.uint8).reshape(-1).contiguous()}

    @classmethod
    def dtypes(cls, shape):
        return {"values": torch.float32, "pos": torch.uint8}

    @classmethod
    def expected_sizes(cls, shape, params, tensors):
        rows, cols = shape
        size = rows * cls._groups(cols, params[1]) * params[0]
        return {"values": size, "pos": size}

    def to_dense(self) -> torch.Tensor:
        n, m = self.params
        t = self.tensors()
        g = self._groups(self.cols, m)
        cols = (torch.arange(g).repeat_interleave(n).reshape(1, g * n) * m
                + t["pos"].to(torch.int64).reshape(self.rows, g * n))
        dense = torch.zeros(self.rows, g * m, dtype=torch.float32)
        if dense.numel():
            dense.scatter_(1, cols, t["values"].reshape(self.rows, g * n))
        return dense[:, : self.cols].contiguous()

    @property
    def nnz(self) -> int:
        """Stored nonzero values (zero padding slots excluded)."""
        return int((self.tensors()["values"] != 0).sum())
