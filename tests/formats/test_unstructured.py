"""CSR and SELL packing (one canonical form): round trips, counts, and validation of untrusted
buffers."""

import pickle

import pytest
import torch

from sparseprune.formats import CSR, FORMATS, SELL, parse_header

UNSTRUCTURED = pytest.mark.parametrize("cls", [CSR, SELL], ids=lambda c: c.NAME)


def _from(cls, t, shape, name="weight"):
    return cls.from_tensors({"row_ptr": t[0], "col_idx": t[1], "values": t[2]}, shape, name=name)


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (1, 1), (7, 13), (64, 65536), (3, 70000)])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99, 1.0])
@UNSTRUCTURED
def test_round_trip_is_exact(shape, sparsity, cls):
    w = torch.randn(shape) * (torch.rand(shape) >= sparsity)
    packed = cls.from_dense(w)
    assert torch.equal(packed.to_dense(), w)
    assert packed.nnz == int((w != 0).sum())
    t = packed.tensors()
    assert t["col_idx"].dtype == (torch.uint16 if shape[1] <= 65536 else torch.int32)
    again = _from(cls, (t["row_ptr"], t["col_idx"], t["values"]), shape)
    assert torch.equal(again.to_dense(), w)
    assert torch.equal(pickle.loads(pickle.dumps(packed)).to_dense(), w)


def test_registry_and_ids():
    assert FORMATS["csr"] is CSR and FORMATS["sell"] is SELL
    assert len({c.FORMAT_ID for c in FORMATS.values()}) == len(FORMATS)


@UNSTRUCTURED
def test_mask_drops_entries_even_if_nan(cls):
    w = torch.tensor([[1.0, float("nan")], [float("inf"), 2.0]])
    mask = torch.tensor([[1, 0], [1, 1]])
    csr = cls.from_dense(w, mask)
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
    t = csr.tensors()
    assert t["row_ptr"].tolist() == [0, 1, 1, 3, 3]
    assert t["col_idx"].to(torch.int64).tolist() == [3, 0, 9]


def test_non_float_and_non_2d_are_refused():
    with pytest.raises(TypeError, match="floating point"):
        CSR.from_dense(torch.ones(2, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        CSR.from_dense(torch.ones(2, 2, 2))
    with pytest.raises(ValueError, match="mask shape"):
        CSR.from_dense(torch.ones(2, 3), torch.ones(3, 2))


def test_other_float_dtypes_are_stored_as_float32():
    csr = CSR.from_dense(torch.eye(3, dtype=torch.float64))
    assert csr.tensors()["values"].dtype == torch.float32


def _good():
    w = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.0], [3.0, 0.0, 4.0]])
    return CSR.from_dense(w)


def _parts(g):
    t = g.tensors()
    return t["row_ptr"], t["col_idx"], t["values"]


@UNSTRUCTURED
def test_from_tensors_accepts_valid_data(cls):
    g = _good()
    assert torch.equal(_from(cls, _parts(g), (3, 3)).to_dense(), g.to_dense())


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
        (lambda r, c, v: (r, c[:3], v), "col_idx has 3 entries, expected 4"),
        (lambda r, c, v: (r[:3], c, v), "row_ptr has 3 entries"),
        (lambda r, c, v: (r.int(), c, v), "row_ptr must be torch.int64"),
        (lambda r, c, v: (r, c.to(torch.int32), v), "col_idx must be torch.uint16"),
        (lambda r, c, v: (r, c, v.double()), "values must be torch.float32"),
        (lambda r, c, v: (r, c, v.reshape(2, 2)), "values must be 1-D"),
        (lambda r, c, v: (r, c, torch.zeros(1).expand(100)), "more than rows|expanded view"),
    ],
)
@UNSTRUCTURED
def test_from_tensors_rejects_corrupt_data(mutate, message, cls):
    g = _good()
    r, c, v = mutate(*(t.clone() for t in _parts(g)))
    with pytest.raises(ValueError, match=message):
        _from(cls, (r, c, v), (3, 3), name="fc1")


def test_error_names_the_layer():
    r, c, v = _parts(_good())
    with pytest.raises(ValueError, match="^fc1: "):
        _from(CSR, (r, c[:2], v), (3, 3), name="fc1")


@UNSTRUCTURED
def test_header_round_trip_and_rejection(cls):
    g = cls.from_dense(_good().to_dense())
    assert parse_header(g.header()) == (cls, (3, 3), ())
    bad = g.header().clone()
    bad[0] = 123
    with pytest.raises(ValueError, match="not a sparseprune packed weight"):
        parse_header(bad)
    bad = g.header().clone()
    bad[3] = 99
    with pytest.raises(ValueError, match="layout version 99"):
        parse_header(bad)
    bad = g.header().clone()
    bad[4] = -5
    with pytest.raises(ValueError, match="implausible shape"):
        parse_header(bad)
    with pytest.raises(ValueError, match="shape \\(8,\\)"):
        parse_header(torch.zeros(3, dtype=torch.int64))


def test_legacy_six_entry_csr_header_still_loads():
    legacy = CSR.from_dense(torch.eye(3)).header()[:6]
    assert parse_header(legacy) == (CSR, (3, 3), ())


def test_native_constructors_refuse_forged_shapes_and_params():
    import numpy as np

    from sparseprune import _C

    nm = {"values": np.zeros(1 << 10, np.float32), "pos": np.zeros(1 << 10, np.uint8)}
    with pytest.raises(ValueError, match=r"rows and cols must be in \[0, 2\*\*31\)"):
        _C.NmWeight(2**61 + 2**21, 128, (1, 16), nm)
    with pytest.raises(ValueError, match="too large|expected"):
        _C.NmWeight(2**31 - 1, 2**31 - 1, (15, 16), nm)
    csr = {"row_ptr": np.zeros(2, np.int64), "col_idx": np.zeros(0, np.uint16),
           "values": np.zeros(0, np.float32)}
    with pytest.raises(ValueError, match="params must be ints"):
        _C.NmWeight(1, 4, ("2", 4), nm)
    with pytest.raises(ValueError, match="rows and cols must be in"):
        _C.SellWeight(1, 2**40, (), csr)
    csr32 = dict(csr, col_idx=np.zeros(0, np.int32))
    with pytest.raises(ValueError, match="col_idx must be uint16 for 8 columns"):
        _C.CsrWeight(1, 8, (), csr32)


def test_unused_header_entries_must_be_zero():
    header = CSR.from_dense(torch.eye(3)).header()
    header[6] = 4
    with pytest.raises(ValueError, match="unused header entries"):
        parse_header(header)
