"""The automatic kernel choice: random shapes, batch splits, threads and the SPARSEPRUNE_ISA cap."""

import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseprune import ops
from sparseprune.formats import CSR, FORMATS, SELL

from .linear_case import LinearCase, format_setup

FORMATS_RUN = [f for f in FORMATS if any(k["format"] == f for k in ops.list_kernels())]


@pytest.mark.parametrize("fmt", FORMATS_RUN)
@pytest.mark.parametrize("m", [0, 1, 3, 4, 8, 17, 64])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_auto_batches_and_sparsities(m, sparsity, fmt):
    LinearCase(m=m, n=67, k=301, sparsity=sparsity).check("", fmt)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(m=st.integers(0, 70), n=st.integers(0, 90), k=st.integers(1, 300),
       sparsity=st.sampled_from([0.0, 0.3, 0.8, 0.95, 1.0]), bias=st.booleans(),
       empty_rows=st.booleans(), seed=st.integers(0, 2**16), fmt=st.sampled_from(FORMATS_RUN))
def test_auto_random_shapes(m, n, k, sparsity, bias, empty_rows, seed, fmt):
    LinearCase(m, n, k, sparsity, bias, empty_rows, seed).check("", fmt)


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
@pytest.mark.parametrize("fmt", FORMATS_RUN)
def test_threads_give_the_same_result(threads, fmt):
    # n = 1000: 8 SELL row blocks, so every thread count here splits the work.
    case = LinearCase(m=33, n=1000, k=700, sparsity=0.8)
    ops.set_num_threads(threads)
    try:
        case.check("", fmt)
        if fmt in ("nm", "bsr"):
            pattern = ("nm", 2, 4) if fmt == "nm" else ("block", 4, 1)
            case = replace(case, pattern=pattern)
            case.check("", fmt)
        params, pattern_obj = format_setup(case.pattern)
        x, w, b = case.make(pattern_obj)
        packed = FORMATS[fmt].from_dense(w, params=params)
        y_t, _ = ops.linear_eager(x, packed.native, b)
        ops.set_num_threads(1)
        y_1, _ = ops.linear_eager(x, packed.native, b)
        # Rows are split between threads, never the sum inside a row: results are bitwise equal.
        assert torch.equal(y_t, y_1)
    finally:
        ops.set_num_threads(None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, ops.MAX_THREADS + 1, 2**31])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="set_num_threads expects an int"):
        ops.set_num_threads(bad)


def test_unknown_or_foreign_kernel_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        ops.make_plan(CSR.FORMAT_ID, ["nope"])
    sell_row = next(k["name"] for k in ops.list_kernels() if k["format"] == "sell")
    with pytest.raises(ValueError, match="runs sell weights, not csr"):
        ops.make_plan(CSR.FORMAT_ID, [sell_row])
    with pytest.raises(ValueError, match="at least one kernel"):
        ops.make_plan(CSR.FORMAT_ID, [])


def test_a_plan_only_runs_with_its_own_format():
    # a kernel this CPU runs: a plan refuses kernels needing an ISA the CPU lacks
    plan = ops.make_plan(SELL.FORMAT_ID, [next(k["name"] for k in ops.list_kernels()
                                               if k["format"] == "sell" and k["supported"])])
    csr = CSR.from_dense(torch.eye(16))
    with pytest.raises(ValueError, match="runs sell weights, not csr"):
        ops.linear_eager(torch.randn(16, 16), csr.native, None, plan)


def test_dispatch_log_names_every_format():
    log = ops.dispatch_log()
    for fmt in FORMATS_RUN:
        assert f"{fmt}: spmv=" in log


def _defaults_under(isa: str) -> list[str]:
    code = ("from sparseprune import ops; "
            "print(','.join(k['name'] for k in ops.list_kernels() if k['default']))")
    env = dict(os.environ, SPARSEPRUNE_ISA=isa)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return out.stdout.strip().split(",")


def test_isa_cap_scalar_selects_only_scalar_variants():
    names = _defaults_under("scalar")
    assert names and all(n.endswith("_scalar") for n in names), names


def test_auto_paths_under_the_scalar_cap():
    # The default choice differs under SPARSEPRUNE_ISA=scalar (scalar CSR and SELL-C rows only):
    # run the automatic-path tests again in a process where that choice is made.
    env = dict(os.environ, SPARSEPRUNE_ISA="scalar")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          f"{__file__}::test_auto_batches_and_sparsities",
                          f"{__file__}::test_threads_give_the_same_result"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_public_linear_op_validates_its_input():
    row_ptr = torch.tensor([0, 1, 2])
    col_idx = torch.tensor([0, 9], dtype=torch.uint16)
    with pytest.raises(ValueError, match="out of range"):
        ops.linear(torch.randn(2, 4), CSR.FORMAT_ID, (2, 4), (), [row_ptr, col_idx, torch.ones(2)],
                   None)


def test_isa_cap_avx2_matches_cpu():
    names = _defaults_under("avx2")
    has_avx2 = "avx2" in ops.cpu_info()["detected"]
    assert any(n.endswith("_avx2") for n in names) == has_avx2, names
