"""Every compiled SpMM (panel) variant against dense torch on the named edge cases."""

from dataclasses import replace

import pytest

from .linear_case import EDGE_CASES, expected_isas, kernels_of

SPMM = [k["name"] for k in kernels_of("spmm")]


def test_table_has_scalar_and_simd_rows():
    isas = {k["isa"] for k in kernels_of("spmm")}
    assert expected_isas() <= isas


@pytest.mark.parametrize("case", list(EDGE_CASES), ids=str)
@pytest.mark.parametrize("kernel", SPMM)
def test_spmm_variant(kernel, case):
    info = next(k for k in kernels_of("spmm") if k["name"] == kernel)
    replace(EDGE_CASES[case], sell=info["format"] == "sell").check(kernel)


def test_sell_rows_in_the_table():
    formats = {(k["format"], k["isa"]) for k in kernels_of("spmm")}
    assert {(f, isa) for f in ("sell", "csr") for isa in expected_isas()} <= formats
