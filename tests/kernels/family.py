"""Parametrisation shared by the family testers: every row x edge case, plus every pattern of
the row's format on a few shapes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from .linear_case import EDGE_CASES, PATTERNS, LinearCase, expected_isas, kernels_of

_PATTERN_SHAPES = [LinearCase(m=5, n=37, k=45), LinearCase(m=21, n=70, k=130, sparsity=0.5),
                   LinearCase(m=64, n=33, k=64, bias=False, ldy_pad=3)]


def row_cases(family: str) -> list:
    return [pytest.param(k["name"], c, id=f"{k['name']}-{c}") for k in kernels_of(family)
            for c in EDGE_CASES]


def pattern_cases(family: str) -> list:
    out = []
    for k in kernels_of(family):
        for pattern in PATTERNS.get(k["format"], []):
            for i, case in enumerate(_PATTERN_SHAPES):
                label = "x".join(str(p) for p in pattern[1:])
                out.append(pytest.param(k["name"], replace(case, pattern=pattern),
                                        id=f"{k['name']}-{pattern[0]}{label}-{i}"))
    return out


def check_table(family: str) -> None:
    rows = kernels_of(family)
    assert expected_isas() <= {k["isa"] for k in rows}
    for fmt in {k["format"] for k in rows}:
        assert "scalar" in {k["isa"] for k in rows if k["format"] == fmt}, fmt
