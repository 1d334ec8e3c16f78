"""Every compiled SpMM (panel) row (every format) against dense torch on the named edge cases."""

import pytest

from .family import check_table, pattern_cases, row_cases
from .linear_case import EDGE_CASES


def test_table_has_scalar_and_simd_rows():
    check_table("spmm")


@pytest.mark.parametrize(("kernel", "case"), row_cases("spmm"))
def test_spmm_row(kernel, case):
    EDGE_CASES[case].check(kernel)


@pytest.mark.parametrize(("kernel", "case"), pattern_cases("spmm"))
def test_spmm_row_on_patterns(kernel, case):
    case.check(kernel)
