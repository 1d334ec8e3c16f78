"""BatchNorm folding: equal outputs, fewer modules, scriptable, save/load, what is left alone."""

import pytest
import torch
from torch import nn

from sparseprune.structured import (
    fold_batchnorm,
    folded_batchnorms,
    load_pruned,
    plan,
    save_pruned,
)

from .models import MODELS, MobileNetV2, ResNet18, randomize_bn


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


@pytest.mark.parametrize("name", ["vgg", "resnet18", "mobilenetv2", "inception", "shufflenetv2",
                                  "se", "unet", "conv1d"])
def test_fold_equals_eval_model(name):
    factory, example = MODELS[name]
    torch.manual_seed(0)
    model = randomize_bn(factory())
    x = example()
    folded = fold_batchnorm(model)
    assert _count(model, nn.modules.batchnorm._BatchNorm) > 0  # the original is untouched
    assert folded_batchnorms(folded), "nothing folded"
    left = _count(folded, nn.modules.batchnorm._BatchNorm)
    assert left + len(folded_batchnorms(folded)) == _count(model, nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_every_resnet_batchnorm_folds():
    model = randomize_bn(ResNet18())
    folded = fold_batchnorm(model)
    assert _count(folded, nn.modules.batchnorm._BatchNorm) == 0
    assert all(folded.get_submodule(c).bias is not None for c in folded_batchnorms(folded).values())


def test_shared_and_hooked_convs_are_left_alone():
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.bn2 = nn.BatchNorm2d(4)
            self.c2 = nn.Conv2d(4, 4, 1)
            self.bn3 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.bn(self.conv(x))
            y = self.bn2(self.conv(y))  # the conv is called twice: folding would be wrong
            z = self.c2(y)
            return self.bn3(z) + z  # the conv output has two users

    torch.manual_seed(0)
    model = randomize_bn(Shared())
    folded = fold_batchnorm(model)
    assert folded_batchnorms(folded) == {}
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(folded(x), model(x))

    pruned = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))
    torch.nn.utils.prune.l1_unstructured(pruned[0], "weight", amount=0.5)
    assert folded_batchnorms(fold_batchnorm(pruned)) == {}


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_plan_apply_fold_bn_scripts_and_saves(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(MobileNetV2())
    x = torch.randn(2, 3, 64, 64)
    p = plan(model, x, amount=0.5)
    small = p.apply(fold_bn=True, channels_last=True)
    assert not small.training
    assert _count(small, nn.modules.batchnorm._BatchNorm) == 0
    with torch.no_grad():
        ref = p.masked_model()(x)
        torch.testing.assert_close(small(x), ref, atol=1e-4, rtol=1e-4)
        scripted = torch.jit.script(small)
        torch.testing.assert_close(scripted(x), ref, atol=1e-4, rtol=1e-4)
    save_pruned(small, tmp_path / "m.pt")
    loaded = load_pruned(MobileNetV2, tmp_path / "m.pt").eval()
    assert folded_batchnorms(loaded) == folded_batchnorms(small)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), atol=1e-6, rtol=1e-6)


def test_load_rejects_a_bad_folded_entry(tmp_path):
    small = fold_batchnorm(randomize_bn(ResNet18()))
    save_pruned(small, tmp_path / "r.pt")
    data = torch.load(tmp_path / "r.pt", weights_only=True)
    data["widths"]["folded"] = {"fc": "stem.0"}
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="expected BatchNorm -> conv"):
        load_pruned(ResNet18, tmp_path / "bad.pt")
    data["widths"]["folded"] = {"nope": "stem.0"}
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not in ResNet18"):
        load_pruned(ResNet18, tmp_path / "bad.pt")


def test_conv_transpose_folds_and_grouped_one_does_not():
    torch.manual_seed(0)
    model = randomize_bn(nn.Sequential(
        nn.ConvTranspose2d(4, 6, 2, 2), nn.BatchNorm2d(6),
        nn.ConvTranspose2d(6, 6, 3, padding=1, groups=3), nn.BatchNorm2d(6),
    ))
    folded = fold_batchnorm(model)
    assert folded_batchnorms(folded) == {"1": "0"}
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_batchnorm_variants():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
    )
    model[1].running_mean.normal_()
    model[1].running_var.uniform_(0.5, 1.5)
    folded = fold_batchnorm(model.train())  # a training-mode model comes back in eval mode
    assert not folded.training
    assert folded_batchnorms(folded) == {"1": "0"}  # no running stats: nothing to fold
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(folded(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_aliased_read_and_parametrized_modules_are_left_alone():
    class Aliased(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.block = nn.Sequential(self.conv, self.bn)  # the same modules under two names

        def forward(self, x):
            return self.block(x)

    class Reads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv.weight.sum()

    x = torch.randn(2, 3, 8, 8)
    for model in (randomize_bn(Aliased()), randomize_bn(Reads())):
        folded = fold_batchnorm(model)
        assert folded_batchnorms(folded) == {}
        torch.testing.assert_close(folded(x), model(x))
    sn = randomize_bn(nn.Sequential(nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)),
                                    nn.BatchNorm2d(4)))
    assert folded_batchnorms(fold_batchnorm(sn)) == {}


def test_folded_submodule_saves_and_loads_in_eval_mode(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(ResNet18())
    model.layers[0] = fold_batchnorm(model.layers[0])
    assert "layers.0.bn1" in folded_batchnorms(model)
    save_pruned(model, tmp_path / "r.pt")
    loaded = load_pruned(ResNet18, tmp_path / "r.pt")
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), atol=0, rtol=0)
