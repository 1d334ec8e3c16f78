"""The automatic kernel choice: random shapes, batch splits, threads and the SPARSEPRUNE_ISA cap."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseprune import ops

from .linear_case import LinearCase


@pytest.mark.parametrize("sell", [False, True])
@pytest.mark.parametrize("m", [0, 1, 3, 4, 8, 17, 64])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
def test_auto_batches_and_sparsities(m, sparsity, sell):
    LinearCase(m=m, n=67, k=301, sparsity=sparsity, sell=sell).check("")


@settings(max_examples=60, deadline=None, derandomize=True)
@given(m=st.integers(0, 70), n=st.integers(0, 90), k=st.integers(1, 300),
       sparsity=st.sampled_from([0.0, 0.3, 0.8, 0.95, 1.0]), bias=st.booleans(),
       empty_rows=st.booleans(), seed=st.integers(0, 2**16))
def test_auto_random_shapes(m, n, k, sparsity, bias, empty_rows, seed):
    LinearCase(m, n, k, sparsity, bias, empty_rows, seed, sell=m % 2 == 0).check("")


@pytest.mark.parametrize("threads", [1, 2, 3, 7])
def test_threads_give_the_same_result(threads):
    # n = 1000: 8 row blocks, so every thread count here keeps the SELL-C path.
    case = LinearCase(m=33, n=1000, k=700, sparsity=0.8, sell=True)
    ops.set_num_threads(threads)
    try:
        case.check("")
        x, w, b = case.make()
        from sparseprune.formats import CSR

        csr = CSR.from_dense(w)
        arrays = ops.weight_arrays(csr.row_ptr, csr.col_idx, csr.values, b)
        sell = ops.prepack_sell(arrays, case.k)
        y_t, _ = ops.csr_linear_arrays(x, arrays, case.n, case.k, sell=sell)
        ops.set_num_threads(1)
        y_1, _ = ops.csr_linear_arrays(x, arrays, case.n, case.k, sell=sell)
        # Rows are split between threads, never the sum inside a row: results are bitwise equal.
        assert torch.equal(y_t, y_1)
    finally:
        ops.set_num_threads(None)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_set_num_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="positive int"):
        ops.set_num_threads(bad)


def test_unknown_kernel_name_is_a_clear_error():
    x = torch.randn(2, 4)
    from sparseprune.formats import CSR

    csr = CSR.from_dense(torch.eye(4))
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        ops.csr_linear(x, csr.row_ptr, csr.col_idx, csr.values, None, 4, kernel="nope")


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


def test_a_sell_pack_only_runs_with_its_own_weight():
    from sparseprune.formats import CSR

    a, b = CSR.from_dense(torch.eye(16)), CSR.from_dense(2 * torch.eye(16))
    arrays_a = ops.weight_arrays(a.row_ptr, a.col_idx, a.values, None)
    arrays_b = ops.weight_arrays(b.row_ptr, b.col_idx, b.values, None)
    pack_b = ops.prepack_sell(arrays_b, 16)
    with pytest.raises(ValueError, match="different weight"):
        ops.csr_linear_arrays(torch.randn(16, 16), arrays_a, 16, 16, sell=pack_b)


def test_public_csr_linear_validates_its_input():
    row_ptr = torch.tensor([0, 1, 2])
    col_idx = torch.tensor([0, 9], dtype=torch.uint16)
    with pytest.raises(ValueError, match="out of range"):
        ops.csr_linear(torch.randn(2, 4), row_ptr, col_idx, torch.ones(2), None, 4)


def test_isa_cap_avx2_matches_cpu():
    names = _defaults_under("avx2")
    has_avx2 = "avx2" in ops.cpu_info()["detected"]
    assert any(n.endswith("_avx2") for n in names) == has_avx2, names
