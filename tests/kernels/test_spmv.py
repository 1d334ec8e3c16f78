"""Every compiled SpMV row (every format) against dense torch on the named edge cases."""

import pytest

from .family import check_table, pattern_cases, row_cases
from .linear_case import EDGE_CASES


def test_table_has_scalar_and_simd_rows():
    check_table("spmv")


@pytest.mark.parametrize(("kernel", "case"), row_cases("spmv"))
def test_spmv_row(kernel, case):
    EDGE_CASES[case].check(kernel)


@pytest.mark.parametrize(("kernel", "case"), pattern_cases("spmv"))
def test_spmv_row_on_patterns(kernel, case):
    case.check(kernel)
