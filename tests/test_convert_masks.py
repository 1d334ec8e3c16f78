"""convert() and prune masks: hooks folded on every module, the model passed in untouched, the
report naming what stays dense and why (protection, attention, no packed form)."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from torch import nn

import sparseprune
from sparseprune import SparseConv2d, SparseLinear, convert, prune
from sparseprune import choose as _choose


class TinyResNet(nn.Module):
    """Stem conv + BN, one residual block, pooled classifier: ResNet's shape in miniature."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


class TinyViT(nn.Module):
    """Patch embedding, one attention + MLP block, a head."""

    def __init__(self, **mha) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True, **mha)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x, x, x, need_weights=False)[0]
        return self.head((x + self.mlp(x)).mean(1))


def _prune_hooks(model):
    return [(n, h) for n, m in model.named_modules() for h in m._forward_pre_hooks.values()
            if isinstance(h, torch_prune.BasePruningMethod)]


def _pruned_resnet():
    torch.manual_seed(0)
    model = TinyResNet().eval()
    prune(model, 0.9)
    return model


def test_convert_folds_every_mask_and_leaves_the_original_alone():
    model = _pruned_resnet()
    # A mask convert has no packed form for: it is folded all the same.
    torch_prune.l1_unstructured(model.bn2, "weight", amount=0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        want = model(x)
    out, report = convert(model)
    assert _prune_hooks(out) == []
    assert not any(k.endswith(("_orig", "_mask")) for k in out.state_dict())
    assert isinstance(out.conv2, SparseConv2d)
    assert isinstance(out.fc, nn.Linear) and isinstance(out.fc.weight, nn.Parameter)
    with torch.no_grad():
        torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-5)
    # The model passed in still carries its masks, unchanged.
    assert {n for n, _ in _prune_hooks(model)} == {"conv2", "fc", "bn2"}
    assert before.keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert set(report.folded_masks) == {"conv2.weight", "bn2.weight", "fc.weight"}
    assert "prune masks folded into plain weights: 3 tensors" in str(report)
    bn_row = next(r for r in report.layers if r.name == "bn2")
    assert bn_row.format is None and bn_row.reason == "no packed form for BatchNorm2d"


def test_inplace_convert_folds_the_model_itself():
    model = _pruned_resnet()
    out, _ = convert(model, inplace=True)
    assert out is model and _prune_hooks(model) == []


def test_fold_prune_masks_false_keeps_masks_on_dense_layers():
    model = _pruned_resnet()
    out, report = convert(model, fold_prune_masks=False)
    assert [n for n, _ in _prune_hooks(out)] == ["fc"]
    assert report.folded_masks == ()


def test_folding_zeroes_nan_under_the_mask():
    lin = nn.Linear(4, 3)
    model = nn.Sequential(lin, nn.ReLU(), nn.Linear(3, 2))
    torch_prune.custom_from_mask(lin, "weight", torch.tensor([[1, 0, 1, 0]] * 3))
    with torch.no_grad():
        lin.weight_orig[:, 1] = float("nan")
    out, _ = convert(model, min_sparsity=0.9)  # nothing packed: only the fold
    assert isinstance(out[0], nn.Linear) and not out[0].weight.isnan().any()
    assert (out[0].weight[:, 1] == 0).all()


def test_report_says_why_nothing_was_converted_when_prune_protected_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 6 * 6, 10))
    prune(model, 0.9)
    _, report = convert(model)
    assert report.converted == []
    fc = report.layers[1]
    assert fc.plan == "protected (last linear, x0.5)"
    assert fc.reason == ("sparsity 0.450 < min_sparsity 0.5 "
                         "(prune protected it: last linear, x0.5)")
    assert report.headline == (
        "nothing converted: 2 layers: '0' at 0.0 % sparsity is below min_sparsity 0.5 (prune "
        "protected it: first conv, x0); '2' at 45.0 % sparsity is below min_sparsity 0.5 "
        "(prune protected it: last linear, x0.5; convert(min_sparsity=0.44) or "
        "prune(protect=None) would make it a candidate)")
    assert str(report).splitlines()[-2] == report.headline
    # The hint is right: at that threshold the classifier converts.
    _, report = convert(model, min_sparsity=0.44)
    assert [r.name for r in report.converted] == ["2"]


def test_report_groups_measured_layers_in_the_headline(monkeypatch):
    # Measuring is timing: a fake choose() that finds dense fastest keeps this deterministic.
    def dense_wins(cands, keep, inputs, build, dense, **kw):
        return _choose.Choice(_choose.Candidate(_choose.DENSE), "measured",
                              {"dense": 1.0, "sell": 0.8}, tuple(kw["batch_sizes"]))

    monkeypatch.setattr(_choose, "choose", dense_wins)
    model = _pruned_resnet()
    _, report = convert(model, example_inputs=torch.randn(1, 3, 8, 8), fold_batchnorm=False)
    assert report.converted == []
    assert "1 measured no faster than dense (best 0.80x)" in report.headline
    assert "'conv1' at 0.0 % sparsity is below min_sparsity 0.5 (prune protected it: first " \
           "conv, x0)" in report.headline


def test_plan_of_a_later_round_replaces_the_earlier_one():
    model = _pruned_resnet()
    assert sparseprune.pruning.report.planned(model.fc) == (0.45, "protected (last linear, "
                                                                  "x0.5)")
    prune(model, 0.9, protect=None, scope="layer")
    assert sparseprune.pruning.report.planned(model.fc) == (0.9, "pool")
    assert not any("plan" in k for k in model.state_dict())
    _, report = convert(model)
    assert "fc" in [r.name for r in report.converted]


def test_attention_projections_are_pruned_and_reported_dense_with_the_reason():
    torch.manual_seed(0)
    model = TinyViT().eval()
    pruned = prune(model, 0.9, scope="layer")
    rows = {f"{r.name}.{r.param}": r for r in pruned.layers}
    assert rows["attn.in_proj_weight"].shape == (96, 32)
    assert rows["attn.in_proj_weight"].pruned > 0 and rows["attn.out_proj.weight"].pruned > 0
    assert hasattr(model.attn, "in_proj_weight_orig")  # torch.nn.utils.prune's layout
    x = torch.randn(2, 5, 12)
    with torch.no_grad():
        want = model(x)
    out, report = convert(model)
    by_name = {r.name: r for r in report.layers}
    assert by_name["attn.in_proj_weight"].reason.startswith(
        "no packed form: nn.MultiheadAttention's forward reads in_proj_weight itself")
    assert by_name["attn.out_proj"].reason.startswith(
        "no packed form: nn.MultiheadAttention's forward reads out_proj.weight itself")
    assert isinstance(out.mlp[0], SparseLinear) and type(out.attn.out_proj) is not SparseLinear
    assert _prune_hooks(out) == []
    with torch.no_grad():
        torch.testing.assert_close(out(x), want, rtol=1e-4, atol=1e-5)
    assert "attn.in_proj_weight" in str(report)


def test_attention_with_separate_projections_prunes_each():
    torch.manual_seed(0)
    model = TinyViT(kdim=16, vdim=24)
    model.forward = lambda x: model.attn(model.embed(x), torch.randn(2, 5, 16),
                                         torch.randn(2, 5, 24))[0]
    pruned = prune(model, 0.5, protect=None)
    names = [f"{r.name}.{r.param}" for r in pruned.layers]
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight"} <= set(names)
    _, report = convert(model)
    assert {"attn.q_proj_weight", "attn.k_proj_weight",
            "attn.v_proj_weight"} <= {r.name for r in report.skipped}


@pytest.mark.parametrize("kind", ["subclass", "conv1d"])
def test_pruned_layers_without_a_converter_are_named(kind):
    class MyLinear(nn.Linear):
        pass

    layer = MyLinear(16, 16) if kind == "subclass" else nn.Conv1d(16, 16, 3)
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(16, 4) if kind == "subclass"
                          else nn.Conv1d(16, 4, 1))
    prune(model, 0.9, protect=None, scope="layer")
    _, report = convert(model)
    row = report.layers[0]
    assert row.name == "0" and row.format is None
    want = ("no packed form: a subclass of nn.Linear" if kind == "subclass"
            else "no packed form for Conv1d")
    assert row.reason.startswith(want)
