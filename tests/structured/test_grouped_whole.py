"""``grouped="groups"``: grouped convs (1 < groups < in_channels) lose whole groups.

The group count, the in/out channels and the layers around shrink; the pruned model equals
``plan.masked_model()``, and the plan's MACs equal the pruned model's. Hand-built blocks: a
ResNeXt-like bottleneck (biases, GroupNorm on the grouped width), a RegNet-like block (group
width 4, SE, projection shortcut), a grouped conv with a channel multiplier, and two grouped
1x1s with different group counts back to back (their units merge).
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprune.structured import count_macs, load_pruned, plan, save_pruned, trace

from .macs import assert_macs_agree
from .models import randomize_bn
from .test_latency import MacClock
from .zoo_models import FAMILIES, SqueezeExcitation, randomize

# one unit per group, so no rounding or channel floors get in the way
FINE = {"round_to": 1, "min_channels": 1}


class ResNeXtBlock(nn.Module):
    """1x1 -> GroupNorm(6) -> 3x3 with 6 groups of 8 (bias) -> BN -> 1x1, plus identity."""

    def __init__(self, c: int = 32, width: int = 48, groups: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, width, 1)
        self.gn = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, groups=groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = F.relu(self.gn(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        x = F.relu(x + self.bn3(self.conv3(y)))
        return self.fc(x.mean((2, 3)))


class RegNetLike(nn.Module):
    """RegNetY-style: a (1x1) -> b (3x3, group width 4, stride 2) -> SE -> c (1x1) + proj."""

    def __init__(self, cin: int = 16, w: int = 32, gw: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(cin), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(cin, w, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(w, w, 3, 2, 1, groups=w // gw, bias=False),
                               nn.BatchNorm2d(w), nn.ReLU())
        self.se = SqueezeExcitation(w, 4)
        self.c = nn.Sequential(nn.Conv2d(w, w, 1, bias=False), nn.BatchNorm2d(w))
        self.proj = nn.Sequential(nn.Conv2d(cin, w, 1, 2, bias=False), nn.BatchNorm2d(w))
        self.fc = nn.Linear(w, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.proj(x) + self.c(self.se(self.b(self.a(x)))))
        return self.fc(x.mean((2, 3)))


class Multiplier(nn.Module):
    """A grouped conv with 4 groups of 4 inputs and 8 outputs each, then a plain 1x1."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.g = nn.Conv2d(16, 32, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(32)
        self.out = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.bn(self.g(F.relu(self.a(x))))))


class GroupedPair(nn.Module):
    """Grouped 1x1s back to back: 8 groups of 4, then 4 groups of 8 (two of the first's groups
    feed one of the second's, so they leave together)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 32, 3, padding=1)
        self.g1 = nn.Conv2d(32, 32, 1, groups=8)
        self.g2 = nn.Conv2d(32, 32, 1, groups=4)
        self.out = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.g2(F.relu(self.g1(F.relu(self.a(x)))))))


class InputGrouped(nn.Module):
    """A grouped conv on the model input: its input channels cannot shrink, so whole groups
    cannot leave; its outputs still lose the same positions in every group."""

    def __init__(self) -> None:
        super().__init__()
        self.g = nn.Conv2d(4, 32, 3, padding=1, groups=2)
        self.out = nn.Conv2d(32, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.g(x)))


def _exact(model, x, p) -> nn.Module:
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert small(x).shape == model(x).shape
    # the plan's MAC prediction is the pruned model's count
    assert p.after["macs"] == pytest.approx(count_macs(small, x), rel=1e-9)
    return small


def _conv(model, name) -> tuple[int, int, int]:
    m = model.get_submodule(name)
    return m.groups, m.in_channels, m.out_channels


def test_resnext_block_loses_whole_groups():
    torch.manual_seed(0)
    model = randomize_bn(ResNeXtBlock()).eval()
    x = torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5, grouped="groups", **FINE)
    small = _exact(model, x, p)
    groups, cin, cout = _conv(small, "conv2")
    assert 0 < groups < 6 and cin == cout == 8 * groups  # group width 8 stays
    assert small.conv2.weight.shape[1] == 8
    assert small.conv1.out_channels == cin and small.conv3.in_channels == cout
    assert small.gn.num_groups == groups and small.gn.num_channels == cin
    assert small.bn2.num_features == cout
    # conv1, conv2 (and GroupNorm, BN) share one group of 6 units of 8 channels
    g = next(g for g in p.graph.groups if "conv2" in g.producers)
    assert "conv1" in g.producers and len(g) == 6 and g.unit_channels == 8
    assert "grouped='groups'" in str(p).splitlines()[0]
    assert_macs_agree(p, model, small, x, rel=1e-6)


def test_regnet_like_block_group_count_and_macs():
    torch.manual_seed(0)
    model = randomize_bn(RegNetLike()).eval()
    x = torch.randn(2, 3, 16, 16)
    p = plan(model, x, amount=0.5, grouped="groups", **FINE)
    small = _exact(model, x, p)
    groups, cin, cout = _conv(small, "b.0")
    assert groups == 4 and cin == cout == 16  # 8 groups of 4 -> 4 groups of 4
    assert small.a[0].out_channels == 16 and small.se.fc1.in_channels == 16
    assert small.se.fc2.out_channels == 16 and small.c[0].in_channels == 16
    cut = assert_macs_agree(p, model, small, x, rel=1e-6)
    assert cut > 1.5
    # channels mode keeps the group count and shrinks each group instead
    pc = plan(model, x, amount=0.5, **FINE)
    assert _conv(_exact(model, x, pc), "b.0") == (8, 16, 16)


def test_grouped_conv_with_channel_multiplier():
    torch.manual_seed(0)
    model = randomize_bn(Multiplier()).eval()
    x = torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5, grouped="groups", **FINE)
    small = _exact(model, x, p)
    groups, cin, cout = _conv(small, "g")
    assert 0 < groups < 4 and (cin, cout) == (4 * groups, 8 * groups)
    assert small.a.out_channels == cin and small.out.in_channels == cout
    assert_macs_agree(p, model, small, x, rel=1e-6)


def test_grouped_pair_merges_units():
    torch.manual_seed(0)
    model = GroupedPair().eval()
    x = torch.randn(2, 3, 8, 8)
    p = plan(model, x, amount=0.5, grouped="groups", **FINE)
    small = _exact(model, x, p)
    g1, g2 = _conv(small, "g1"), _conv(small, "g2")
    assert g1[0] == 2 * g2[0] and 0 < g2[0] < 4  # two groups of g1 per group of g2
    assert g1[1] == g1[2] == g2[1] == 4 * g1[0]


def test_grouped_conv_on_fixed_input_falls_back_to_positions():
    torch.manual_seed(0)
    model = InputGrouped().eval()
    x = torch.randn(2, 4, 8, 8)
    p = plan(model, x, amount=0.5, grouped="groups", **FINE)
    small = _exact(model, x, p)
    assert _conv(small, "g") == (2, 4, 16)


@pytest.mark.parametrize("name", ["resnext", "regnet"])
def test_zoo_families_prune_whole_groups(name):
    torch.manual_seed(0)
    factory, shape = FAMILIES[name]
    model = randomize(factory())
    x = torch.randn(shape)
    p = plan(model, x, amount=0.5, grouped="groups")
    small = _exact(model, x, p)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups
               < m.in_channels]
    after = [m for m in small.modules() if isinstance(m, nn.Conv2d) and m.groups > 1
             and m.groups != m.in_channels]
    assert len(after) == len(grouped)
    for m, s in zip(grouped, after, strict=True):
        # same group width, fewer groups
        assert s.in_channels // s.groups == m.in_channels // m.groups
        assert s.out_channels // s.groups == m.out_channels // m.groups
        assert s.groups < m.groups
    assert assert_macs_agree(p, model, small, x) > 2.5


def test_groups_mode_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(RegNetLike()).eval()
    x = torch.randn(2, 3, 16, 16)
    small = plan(model, x, amount=0.5, grouped="groups", **FINE).apply()
    save_pruned(small, tmp_path / "r.pt")
    loaded = load_pruned(RegNetLike, tmp_path / "r.pt").eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small(x), atol=0, rtol=0)
    assert loaded.b[0].groups == small.b[0].groups == 4


def test_bad_grouped_option_and_mismatched_graph():
    model, x = Multiplier().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(ValueError, match="grouped must be one of"):
        plan(model, x, amount=0.5, grouped="group")
    with pytest.raises(ValueError, match="grouped must be one of"):
        trace(model, x, grouped="whole")
    graph = trace(model, x)
    with pytest.raises(ValueError, match="traced with grouped='channels'"):
        plan(model, x, amount=0.5, grouped="groups", graph=graph)


def test_latency_budget_with_whole_groups_and_ignore(tmp_path, monkeypatch):
    """The latency table charges a grouped conv by its kept outputs; calibration (a
    deterministic MAC clock) meets the budget and the ignored group stays whole."""
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = randomize_bn(RegNetLike()).eval()
    x = torch.randn(1, 3, 16, 16)
    clock = MacClock()
    p = plan(model, x, latency=0.5, grouped="groups", ignore=("stem.*",), timer=clock,
             progress=False, **FINE)
    small = _exact(model, x, p)
    assert small.stem[0].out_channels == 16 and "(ignored: stem.0)" in str(p)
    assert small.b[0].groups < 8
    assert 0.5 * 0.97 <= clock.ratio(small, model, (x,)) <= 0.5 * 1.03, p.measured
