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
    assert "csr[" in text and "speedup" in text and "wrote" in text
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
