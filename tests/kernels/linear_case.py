"""The one tester of every linear kernel variant (spmm and spmv families) against dense torch."""

from __future__ import annotations

import platform
from dataclasses import dataclass

import pytest
import torch

from sparseprune import ops
from sparseprune.formats import CSR

from ..conftest import assert_close_linear


def expected_isas() -> set[str]:
    """ISAs whose rows every build for this machine's architecture must compile."""
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return {"scalar", "avx2"} if x86 else {"scalar"}


def kernels_of(family: str) -> list[dict]:
    return [k for k in ops.list_kernels() if k["family"] == family]


@dataclass(frozen=True)
class LinearCase:
    """One y = x Wᵀ + b problem: W [n, k] with the given sparsity, x [m, k]."""

    m: int
    n: int
    k: int
    sparsity: float = 0.9
    bias: bool = True
    empty_rows: bool = False
    seed: int = 0
    sell: bool = False  # also build the SELL-C pack (needed by sell kernels, used by auto)

    def make(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(self.n, self.k, generator=g)
        w *= torch.rand(self.n, self.k, generator=g) >= self.sparsity
        if self.empty_rows and self.n:
            w[:: 3] = 0.0
        x = torch.randn(self.m, self.k, generator=g)
        b = torch.randn(self.n, generator=g) if self.bias else None
        return x, w, b

    def check(self, kernel: str) -> None:
        """Runs ``kernel`` ('' = automatic choice) and compares with the float64 reference."""
        info = {k["name"]: k for k in ops.list_kernels()}.get(kernel)
        if info is not None and not info["supported"]:
            pytest.skip(f"{kernel} needs {info['isa']}, which this CPU lacks")
        x, w, b = self.make()
        csr = CSR.from_dense(w)
        arrays = ops.weight_arrays(csr.row_ptr, csr.col_idx, csr.values, b)
        sell = ops.prepack_sell(arrays, self.k) if self.sell else None
        y, _ = ops.csr_linear_arrays(x, arrays, self.n, self.k, kernel=kernel, sell=sell)
        assert_close_linear(y, x, w, b)


# Named edge cases every variant must pass (m = batch, n = outputs, k = inputs).
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
}
