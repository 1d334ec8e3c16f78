"""convert(): which layers are replaced, the report, and numerical equality."""

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from sparseprune import SparseLinear, convert


def _mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    for layer in (model[0], model[2]):
        prune.l1_unstructured(layer, "weight", amount=0.9)
    return model


def test_converts_sparse_layers_and_keeps_outputs():
    model = _mlp()
    x = torch.randn(8, 32)
    sparse, report = convert(model)
    assert isinstance(sparse[0], SparseLinear) and isinstance(sparse[2], SparseLinear)
    assert isinstance(sparse[4], nn.Linear)
    assert [r.name for r in report.converted] == ["0", "2"]
    assert report.skipped[0].name == "4" and "min_sparsity" in report.skipped[0].reason
    assert torch.allclose(sparse(x), model(x), atol=1e-5)
    assert "2 converted, 1 kept dense" in str(report)


def test_copy_by_default_inplace_on_request():
    model = _mlp()
    convert(model)
    assert isinstance(model[0], nn.Linear)
    out, _ = convert(model, inplace=True)
    assert out is model and isinstance(model[0], SparseLinear)


def test_include_exclude_and_wildcards():
    model = _mlp()
    _, report = convert(model, exclude=["2"])
    assert [r.name for r in report.converted] == ["0"]
    _, report = convert(model, include=["[02]"], min_sparsity=0.0)
    assert [r.name for r in report.converted] == ["0", "2"]
    assert report.layers[-1].reason == "not in include"


def test_patterns_that_match_nothing_are_errors():
    with pytest.raises(ValueError, match=r"exclude pattern\(s\) \['fc9'\] match no"):
        convert(_mlp(), exclude=["fc9"])
    with pytest.raises(ValueError, match="include"):
        convert(_mlp(), include=["nope.*"])


def test_root_linear_is_replaced():
    lin = nn.Linear(10, 10)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(10, 10) > 0.8)
    out, report = convert(lin)
    assert isinstance(out, SparseLinear) and report.converted[0].name == ""


def test_min_sparsity_validated():
    with pytest.raises(ValueError, match="min_sparsity"):
        convert(_mlp(), min_sparsity=1.5)


def test_layer_names_reach_error_messages():
    sparse, _ = convert(_mlp())
    with pytest.raises(ValueError, match="'2'"):
        sparse[2](torch.randn(3, 63))


def test_a_layer_shared_under_two_names_is_replaced_at_both():
    shared = nn.Linear(16, 16)
    with torch.no_grad():
        shared.weight.mul_(torch.rand(16, 16) > 0.8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    out, report = convert(model)
    assert isinstance(out[0], SparseLinear) and out[0] is out[2]
    assert [r.name for r in report.converted] == ["0", "2"]
    x = torch.randn(3, 16)
    assert torch.allclose(out(x), model(x), atol=1e-5)


def test_example_inputs_measure_each_layer_and_report_it():
    model = _mlp()
    x = torch.randn(8, 32)
    sparse, report = convert(model, example_inputs=x)
    for r in report.converted:
        assert r.speedup is not None and r.speedup >= 1.0
    assert torch.allclose(sparse(x), model(x), atol=1e-5)
    text = str(report)
    for r in report.layers:
        if r.speedup is not None:
            assert f"{r.speedup:.2f}x" in text


def test_min_speedup_keeps_slower_layers_dense():
    # No sparse layer is 1000x faster than dense: every candidate must stay dense, with the
    # measured ratio in the reason.
    model = _mlp()
    sparse, report = convert(model, example_inputs=(torch.randn(1, 32),), min_speedup=1000.0)
    assert not report.converted
    measured = [r for r in report.skipped if r.speedup is not None]
    assert [r.name for r in measured] == ["0", "2"]
    assert all("measured: no format at least 1000.0x" in r.reason for r in measured)
    assert all(isinstance(m, nn.Linear) for m in sparse if not isinstance(m, nn.ReLU))


def _structured(pattern: str) -> nn.Linear:
    torch.manual_seed(1)
    lin = nn.Linear(256, 128)
    with torch.no_grad():
        if pattern == "2:4":
            scores = lin.weight.abs().reshape(128, 64, 4)
            drop = scores.argsort(-1)[..., :2]
            lin.weight.view(128, 64, 4).scatter_(-1, drop, 0.0)
        elif pattern == "8x1":
            keep = torch.rand(16, 256) > 0.9
            lin.weight.mul_(keep.repeat_interleave(8, 0))
        else:
            lin.weight.mul_(torch.rand(128, 256) > 0.9)
    return lin


@pytest.mark.parametrize(("pattern", "expected"), [("2:4", "nm2:4"), ("8x1", "bsr8x1"),
                                                    ("unstructured", "sell")])
def test_cost_model_picks_the_format_the_mask_has(pattern, expected):
    lin = _structured(pattern)
    sparse, report = convert(lin)
    assert report.layers[0].format == expected and report.layers[0].how == "cost model"
    x = torch.randn(5, 256)
    assert torch.allclose(sparse(x), lin(x), atol=1e-5)
    assert report.layers[0].nbytes == sparse.weight.nbytes


@pytest.mark.parametrize("pattern", ["2:4", "8x1", "unstructured"])
def test_measured_choice_covers_the_candidates_and_is_cached(pattern):
    lin = _structured(pattern)
    x = torch.randn(3, 256)
    _, first = convert(lin, example_inputs=x, batch_sizes=[1, 16])
    row = first.layers[0]
    labels = dict(row.measured)
    assert "dense" in labels and "sell" in labels and "csr" in labels
    if pattern == "2:4":
        assert "nm2:4" in labels
    if pattern == "8x1":
        assert "bsr8x1" in labels
    # Never slower than dense by construction: dense is kept unless a format wins everywhere.
    if row.format is not None:
        assert row.speedup == max(labels.values()) and row.speedup >= 1.0
    sparse, again = convert(lin, example_inputs=x, batch_sizes=[1, 16])
    assert again.layers[0].how == "cached" and again.layers[0].format == row.format
    assert torch.allclose(sparse(x), lin(x), atol=1e-5)


def test_formats_argument_limits_the_choice_and_rejects_unknown_names():
    lin = _structured("8x1")
    _, report = convert(lin, formats=["csr"])
    assert report.layers[0].format == "csr"
    with pytest.raises(ValueError, match="unknown format"):
        convert(lin, formats=["nope"])
    with pytest.raises(ValueError, match="batch_sizes"):
        convert(lin, example_inputs=torch.randn(1, 256), batch_sizes=[0])


@pytest.mark.parametrize("shape", [(0, 8), (8, 0)])
def test_empty_layers_stay_dense(shape):
    model = nn.Sequential(nn.Linear(shape[1], shape[0]))
    _, report = convert(model, example_inputs=torch.randn(2, shape[1]))
    assert report.layers[0].format is None and report.layers[0].reason == "empty weight"


@pytest.mark.parametrize("entry", [{"choice": "nmX:Y"}, {"choice": "sell", "speedups": [1, 2]},
                                   {"choice": "sell", "speedups": None},
                                   {"choice": "sell", "speedups": {"sell": "fast"}},
                                   {"choice": 7}, [1, 2]])
def test_malformed_cache_entries_are_remeasured(entry, monkeypatch):
    import json

    from sparseprune import choose

    lin = _structured("unstructured")
    x = torch.randn(2, 256)
    convert(lin, example_inputs=x)
    path = choose.cache_path()
    data = json.load(open(path))
    for key in data:
        data[key] = entry
    json.dump(data, open(path, "w"))
    _, report = convert(lin, example_inputs=x)
    assert report.layers[0].how == "measured"


@pytest.mark.parametrize("bad", [[1.7], [True], []])
def test_batch_sizes_must_be_positive_ints(bad):
    with pytest.raises(ValueError, match="batch_sizes"):
        convert(_structured("unstructured"), example_inputs=torch.randn(1, 256), batch_sizes=bad)
