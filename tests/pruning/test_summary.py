"""summary(): per-layer counts, CSR size estimate, dicts and table."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from sparseprune.pruning import prune, remove, summary
from sparseprune.pruning.summary import csr_bytes


def test_csr_bytes_formula():
    assert csr_bytes(rows=10, cols=100, nnz=50) == 4 * 50 + 2 * 50 + 8 * 11
    assert csr_bytes(rows=10, cols=65536, nnz=50) == 4 * 50 + 2 * 50 + 8 * 11
    assert csr_bytes(rows=10, cols=65537, nnz=50) == 4 * 50 + 4 * 50 + 8 * 11


def test_summary_rows_counts_and_sizes(make_cnn):
    model = make_cnn(0)
    prune(model, 0.9, scope="layer")  # default protection: stem dense, fc at 0.45
    s = summary(model)
    rows = {r.name: r for r in s.rows}
    assert list(rows) == ["features.0", "features.2", "features.4", "fc"]
    assert rows["features.0"].nonzeros == 216 and rows["features.0"].pattern == "dense"
    conv = rows["features.2"]
    assert (conv.type, conv.shape, conv.params) == ("Conv2d", (16, 8, 3, 3), 1152)
    assert conv.nonzeros == 1152 - round(0.9 * 1152) and conv.pattern == "unstructured"
    assert conv.sparsity == 1 - conv.nonzeros / 1152
    assert conv.packed_bytes == csr_bytes(16, 72, conv.nonzeros) < conv.dense_bytes == 4 * 1152
    assert rows["features.0"].packed_bytes == rows["features.0"].dense_bytes  # CSR is larger
    assert s.params == 216 + 1152 + 256 + 640
    assert s.nonzeros == sum(r.nonzeros for r in s.rows)
    # Model bytes: every parameter and buffer once; masks are not counted.
    dense = 4 * sum(p.numel() for p in make_cnn(0).parameters())
    assert s.dense_bytes == dense
    assert s.packed_bytes == dense - sum(r.dense_bytes - r.packed_bytes for r in s.rows)


def test_summary_dicts_and_table(make_mlp):
    model = make_mlp(0)
    prune(model, pattern="2:4", protect=None)
    s = summary(model)
    dicts = s.to_dicts()
    assert dicts[0] == {
        "name": "0", "param": "weight", "type": "Linear", "shape": [48, 64], "params": 3072,
        "nonzeros": 1536, "pattern": "2:4", "dense_bytes": 12288,
        "packed_bytes": csr_bytes(48, 64, 1536), "sparsity": 0.5,
    }
    text = str(s)
    assert text.splitlines()[0].split() == ["name", "type", "shape", "params", "nonzeros",
                                            "sparsity", "pattern"]
    assert "0.weight  Linear  48x64" in text and "50.00%" in text and "2:4" in text
    assert "model size:" in text and "packed" in text


def test_summary_sees_torch_masks_extra_tensors_and_removed_masks():
    model = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4))
    torch_prune.l1_unstructured(model[0], "bias", amount=0.5)
    s = summary(model)
    assert [(r.name, r.param, r.pattern) for r in s.rows] == [
        ("0", "weight", "dense"), ("0", "bias", "torch:L1Unstructured")]
    assert s.rows[1].nonzeros == 2
    # BatchNorm buffers count toward the model size; the bias mask does not.
    expected = 4 * (32 + 4 + 4 + 4 + 4 + 4) + 8  # + num_batches_tracked (int64)
    assert s.dense_bytes == expected
    remove(model)
    assert summary(model).rows[1:] == ()  # bias is no longer a masked tensor
    prune(model, 0.5, protect=None)
    remove(model)
    assert summary(model).rows[0].pattern == "zeros, no mask"


def test_summary_uses_current_weights_after_an_update(make_mlp):
    model = make_mlp(0)
    prune(model, 0.5, protect=None)
    with torch.no_grad():
        model[0].weight_orig.fill_(0.0)  # the stale .weight attribute would still be nonzero
    assert summary(model).rows[0].nonzeros == 0


def test_csr_size_estimate_matches_the_real_packer():
    import torch

    from sparseprune.formats import CSR
    from sparseprune.pruning.summary import csr_bytes

    for rows, cols, sparsity in [(7, 13, 0.5), (64, 65536, 0.99), (3, 70000, 0.9), (5, 1, 0.0)]:
        w = torch.randn(rows, cols) * (torch.rand(rows, cols) >= sparsity)
        packed = CSR.from_dense(w)
        assert csr_bytes(rows, cols, packed.nnz) == packed.nbytes, (rows, cols)
