"""sparseprune.save / load: converted models round-trip as plain data, tampered files are
refused with ValueError before a kernel runs, and a 90 %-sparse model is small on disk."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

import sparseprune
from sparseprune import SparseConv2d, SparseLinear


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _converted(factory, x, sparsity=0.9, **kw):
    model = factory().eval()
    sparseprune.prune(model, sparsity, protect=None, scope="layer")
    sparseprune.remove(model)
    sparse, _ = sparseprune.convert(model, min_sparsity=0.0, **kw)
    return sparse.eval()


def test_mlp_round_trip_keeps_layers_and_outputs(tmp_path):
    x = torch.randn(5, 64)
    model = _converted(mlp, x)
    path = tmp_path / "m.pt"
    sparseprune.save(model, path)
    loaded = sparseprune.load(path, mlp).eval()
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in model]
    assert isinstance(loaded[0], SparseLinear) and loaded[0].format == model[0].format
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_cnn_with_a_folded_batchnorm_round_trips(tmp_path):
    x = torch.randn(2, 3, 12, 12)
    model = _converted(cnn, x, example_inputs=x)
    assert isinstance(model[2], SparseConv2d) and isinstance(model[3], nn.Identity)
    path = tmp_path / "c.pt"
    sparseprune.save(model, path)
    loaded = sparseprune.load(path, cnn)
    assert isinstance(loaded[3], nn.Identity) and not loaded.training
    assert [type(m).__name__ for m in loaded.modules()].count("MaxPool2d") == 0  # none in cnn()
    torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)


def test_channel_pruned_then_converted_model_round_trips(tmp_path):
    from sparseprune.structured import plan

    x = torch.randn(4, 64)
    small = plan(mlp(), x, amount=0.5).apply()
    sparseprune.prune(small, 0.8, protect=None, scope="layer")
    sparseprune.remove(small)
    sparse, _ = sparseprune.convert(small, min_sparsity=0.0)
    path = tmp_path / "s.pt"
    sparseprune.save(sparse, path)
    loaded = sparseprune.load(path, mlp)
    assert loaded[2].in_features == sparse[2].in_features < 256
    torch.testing.assert_close(loaded(x), sparse(x), atol=0, rtol=0)


def test_a_lone_packed_layer_needs_no_factory(tmp_path):
    layer = SparseLinear.from_dense(_pruned_linear())
    path = tmp_path / "l.pt"
    sparseprune.save(layer, path)
    loaded = sparseprune.load(path)
    x = torch.randn(3, 40)
    torch.testing.assert_close(loaded(x), layer(x), atol=0, rtol=0)
    sparseprune.save(_converted(mlp, None), path)
    with pytest.raises(ValueError, match="pass model_factory"):
        sparseprune.load(path)


def _pruned_linear() -> nn.Linear:
    torch.manual_seed(1)
    lin = nn.Linear(40, 30)
    with torch.no_grad():
        lin.weight.mul_(torch.rand_like(lin.weight) > 0.8)
    return lin


def test_packed_modules_deepcopy_and_pickle():
    model = _converted(mlp, None)
    x = torch.randn(8, 64)
    model(x)  # run once, so derived layouts exist
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), model(x), atol=0, rtol=0)


def test_a_90_percent_sparse_model_is_small_on_disk(tmp_path):
    dense_path, sparse_path = tmp_path / "d.pt", tmp_path / "s.pt"
    torch.save(mlp().state_dict(), dense_path)
    sparseprune.save(_converted(mlp, None), sparse_path)
    ratio = sparse_path.stat().st_size / dense_path.stat().st_size
    # ~5 B per nonzero on disk (float32 value + ~1 B varint column gap) against 4 B per dense
    # weight, plus row pointers, biases and the file's per-tensor records.
    assert ratio <= 0.15, ratio


def _tampered(tmp_path, edit):
    model = _converted(mlp, None)
    path = tmp_path / "t.pt"
    sparseprune.save(model, path)
    data = torch.load(path, weights_only=True)
    edit(data)
    torch.save(data, path)
    return path


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["state_dict"]["0.col_idx"].fill_(0x81), "truncated"),
    (lambda d: d["state_dict"]["0.col_idx"].fill_(0x05), "column|col"),
    (lambda d: d.__setitem__("compact", []), "row_ptr|col_idx"),
    (lambda d: d.__setitem__("compact", ["nope."]), "'compact' must list"),
    (lambda d: d["state_dict"]["0.format_header"].__setitem__(4, 999), "header shape|rows|numbers"),
    (lambda d: d["packed"]["0"].__setitem__("in_features", -3), "not a valid"),
    (lambda d: d["packed"]["0"].__setitem__("in_features", [64]), "not a valid"),
    (lambda d: d["packed"]["0"].__setitem__("type", "os.system"), "not a SparseLinear"),
    (lambda d: d.__setitem__("format", "other/1"), "not a sparseprune model file"),
    (lambda d: d["state_dict"].pop("2.values"), "lacks the"),
    (lambda d: d["packed"].__setitem__("9", d["packed"]["0"]), "no module '9'"),
    (lambda d: d["widths"]["shapes"].__setitem__("1.nonexistent", [3]), "not in Sequential"),
    # widths may not resize a packed layer (its sizes are fixed): ValueError, not AttributeError
    (lambda d: d["widths"]["attrs"].__setitem__("0", {"in_features": 3}), "cannot set"),
    # buffers that have no readable data, or claim more than they hold, are refused unread
    (lambda d: d["state_dict"].__setitem__(
        "0.col_idx", torch.empty(9, dtype=torch.uint8, device="meta")), "dense 1-D uint8 CPU"),
    (lambda d: d["state_dict"].__setitem__(
        "0.row_ptr", d["state_dict"]["0.row_ptr"].to_sparse()), "dense 1-D uint8 CPU"),
    (lambda d: d["state_dict"].__setitem__(
        "0.format_header", d["state_dict"]["0.format_header"].to_sparse()), "dense CPU int64"),
    (lambda d: d["state_dict"].__setitem__(
        "0.format_header", torch.empty(8, dtype=torch.int64, device="meta")), "dense CPU int64"),
    (lambda d: d["state_dict"].__setitem__(
        "0.values", torch.ones(1).expand(d["state_dict"]["0.values"].numel())),
     "expanded view"),
])
def test_tampered_files_are_refused(tmp_path, edit, match):
    path = _tampered(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        sparseprune.load(path, mlp)


def test_damaged_and_code_running_files_are_refused(tmp_path):
    path = tmp_path / "m.pt"
    sparseprune.save(_converted(mlp, None), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable sparseprune model file"):
        sparseprune.load(path, mlp)

    class Evil:
        def __reduce__(self):
            return (print, ("ran code from the file",))

    torch.save({"format": "sparseprune.model/1", "x": Evil()}, path)
    with pytest.raises(ValueError, match="not a readable"):
        sparseprune.load(path, mlp)
    sparseprune.save(_converted(mlp, None), path)
    with pytest.raises(ValueError, match="does not fit|not in"):
        sparseprune.load(path, cnn)


def test_random_mutations_load_correctly_or_raise_value_error(tmp_path):
    """Bounded mutation fuzzing of the packed entries of a saved file: every load ends in a
    ValueError or in a model whose packed layers compute what their own dense weights do."""
    model = _converted(mlp, None)
    path = tmp_path / "f.pt"
    sparseprune.save(model, path)
    clean = torch.load(path, weights_only=True)
    g = torch.Generator().manual_seed(0)
    keys = [k for k, v in clean["state_dict"].items()
            if k.split(".", 1)[1] in ("values", "col_idx", "row_ptr", "format_header")]
    x = torch.randn(3, 64)
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(150):
        data = copy.deepcopy(clean)
        key = keys[int(torch.randint(len(keys), (1,), generator=g))]
        t = data["state_dict"][key]
        how = int(torch.randint(3, (1,), generator=g))
        if how == 0 and t.numel():  # one entry set to an extreme value
            i = int(torch.randint(t.numel(), (1,), generator=g))
            big = {torch.int64: 2**40, torch.int32: 2**31 - 1, torch.uint16: 65535,
                   torch.uint8: 255}
            low = 0 if t.dtype in (torch.uint16, torch.uint8) else -1
            high = big.get(t.dtype, float("inf"))
            t.view(-1)[i] = high if bool(torch.rand(1, generator=g) < 0.5) else low
        elif how == 1:  # truncated
            data["state_dict"][key] = t[: max(0, t.numel() - 1)].clone()
        else:  # shuffled
            data["state_dict"][key] = t[torch.randperm(t.numel(), generator=g)].clone()
        torch.save(data, path)
        try:
            loaded = sparseprune.load(path, mlp).eval()
        except ValueError:
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        h = x
        for layer in loaded:
            if isinstance(layer, SparseLinear):
                ref = torch.nn.functional.linear(h, layer.to_dense().weight, layer.bias)
                h = layer(h)
                torch.testing.assert_close(h, ref, atol=1e-4, rtol=1e-4, equal_nan=True)
            else:
                h = layer(h)
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 150


def _packed_cnn() -> nn.Sequential:
    """cnn() at 90 % with its convs packed (directly: convert() may measure them dense)."""
    model = cnn().eval()
    sparseprune.prune(model, 0.9, protect=None, scope="layer")
    sparseprune.remove(model)
    model[0], model[2] = SparseConv2d.from_dense(model[0]), SparseConv2d.from_dense(model[2])
    return model


def _tampered_cnn(tmp_path, edit):
    model = _packed_cnn()
    path = tmp_path / "c.pt"
    sparseprune.save(model, path)
    data = torch.load(path, weights_only=True)
    conv = next(n for n, s in data["packed"].items() if s["type"] == "SparseConv2d")
    edit(data, conv)
    torch.save(data, path)
    return path


@pytest.mark.parametrize("edit,match", [
    (lambda d, c: d["packed"][c].__setitem__("groups", [1]), "not a valid"),
    (lambda d, c: d["packed"][c].__setitem__("groups", 0), "groups must be a positive"),
    (lambda d, c: d["packed"][c].__setitem__("padding", [1]), "not a valid"),
    (lambda d, c: d["packed"][c].__setitem__("stride", [1, 1, 1]), "not a valid"),
    (lambda d, c: d["packed"][c].__setitem__("dilation", []), "not a valid"),
    (lambda d, c: d["packed"][c].__setitem__("kernel_size", [3]), "not a valid"),
    (lambda d, c: d["packed"][c].__setitem__("padding_mode", "mirror"), "padding_mode"),
    # a zero-stride filter_shape claiming 2**31 entries is refused before it is read
    (lambda d, c: d["state_dict"].__setitem__(
        f"{c}.filter_shape", torch.zeros(1, dtype=torch.int64).expand(2**31)), "4 entries"),
])
def test_tampered_conv_specs_are_refused(tmp_path, edit, match):
    path = _tampered_cnn(tmp_path, edit)
    with pytest.raises(ValueError, match=match):
        sparseprune.load(path, cnn)


def test_an_int_kernel_size_in_a_file_means_the_square_kernel(tmp_path):
    """``kernel_size=3`` is what nn.Conv2d accepts too: the file loads, with the same output."""
    x = torch.randn(2, 3, 8, 8)
    model = _packed_cnn()
    path = _tampered_cnn(tmp_path, lambda d, c: d["packed"][c].__setitem__("kernel_size", 3))
    loaded = sparseprune.load(path, cnn).eval()
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=1e-5)


def test_native_max_pools_come_back_native(tmp_path):
    from sparseprune.nn import MaxPool2d

    def factory():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                             nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()

    model, _ = sparseprune.convert(factory())
    assert type(model[2]) is MaxPool2d
    path = tmp_path / "p.pt"
    sparseprune.save(model, path)
    loaded = sparseprune.load(path, factory)
    assert type(loaded[2]) is MaxPool2d
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    data = torch.load(path, weights_only=True)
    data["native_pools"] = ["9"]
    torch.save(data, path)
    with pytest.raises(ValueError, match="no module '9'"):
        sparseprune.load(path, factory)
