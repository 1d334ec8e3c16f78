"""CSR packing: round trips, counts, and validation of untrusted buffers."""

import pytest
import torch

from sparseprune.formats import CSR


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (1, 1), (7, 13), (64, 65536), (3, 70000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
def test_round_trip_is_exact(shape, sparsity):
    w = torch.randn(shape) * (torch.rand(shape) >= sparsity)
    csr = CSR.from_dense(w)
    assert torch.equal(csr.to_dense(), w)
    assert csr.nnz == int((w != 0).sum())
    assert csr.col_idx.dtype == (torch.uint16 if shape[1] <= 65536 else torch.int32)


def test_mask_drops_entries_even_if_nan():
    w = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    csr = CSR.from_dense(w, mask)
    dense = csr.to_dense()
    assert csr.nnz == 3 and dense[0, 1] == 0 and torch.isinf(dense[1, 0])


def test_counts_and_bytes():
    w = torch.zeros(4, 10)
    w[0, 3] = 1.0
    w[2, 0] = -2.0
    w[2, 9] = 3.0
    csr = CSR.from_dense(w)
    assert csr.nnz == 3
    assert csr.sparsity == pytest.approx(1 - 3 / 40)
    assert csr.nbytes == 5 * 8 + 3 * 2 + 3 * 4
    assert csr.row_ptr.tolist() == [0, 1, 1, 3, 3]
    assert csr.col_idx.to(torch.int64).tolist() == [3, 0, 9]


def test_non_float_and_non_2d_are_refused():
    with pytest.raises(TypeError, match="floating point"):
        CSR.from_dense(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        CSR.from_dense(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="mask shape"):
        CSR.from_dense(torch.ones(2, 3), torch.ones(3, 2))


def test_other_float_dtypes_are_stored_as_float32():
    csr = CSR.from_dense(torch.eye(3, dtype=torch.float64))
    assert csr.values.dtype == torch.float32


def _good():
    w = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    return CSR.from_dense(w)


def test_from_tensors_accepts_valid_data():
    g = _good()
    csr = CSR.from_tensors(g.row_ptr, g.col_idx, g.values, (3, 3))
    assert torch.equal(csr.to_dense(), g.to_dense())


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r, c, v: (torch.tensor([1, 2, 2, 4]), c, v), r"row_ptr\[0\] = 1"),
        (lambda r, c, v: (torch.tensor([0, 3, 2, 4]), c, v), "row_ptr decreases at row 1"),
        (lambda r, c, v: (torch.tensor([0, 2, 2, 3]), c, v), "row_ptr"),
        (lambda r, c, v: (torch.tensor([0, 2, 2, 9]), c, v), "exceeds nnz"),
        (lambda r, c, v: (r, torch.tensor([1, 2, 0, 7], dtype=torch.uint16), v), "out of range"),
        (lambda r, c, v: (r, torch.tensor([2, 1, 0, 2], dtype=torch.uint16), v),
         "not strictly increasing"),
        (lambda r, c, v: (r, torch.tensor([1, 1, 0, 2], dtype=torch.uint16), v),
         "not strictly increasing"),
        (lambda r, c, v: (r, c[:3], v), "col_idx has 3 entries but values has 4"),
        (lambda r, c, v: (r[:3], c, v), "row_ptr has 3 entries"),
        (lambda r, c, v: (r.int(), c, v), "row_ptr must be int64"),
        (lambda r, c, v: (r, c.to(torch.int32), v), "col_idx must be torch.uint16"),
        (lambda r, c, v: (r, c, v.double()), "values must be float32"),
        (lambda r, c, v: (r, c, v.reshape(2, 2)), "values must be 1-D"),
    ],
)
def test_from_tensors_rejects_corrupt_data(mutate, message):
    g = _good()
    r, c, v = mutate(g.row_ptr.clone(), g.col_idx.clone(), g.values.clone())
    with pytest.raises(ValueError, match=message):
        CSR.from_tensors(r, c, v, (3, 3), name="fc1")


def test_error_names_the_layer():
    g = _good()
    with pytest.raises(ValueError, match="^fc1: "):
        CSR.from_tensors(g.row_ptr, g.col_idx[:2], g.values, (3, 3), name="fc1")


def test_header_round_trip_and_rejection():
    g = _good()
    assert CSR.shape_from_header(g.header()) == (3, 3)
    bad = g.header().clone()
    bad[0] = 123
    with pytest.raises(ValueError, match="not a sparseprune CSR weight"):
        CSR.shape_from_header(bad)
    bad = g.header().clone()
    bad[3] = 99
    with pytest.raises(ValueError, match="layout version 99"):
        CSR.shape_from_header(bad)
    with pytest.raises(ValueError, match="shape \\(6,\\)"):
        CSR.shape_from_header(torch.zeros(3, dtype=torch.int64))
