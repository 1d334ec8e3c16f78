"""Every compiled SpMM (panel) variant against dense torch on the named edge cases."""

import pytest

from .linear_case import EDGE_CASES, kernels_of

SPMM = [k["name"] for k in kernels_of("spmm")]


def test_table_has_scalar_and_simd_rows():
    isas = {k["isa"] for k in kernels_of("spmm")}
    assert {"scalar", "avx2"} <= isas


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=str)
@pytest.mark.parametrize("kernel", SPMM)
def test_spmm_variant(kernel, case):
    EDGE_CASES[case].check(kernel)
