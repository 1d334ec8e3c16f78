"""convert() on CNNs: Conv2d layers become SparseConv2d, eval-mode BatchNorms fold into them,
and the converted model equals the masked original."""

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import sparseprune
from sparseprune import SparseConv2d


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.down is None else self.down(x)))


class ResNet18Shaped(nn.Module):
    """ResNet-18's layout (stem, 4 stages of 2 basic blocks, avgpool, fc) at a width factor."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], width
        for mult, stride in ((1, 1), (2, 2), (4, 2), (8, 2)):
            blocks += [BasicBlock(cin, width * mult, stride), BasicBlock(width * mult,
                                                                         width * mult, 1)]
            cin = width * mult
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _pruned_resnet(sparsity: float, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ResNet18Shaped()
    for m in model.modules():  # non-trivial statistics, so folding is really tested
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and name != "stem.0":
            prune.l1_unstructured(m, "weight", sparsity)
    return model.eval()


@pytest.mark.parametrize("measure", [False, True], ids=["cost-model", "measured"])
def test_pruned_resnet_converts_and_matches(measure):
    model = _pruned_resnet(0.9)
    x = torch.randn(2, 3, 64, 64)
    kwargs = dict(example_inputs=x) if measure else {}
    sparse, report = sparseprune.convert(model, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-4, rtol=1e-4)
    convs = {r.name: r for r in report.layers if r.type == "Conv2d"}
    assert convs["stem.0"].format is None  # unpruned: kept dense
    if not measure:  # the cost model packs every 90 % conv with enough taps per output
        from sparseprune._convert_conv import COST_MODEL_MIN_TAPS

        for n, r in convs.items():
            taps = r.shape[1] * r.shape[2] * r.shape[3]
            want = "csr" if n != "stem.0" and taps >= COST_MODEL_MIN_TAPS else None
            assert r.format == want, (n, r)
    packed = [n for n, m in sparse.named_modules() if isinstance(m, SparseConv2d)]
    assert packed and all(convs[n].format == "csr" for n in packed)
    # Every packed conv that had a BatchNorm after it took it in; the BN is gone.
    for n in packed:
        folded = convs[n].folded
        assert folded, n
        assert isinstance(sparse.get_submodule(folded), nn.Identity)
    # The original is untouched.
    assert isinstance(model.layers[0].bn1, nn.BatchNorm2d)


def test_fold_batchnorm_false_keeps_every_batchnorm():
    model = _pruned_resnet(0.9)
    x = torch.randn(1, 3, 32, 32)
    sparse, report = sparseprune.convert(model, fold_batchnorm=False)
    assert not any(r.folded for r in report.layers)
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in sparse.modules()) == n_bn
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-4, rtol=1e-4)


def test_training_mode_batchnorm_is_not_folded():
    model = _pruned_resnet(0.9).train()
    sparse, report = sparseprune.convert(model)
    assert not any(r.folded for r in report.layers)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in sparse.modules()) > 0


def test_folding_equals_conv_then_bn_in_eval_mode():
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 16, 3, padding=1, bias=True)
    prune.random_unstructured(conv, "weight", 0.8)
    bn = nn.BatchNorm2d(16)
    bn.running_mean.normal_()
    bn.running_var.uniform_(0.2, 3.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    model = nn.Sequential(conv, bn, nn.ReLU()).eval()
    x = torch.randn(3, 8, 11, 9)
    sparse, report = sparseprune.convert(model)
    assert report.layers[0].folded == "1"
    assert isinstance(sparse[0], SparseConv2d) and isinstance(sparse[1], nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)
    # Pruned entries stay pruned after scaling by the BatchNorm.
    assert sparse[0].weight.nnz == int(conv.weight_mask.sum())


def test_batchnorm_with_a_second_consumer_is_not_folded():
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # the conv's output is also used directly

    model = TwoUses().eval()
    prune.l1_unstructured(model.conv, "weight", 0.9)
    sparse, report = sparseprune.convert(model)
    assert report.layers[0].format == "csr" and not report.layers[0].folded
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-5, rtol=1e-5)


def test_cost_model_keeps_depthwise_and_moderate_sparsity_dense():
    torch.manual_seed(0)
    dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
    mid = nn.Conv2d(32, 32, 3, padding=1)
    prune.l1_unstructured(dw, "weight", 0.9)
    prune.l1_unstructured(mid, "weight", 0.55)
    _, report = sparseprune.convert(nn.Sequential(dw, mid))
    assert [r.format for r in report.layers] == [None, None]
    assert all("cost model" in r.reason for r in report.layers)


def test_formats_without_a_conv_format_keep_convs_dense():
    conv = nn.Conv2d(16, 16, 3, padding=1)
    prune.l1_unstructured(conv, "weight", 0.9)
    _, report = sparseprune.convert(nn.Sequential(conv), formats=["sell"])
    assert report.layers[0].format is None


def test_measured_conv_choice_is_cached_per_input_size():
    conv = nn.Conv2d(32, 32, 3, padding=1)
    prune.l1_unstructured(conv, "weight", 0.9)
    model = nn.Sequential(conv).eval()
    _, first = sparseprune.convert(model, example_inputs=torch.randn(1, 32, 16, 16))
    _, again = sparseprune.convert(model, example_inputs=torch.randn(1, 32, 16, 16))
    _, other = sparseprune.convert(model, example_inputs=torch.randn(1, 32, 20, 20))
    assert first.layers[0].how == "measured"
    assert again.layers[0].how == "cached"
    assert other.layers[0].how == "measured"  # another input size is another measurement


@pytest.mark.parametrize("measure", [False, True], ids=["cost-model", "measured"])
def test_block_pruned_convs_use_r_by_1_blocks(measure):
    torch.manual_seed(3)
    model = ResNet18Shaped(width=16).eval()
    sparseprune.prune(model, 0.9, pattern="block8x1", scope="layer", exclude=["fc"])
    x = torch.randn(1, 3, 48, 48)
    kwargs = dict(example_inputs=x) if measure else {}
    sparse, report = sparseprune.convert(model, **kwargs)
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), atol=1e-4, rtol=1e-4)
    formats = {r.format for r in report.layers if r.type == "Conv2d" and r.format}
    assert formats and formats <= {"csr", "bsr8x1", "bsr4x1"}
    if not measure:
        assert formats == {"bsr8x1"}
    for m in sparse.modules():
        if isinstance(m, SparseConv2d) and m.format == "bsr":
            assert m.weight.params[1] == 1


def test_block_shapes_a_conv_cannot_run_are_not_candidates():
    conv = nn.Conv2d(16, 12, 3, padding=1, groups=2)  # 6 outputs per group: 4x1 would straddle
    sparseprune.prune(nn.Sequential(conv), 0.75, pattern="block4x4", scope="layer")
    _, report = sparseprune.convert(nn.Sequential(conv),
                                    example_inputs=torch.randn(1, 16, 10, 10))
    assert report.layers[0].format in (None, "csr")
    assert all(not label.startswith("bsr") for label, _ in report.layers[0].measured)
