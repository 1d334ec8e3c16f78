"""The one tester of every linear kernel row (spmm and spmv families, every format) against
dense torch. A case makes a weight with a sparsity pattern, packs it with the real packer of the
row's format, runs the row by name and compares with the float64 reference."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import pytest
import torch

from sparseprune import ops
from sparseprune.formats import FORMATS
from sparseprune.pruning.patterns import NM, Block, Unstructured

from ..conftest import assert_close_linear


def expected_isas() -> set[str]:
    """ISAs whose rows every build for this machine's architecture must compile."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return {"scalar", "avx2", "avx512"} if x86 else {"scalar"}


def kernels_of(family: str, fmt: str | None = None) -> list[dict]:
    return [k for k in ops.list_kernels()
            if k["family"] == family and (fmt is None or k["format"] == fmt)]


# Format name -> (its header params for a case, the mask pattern its packer needs).
def format_setup(pattern: tuple) -> tuple[tuple[int, ...], object]:
    kind = pattern[0]
    if kind == "nm":
        return (pattern[1], pattern[2]), NM(pattern[1], pattern[2], on_indivisible="pad")
    if kind == "block":
        return (pattern[1], pattern[2]), Block(pattern[1], pattern[2], on_indivisible="pad")
    return (), Unstructured()


@dataclass(frozen=True)
class LinearCase:
    """One y = x Wᵀ + b problem: W [n, k] with the given sparsity and pattern, x [m, k].

    pattern: ("unstructured",), ("nm", n, m) or ("block", r, c); formats that need a pattern
    (nm, bsr) get one when the case gives none. ldy_pad > 0 writes into a wider output.
    """

    m: int
    n: int
    k: int
    sparsity: float = 0.9
    bias: bool = True
    empty_rows: bool = False
    seed: int = 0
    pattern: tuple = ("unstructured",)
    ldy_pad: int = 0
    x_stride_pad: int = 0

    def make(self, pattern_obj=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(self.n, self.k, generator=g)
        if self.sparsity >= 1.0:
            w.zero_()
        elif isinstance(pattern_obj, NM) and self.n and self.k:
            w *= pattern_obj.mask(torch.rand(self.n, self.k, generator=g))
            # Sparser than N:M (a group keeping fewer than N) must work too.
            extra = max(0.0, self.sparsity - pattern_obj.fixed_sparsity)
            w *= torch.rand(self.n, self.k, generator=g) >= extra
        elif isinstance(pattern_obj, Block) and self.n and self.k:
            w *= pattern_obj.mask(torch.rand(self.n, self.k, generator=g), self.sparsity)
        else:
            w *= torch.rand(self.n, self.k, generator=g) >= self.sparsity
        if self.empty_rows and self.n:
            w[::3] = 0.0
        x = torch.randn(self.m, self.k + self.x_stride_pad, generator=g)[:, : self.k]
        b = torch.randn(self.n, generator=g) if self.bias else None
        return x, w, b

    def check(self, kernel: str, fmt: str = "csr") -> None:
        """Runs ``kernel`` ('' = the format's default plan) on a ``fmt`` weight and compares
        with the float64 reference; failures name the row, column and batch index."""
        info = {k["name"]: k for k in ops.list_kernels()}.get(kernel)
        if info is not None:
            if not info["supported"]:
                pytest.skip(f"{kernel} needs {info['isa']}, which this CPU lacks")
            fmt = info["format"]
        cls = FORMATS[fmt]
        pattern = self.pattern
        if fmt == "nm" and pattern[0] != "nm":
            pattern = ("nm", 2, 4)
        if fmt == "bsr" and pattern[0] != "block":
            pattern = ("block", 4, 1)
        params, pattern_obj = format_setup(pattern)
        x, w, b = self.make(pattern_obj)
        packed = cls.from_dense(w, params=params)
        plan = ops.make_plan(cls.FORMAT_ID, [kernel]) if kernel else None
        y_full, _ = ops.linear_eager(x, packed.native, b, plan, out_cols_pad=self.ldy_pad)
        y = y_full[:, : self.n]
        assert_close_linear(y, x, w, b, label=f"{kernel or fmt + ' default'} on {self}")


# Named edge cases every row must pass (m = batch, n = outputs, k = inputs).
EDGE_CASES = {
    "m_lt_mr": LinearCase(m=3, n=33, k=65),
    "m_eq_mr": LinearCase(m=8, n=40, k=64),
    "m_gt_mr": LinearCase(m=17, n=31, k=100),
    "m_many_panels": LinearCase(m=64, n=50, k=300),
    "batch0": LinearCase(m=0, n=16, k=32),
    "batch1": LinearCase(m=1, n=129, k=257),
    "k0": LinearCase(m=20, n=130, k=0),
    "k1": LinearCase(m=9, n=7, k=1, sparsity=0.0),
    "k_odd_dense": LinearCase(m=5, n=13, k=37, sparsity=0.0),
    "n0": LinearCase(m=4, n=0, k=8),
    "zero_weights": LinearCase(m=11, n=20, k=30, sparsity=1.0),
    "empty_rows": LinearCase(m=10, n=24, k=80, empty_rows=True),
    "no_bias": LinearCase(m=6, n=24, k=80, bias=False),
    "half_sparse": LinearCase(m=16, n=64, k=128, sparsity=0.5),
    "very_sparse": LinearCase(m=16, n=64, k=512, sparsity=0.99),
    "long_rows": LinearCase(m=12, n=8, k=4096, sparsity=0.0),
    "k_uint16_max": LinearCase(m=5, n=4, k=65536, sparsity=0.99),
    "k_int32_index": LinearCase(m=9, n=6, k=70000, sparsity=0.95),
    "rows_gt_row_block": LinearCase(m=20, n=300, k=600, sparsity=0.7),
    "k_lt_col_block": LinearCase(m=16, n=130, k=100, sparsity=0.5),
    "k_div_col_block": LinearCase(m=33, n=129, k=512, sparsity=0.9),
    "output_stride": LinearCase(m=19, n=45, k=77, ldy_pad=5),
    "input_stride": LinearCase(m=7, n=45, k=77, x_stride_pad=3),
}

# Patterns each structured format is tested with (unstructured formats take any mask).
PATTERNS = {
    "nm": [("nm", 2, 4), ("nm", 1, 4), ("nm", 4, 8), ("nm", 3, 7), ("nm", 1, 16), ("nm", 15, 16)],
    "bsr": [("block", 4, 1), ("block", 8, 1), ("block", 16, 1), ("block", 1, 4), ("block", 4, 4),
            ("block", 2, 3), ("block", 16, 16)],
}
