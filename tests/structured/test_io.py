"""Save/load via state_dict + width config, torch.jit.script, torch.export, channels_last."""

import pytest
import torch

from sparseprune.structured import load_pruned, plan, save_pruned

from .models import MLP, ResNet18, ViT, randomize_bn


@pytest.fixture(scope="module")
def pruned_resnet():
    torch.manual_seed(0)
    model = randomize_bn(ResNet18())
    x = torch.randn(2, 3, 32, 32)
    p = plan(model, x, amount=0.5, round_to=1, min_channels=1)
    return p.apply(), x, p


def test_save_load_roundtrip(tmp_path, pruned_resnet):
    small, x, _ = pruned_resnet
    path = tmp_path / "r.pt"
    save_pruned(small, path)
    data = torch.load(path, weights_only=True)  # plain tensors and ints, no modules
    assert "state_dict" in data and "widths" in data
    loaded = load_pruned(ResNet18, path).eval()
    torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)


def test_save_load_heads(tmp_path):
    torch.manual_seed(0)
    model = ViT().eval()
    x = torch.randn(1, 3, 32, 32)
    small = plan(model, x, amount=0.5, round_to=1, min_channels=1).apply()
    save_pruned(small, tmp_path / "v.pt")
    loaded = load_pruned(ViT, tmp_path / "v.pt").eval()
    assert loaded.blocks[0].attn.num_heads == small.blocks[0].attn.num_heads
    torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)


def test_load_rejects_other_files(tmp_path):
    torch.save({"a": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a sparseprune"):
        load_pruned(MLP, tmp_path / "x.pt")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_jit_script_and_export(pruned_resnet):
    small, x, _ = pruned_resnet
    scripted = torch.jit.script(small)
    torch.testing.assert_close(scripted(x), small(x), atol=1e-5, rtol=1e-5)
    exported = torch.export.export(small, (x,))
    torch.testing.assert_close(exported.module()(x), small(x), atol=1e-5, rtol=1e-5)


def test_channels_last(pruned_resnet):
    _small, x, p = pruned_resnet
    cl = p.apply(channels_last=True)
    assert cl.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
