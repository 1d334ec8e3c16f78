import pytest
import torch
from torch import nn

import sparseprune
from sparseprune.cli import main
from sparseprune.workflow.files import ModelFileError, inspect_state, load_model_file


@pytest.fixture
def files(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    sparseprune.prune(model, 0.9)
    paths = {"sd": tmp_path / "sd.pt", "module": tmp_path / "module.pt",
             "junk": tmp_path / "junk.pt", "ckpt": tmp_path / "ckpt.pt",
             "other": tmp_path / "other.pt"}
    torch.save(model.state_dict(), paths["sd"])
    torch.save(model, paths["module"])
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, paths["ckpt"])
    torch.save({"epoch": 3}, paths["other"])
    paths["junk"].write_text("not a model")
    return model, paths


def test_inspect_state_dict_and_checkpoint(files, capsys):
    model, paths = files
    for key in ("sd", "ckpt"):
        assert main(["inspect", str(paths[key])]) == 0
        out = capsys.readouterr().out
        assert "a state_dict" in out and "128x64" in out and "90.0%" in out
    rows = inspect_state(model.state_dict())
    assert [r.name for r in rows] == ["0", "2"]
    assert rows[0].nonzeros == sparseprune.summary(model).rows[0].nonzeros


def test_module_file_needs_unsafe_load(files, capsys):
    _, paths = files
    assert main(["inspect", str(paths["module"])]) == 2
    err = capsys.readouterr().err
    assert "needs code to unpickle" in err and "--unsafe-load" in err and "Sequential" in err
    assert main(["inspect", str(paths["module"]), "--unsafe-load"]) == 0
    assert "Sequential module" in capsys.readouterr().out


@pytest.mark.parametrize("key,message", [("junk", "not a torch save file"),
                                         ("other", "not a model or a state_dict")])
def test_bad_files_give_clear_errors(files, key, message, capsys):
    _, paths = files
    assert main(["inspect", str(paths[key])]) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ModelFileError, match="no such file"):
        load_model_file(paths[key].with_name("missing.pt"))


def test_convert_state_dict_round_trips(files, tmp_path, capsys):
    model, paths = files
    out = tmp_path / "sparse.pt"
    assert main(["convert", str(paths["sd"]), "-o", str(out), "--min-sparsity", "0.4"]) == 0
    text = capsys.readouterr().out
    assert "sell" in text and "speedup" in text and "wrote" in text
    packed = torch.load(out, weights_only=True)
    assert "0.values" in packed and "2.values" in packed
    sparse, _ = sparseprune.convert(model, min_sparsity=0.4)
    sparse.load_state_dict(packed)
    x = torch.randn(4, 64)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-4, atol=1e-5)


def test_convert_module_with_exclude(files, tmp_path, capsys):
    model, paths = files
    out = tmp_path / "sparse_module.pt"
    assert main(["convert", str(paths["module"]), "-o", str(out), "--unsafe-load",
                 "--exclude", "2"]) == 0
    assert "excluded" in capsys.readouterr().out
    sparse = torch.load(out, weights_only=False)
    assert isinstance(sparse[0], sparseprune.SparseLinear) and isinstance(sparse[2], nn.Linear)


def test_convert_keeps_every_tensor_it_does_not_pack(tmp_path, capsys):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.Linear(32, 4))
    model.register_buffer("index", torch.arange(5))
    model(torch.randn(8, 16))  # num_batches_tracked = 1
    sparseprune.prune(model, 0.8, scope="layer", protect=None)
    src, once, twice = tmp_path / "sd.pt", tmp_path / "once.pt", tmp_path / "twice.pt"
    torch.save(model.state_dict(), src)
    assert main(["convert", str(src), "-o", str(once), "--min-sparsity", "0.5"]) == 0
    packed = torch.load(once, weights_only=True)
    for key in ("1.num_batches_tracked", "1.running_mean", "1.running_var", "1.weight", "index"):
        assert key in packed, key
    assert packed["1.num_batches_tracked"].item() == 1 and torch.equal(packed["index"],
                                                                      torch.arange(5))
    assert {"0.row_ptr", "0.col_idx", "0.format_header", "0.values"} <= set(packed)
    # converting an already converted file keeps the packed layers as they are
    assert main(["convert", str(once), "-o", str(twice)]) == 0
    again = torch.load(twice, weights_only=True)
    assert set(again) == set(packed)
    for key, value in packed.items():
        assert torch.equal(again[key], value), key
    capsys.readouterr()


def test_zero_size_weights(tmp_path, capsys):
    state = {"a.weight": torch.zeros(0, 4), "b.weight": torch.zeros(4, 0),
             "c.weight": torch.ones(4, 4)}
    path = tmp_path / "empty.pt"
    torch.save(state, path)
    rows = inspect_state(state)
    assert [(r.name, r.params, r.nonzeros, r.dense_bytes) for r in rows[:2]] == [
        ("a", 0, 0, 0), ("b", 0, 0, 0)]
    assert main(["inspect", str(path)]) == 0
    assert main(["convert", str(path), "-o", str(tmp_path / "out.pt")]) == 0
    assert set(torch.load(tmp_path / "out.pt", weights_only=True)) == set(state)
    capsys.readouterr()


def test_tensor_bytes_helper_matches_summary():
    from sparseprune.pruning.summary import csr_bytes, tensor_bytes

    w = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    assert tensor_bytes(w) == (3, 24, min(24, csr_bytes(2, 3, 3)))
    assert tensor_bytes(torch.zeros(0, 4)) == (0, 0, 0)
    assert tensor_bytes(torch.zeros(4, 0)) == (0, 0, 0)


class _WithExtra(nn.Linear):
    def get_extra_state(self):
        return {"version": 2}

    def set_extra_state(self, state):
        pass


def test_non_tensor_entries_are_skipped_and_named(tmp_path, capsys):
    plain = tmp_path / "plain.pt"
    torch.save({"fc.weight": torch.randn(8, 8), "epoch": 3}, plain)
    assert main(["inspect", str(plain)]) == 0
    out = capsys.readouterr().out
    assert "8x8" in out and "epoch" in out and "skipped" in out
    extra = tmp_path / "extra.pt"
    model = nn.Sequential(_WithExtra(8, 8))
    sparseprune.prune(model, 0.75, protect=None)
    torch.save(model.state_dict(), extra)
    assert main(["inspect", str(extra)]) == 0
    assert "0._extra_state" in capsys.readouterr().out
    out_path = tmp_path / "out.pt"
    assert main(["convert", str(extra), "-o", str(out_path)]) == 0
    assert "0._extra_state" in capsys.readouterr().out
    packed = torch.load(out_path, weights_only=True)
    assert "0.values" in packed and packed["0._extra_state"] == {"version": 2}


def test_pattern_names_the_tightest_n_of_m():
    w = torch.zeros(4, 8)
    w[:, ::4] = 1.0  # one nonzero per group of 4
    assert inspect_state({"fc.weight": w})[0].pattern == "1:4"
    w[:, 1::4] = 1.0
    assert inspect_state({"fc.weight": w})[0].pattern == "2:4"


@pytest.mark.parametrize("key", ["sd", "module"])
@pytest.mark.parametrize("option,message", [(["--exclude", "nope"], "nope"),
                                            (["--min-sparsity", "1.5"], "min_sparsity")])
def test_convert_checks_options_for_every_kind_of_file(files, tmp_path, capsys, key, option,
                                                       message):
    _, paths = files
    out = tmp_path / "out.pt"
    assert main(["convert", str(paths[key]), "-o", str(out), "--unsafe-load", *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseprune convert:") and message in err
    assert not out.exists()


def test_inspect_reports_a_bad_packed_layer(tmp_path, capsys):
    path = tmp_path / "bad.pt"
    torch.save({"fc.values": torch.ones(3), "fc.row_ptr": torch.zeros(3, dtype=torch.int64),
                "fc.col_idx": torch.zeros(3, dtype=torch.int16),
                "fc.format_header": torch.zeros(2)}, path)
    assert main(["inspect", str(path)]) == 2
    assert capsys.readouterr().err.startswith("sparseprune inspect:")
