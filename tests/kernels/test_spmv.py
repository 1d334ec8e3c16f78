"""Every compiled SpMV variant against dense torch on the named edge cases."""

import pytest

from .linear_case import EDGE_CASES, expected_isas, kernels_of

SPMV = [k["name"] for k in kernels_of("spmv")]


def test_table_has_scalar_and_simd_rows():
    isas = {k["isa"] for k in kernels_of("spmv")}
    assert expected_isas() <= isas


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=str)
@pytest.mark.parametrize("kernel", SPMV)
def test_spmv_variant(kernel, case):
    EDGE_CASES[case].check(kernel)
