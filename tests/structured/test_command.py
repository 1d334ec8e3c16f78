"""``sparseprune channels``: factory + weights in, plan and before/after table out, file saved."""

import pytest
import torch

from sparseprune.cli import main
from sparseprune.structured import load_pruned, plan

from .models import MLP, ResNet18, randomize_bn

FACTORY = "tests.structured.models:ResNet18"


def test_channels_prunes_reports_and_saves(tmp_path, capsys):
    torch.manual_seed(0)
    weights = randomize_bn(ResNet18()).state_dict()
    torch.save(weights, tmp_path / "w.pt")
    out = tmp_path / "small.pt"
    code = main(["channels", FACTORY, "--input", "1,3,32,32", "--weights", str(tmp_path / "w.pt"),
                 "--amount", "0.5", "--round-to", "1", "--min-channels", "1", "--threads", "1",
                 "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "Structured pruning plan" in text and "speedup" in text
    assert text.count("before") >= 1 and "after" in text and "wrote" in text
    loaded = load_pruned(ResNet18, out).eval()
    model = ResNet18()
    model.load_state_dict(weights)
    x = torch.randn(2, 3, 32, 32)
    ref = plan(model.eval(), torch.randn(1, 3, 32, 32), amount=0.5, round_to=1,
               min_channels=1).apply()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), atol=1e-5, rtol=1e-5)


def test_channels_fold_bn(tmp_path, capsys):
    out = tmp_path / "small.pt"
    code = main(["channels", FACTORY, "--input", "1,3,32,32", "--macs", "0.7", "--fold-bn",
                 "--threads", "1", "-o", str(out)])
    assert code == 0
    assert "BatchNorm folded in both" in capsys.readouterr().out
    loaded = load_pruned(ResNet18, out)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.modules())


@pytest.mark.parametrize("args, message", [
    (["nope", "--amount", "0.5"], "expected 'package.module:callable'"),
    (["no_such_pkg.x:f", "--amount", "0.5"], "cannot import 'no_such_pkg.x'"),
    (["tests.structured.models:Nope", "--amount", "0.5"], "has no 'Nope'"),
    (["tests.structured.models:conv_bn", "--amount", "0.5"], "failed: TypeError"),
    (["tests.structured.models:MODELS", "--amount", "0.5"], "not callable"),
    ([FACTORY, "--amount", "1.5"], "amount must be in [0, 1)"),
])
def test_channels_errors(args, message, capsys):
    code = main(["channels", args[0], "--input", "1,3,32,32", *args[1:]])
    assert code == 2
    assert message in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _threads_restored():
    n = torch.get_num_threads()
    yield
    assert torch.get_num_threads() == n  # the command restores what it changed


@pytest.mark.parametrize("args, message", [
    (["--input", "1,4,16,16", "--amount", "0.5"], "does not run on a float32 input"),
    (["--input", "1,x", "--amount", "0.5"], "expected comma-separated integers"),
    (["--input", "1,3,32,32", "--amount", "0.5", "--threads", "-1"], "--threads must be >= 0"),
    (["--input", "1,3,32,32", "--amount", "0.5", "-o", "/no/such/dir/m.pt"], "does not exist"),
])
def test_channels_bad_arguments(args, message, capsys):
    try:
        code = main(["channels", FACTORY, *args])
    except SystemExit as exc:  # argparse rejects the value itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_channels_checkpoint_masks_and_ddp_prefix(tmp_path, capsys):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18())
    torch.nn.utils.prune.l1_unstructured(model.fc, "weight", 0.5)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pt")
    out = tmp_path / "s.pt"
    assert main(["channels", FACTORY, "--input", "1,3,32,32", "--weights",
                 str(tmp_path / "ckpt.pt"), "--amount", "0.5", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "from tests.structured.models import ResNet18" in text
    torch.save(load_pruned(ResNet18, out).state_dict(), tmp_path / "small_sd.pt")
    assert main(["channels", FACTORY, "--input", "1,3,32,32", "--weights",
                 str(tmp_path / "small_sd.pt"), "--amount", "0.5"]) == 2
    assert "loads with load_pruned" in capsys.readouterr().err
    torch.save(model, tmp_path / "module.pt")
    assert main(["channels", FACTORY, "--input", "1,3,32,32", "--weights",
                 str(tmp_path / "module.pt"), "--amount", "0.5"]) == 2
    assert "channels:" in capsys.readouterr().err


def test_channels_rejects_weights_that_do_not_fit(tmp_path, capsys):
    torch.save(MLP().state_dict(), tmp_path / "mlp.pt")
    code = main(["channels", FACTORY, "--input", "1,3,32,32", "--weights",
                 str(tmp_path / "mlp.pt"), "--amount", "0.5"])
    assert code == 2
    assert "does not fit ResNet18" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"not a file")
    assert main(["channels", FACTORY, "--input", "1,3,32,32", "--weights",
                 str(tmp_path / "junk.pt"), "--amount", "0.5"]) == 2
    assert "not a torch save file" in capsys.readouterr().err


def test_channels_per_layer_options_match_plan(tmp_path, capsys):
    """--ignore / --layer-amount / --grouped / --min-ratio reach plan() as ignore / amounts /
    grouped / min_ratio: the saved model equals the one plan() builds with the same options."""
    torch.manual_seed(0)
    weights = randomize_bn(ResNet18()).state_dict()
    torch.save(weights, tmp_path / "w.pt")
    out = tmp_path / "small.pt"
    code = main(["channels", FACTORY, "--input", "1,3,32,32", "--weights", str(tmp_path / "w.pt"),
                 "--amount", "0.25", "--layer-amount", "layers.7.*=0.75", "--ignore", "layers.0.*",
                 "--grouped", "groups", "--min-ratio", "0.05", "--round-to", "1",
                 "--min-channels", "1", "--threads", "1", "-o", str(out)])
    capsys.readouterr()
    assert code == 0
    model = ResNet18()
    model.load_state_dict(weights)
    p = plan(model.eval(), torch.randn(1, 3, 32, 32), amount=0.25,
             amounts={"layers.7.*": 0.75}, ignore=("layers.0.*",), grouped="groups",
             min_ratio=0.05, round_to=1, min_channels=1)
    ref = p.apply()
    loaded = load_pruned(ResNet18, out).eval()
    # the first block's inner width kept whole, the last block's cut deeper than the others
    width = [(small.conv1.out_channels, full.conv1.out_channels)
             for small, full in zip(loaded.layers, model.layers, strict=True)]
    assert width[0][0] == width[0][1]
    assert width[7][0] / width[7][1] < width[3][0] / width[3][1] < 1
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("argv, message", [
    (["--layer-amount", "layers.7.*=0.7", "--macs", "0.5"], "amounts"),
    (["--layer-amount", "nomatch.*=0.5"], "nomatch"),
    ([], "is required"),
])
def test_channels_per_layer_option_errors(argv, message, capsys):
    code = main(["channels", FACTORY, "--input", "1,3,32,32", "--threads", "1", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


def test_channels_layer_amount_needs_glob_and_number(capsys):
    for bad in ("layer4", "layer4.*=lots", "=0.5"):
        with pytest.raises(SystemExit) as exc:
            main(["channels", FACTORY, "--input", "1,3,32,32", "--layer-amount", bad])
        assert exc.value.code == 2
        assert "--layer-amount" in capsys.readouterr().err


@pytest.mark.parametrize("value, ok", [("auto", True), ("16", True), ("0", False),
                                       ("x", False)])
def test_channels_round_to_parses_auto_and_ints(value, ok, capsys):
    argv = ["channels", FACTORY, "--input", "1,3,32,32", "--amount", "0.3", "--round-to",
            value, "--threads", "1"]
    if ok:
        assert main(argv) == 0
        assert f"round_to={value}" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit):
            main(argv)
        assert "expected a positive integer or 'auto'" in capsys.readouterr().err
