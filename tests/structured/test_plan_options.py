"""``ignore=`` (module globs whose groups are kept whole) and ``amounts=`` (per-glob amounts).

Each amount is planned like ``amount`` plans the whole model, within the groups it covers;
ignored groups are kept under every budget; the printout says which rule set each width; bad
globs and values are errors that name them.
"""

import numpy as np
import pytest
import torch

from sparseprune.structured import count_macs, plan

from .macs import assert_macs_agree
from .models import ResNet18, randomize_bn
from .test_grouped_whole import RegNetLike

FINE = {"round_to": 1, "min_channels": 1}


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return randomize_bn(ResNet18()).eval(), torch.randn(2, 3, 32, 32)


def _widths(p) -> dict[str, tuple[int, int]]:
    return {name.split(" ")[0]: (b, a) for name, b, a in p.widths()}


def _exact(model, x, p):
    small = p.apply()
    with torch.no_grad():
        torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)
    assert p.after["macs"] == pytest.approx(count_macs(small, x), rel=1e-9)
    return small


def _row(p, group: str) -> str:
    return next(line for line in str(p).splitlines() if line.strip().startswith(group))


def test_ignore_keeps_groups_whole_and_prunes_the_rest_by_amount(resnet):
    model, x = resnet
    p = plan(model, x, amount=0.5, ignore=("layers.0.*",), **FINE)
    w = _widths(p)
    ignored = {n for n, g in zip(w, p.graph.groups, strict=True)
               if any(q.startswith("layers.0.") for q in g.producers)}
    assert ignored and all(w[n][0] == w[n][1] for n in ignored)
    # the other groups lose half of their channels
    rest = [(b, a) for n, (b, a) in w.items() if n not in ignored]
    assert sum(a for _, a in rest) == sum(b for b, _ in rest) // 2
    assert "(ignored: layers.0.conv1)" in _row(p, "layers.0.conv1")
    assert "ignore=('layers.0.*',)" in str(p).splitlines()[0]
    small = _exact(model, x, p)
    assert small.layers[0].conv1.out_channels == model.layers[0].conv1.out_channels
    assert_macs_agree(p, model, small, x, rel=1e-6)


@pytest.mark.parametrize("budget", [{"macs": 0.5}, {"params": 0.5},
                                    {"amount": 0.5, "scope": "global"}])
def test_ignore_holds_under_every_budget(resnet, budget):
    model, x = resnet
    p = plan(model, x, ignore="layers.7.conv1", **budget, **FINE)  # a str is one glob
    assert p.config.ignore == ("layers.7.conv1",)
    assert _widths(p)["layers.7.conv1"] == (128, 128)
    assert p.after["macs"] < p.before["macs"]
    small = _exact(model, x, p)
    if "macs" in budget:
        assert count_macs(small, x) <= 0.5 * count_macs(model, x) * (1 + 1e-9)


def test_amounts_override_amount_per_group(resnet):
    model, x = resnet
    p = plan(model, x, amount=0.5, amounts={"layers.1.conv1": 0.25, "layers.7.*": 0.75}, **FINE)
    w = _widths(p)
    assert w["layers.1.conv1"] == (16, 12)
    assert w["layers.7.conv1"] == (128, 32) and w["layers.6.conv2"] == (128, 32)
    assert w["layers.6.conv1"] == (128, 64) and w["layers.3.conv1"] == (32, 16)  # amount
    assert "(amount=0.25 from 'layers.1.conv1')" in _row(p, "layers.1.conv1")
    assert "(amount=0.75 from 'layers.7.*')" in _row(p, "layers.7.conv1")
    assert "(amount=0.75 from 'layers.7.*')" in _row(p, "layers.6.conv2")  # via layers.7.conv2
    assert _row(p, "layers.6.conv1").endswith("64")
    assert "amounts={'layers.1.conv1': 0.25, 'layers.7.*': 0.75}" in str(p).splitlines()[0]
    _exact(model, x, p)


def test_coupled_group_takes_the_smallest_amount(resnet):
    model, x = resnet
    # the third stage's trunk couples layers.4.conv2, layers.4.down.0 and layers.5.conv2
    amounts = {"layers.4.down.*": 0.25, "layers.5.conv2": 0.75, "layers.4.*": 0.5}
    p = plan(model, x, amount=0.5, amounts=amounts, **FINE)
    g = next(g for g in p.graph.groups if "layers.5.conv2" in g.producers)
    b, a = p.widths()[g.index][1:]
    assert (b, a) == (64, 48)
    row = _row(p, g.name)
    assert "amount=0.25, the smallest of the coupled modules'" in row
    assert "'layers.4.down.*'=0.25" in row and "'layers.5.conv2'=0.75" in row
    assert "'layers.4.*'=0.5" in row  # layers.4.conv2 matched the last glob (first match wins)
    _exact(model, x, p)


@pytest.mark.parametrize("scope", ["local", "global"])
def test_amounts_everywhere_is_amount(resnet, scope):
    model, x = resnet
    a = plan(model, x, amount=0.4, scope=scope)
    b = plan(model, x, amount=0.1, amounts={"*": 0.4}, scope=scope, graph=a.graph)
    assert np.array_equal(a.keep, b.keep)


def test_amounts_alone_prune_only_the_matched_groups():
    torch.manual_seed(0)
    model = randomize_bn(RegNetLike()).eval()
    x = torch.randn(2, 3, 16, 16)
    p = plan(model, x, amounts={"a.*": 0.5}, grouped="groups", **FINE)
    assert p.config.amount == 0.0
    changed = [(n, b, a) for n, b, a in p.widths() if a != b]
    assert [n.split(" ")[0] for n, _, _ in changed] == ["a.0"]
    small = _exact(model, x, p)
    assert small.b[0].groups == 4 and "amount=0.5 from 'a.*'" in _row(p, "a.0")


def test_ignore_and_amounts_together(resnet):
    model, x = resnet
    p = plan(model, x, amount=0.5, ignore=("stem.*",),
             amounts={"stem.0": 0.75, "layers.0.*": 0.75}, **FINE)
    assert _widths(p)["stem.0"] == (16, 16)  # ignore wins over amounts
    assert "(ignored: stem.0)" in _row(p, "stem.0")
    assert _widths(p)["layers.0.conv1"] == (16, 4)
    _exact(model, x, p)


@pytest.mark.parametrize("kwargs, match", [
    ({"ignore": ("layers9.*",)}, r"ignore glob 'layers9\.\*' matches no module with prunable "
                                r"output channels; prunable: stem.0, .*\(\d+ in all\)"),
    ({"ignore": ("fc",)}, r"'fc' matches no .*\(it matches fc, whose output channels are kept "
                          r"anyway\)"),
    ({"amounts": {"layers.1.*": 0.3, "nope*": 0.2}}, r"amounts glob 'nope\*' matches no module"),
    ({"amounts": {"layers.1.*": 1.0}}, r"amounts\['layers\.1\.\*'\] must be in \[0, 1\).*got 1\.0"),
    ({"amounts": {"layers.1.*": -0.1}}, r"amounts\['layers\.1\.\*'\] must be in \[0, 1\)"),
    ({"amounts": {"layers.1.*": True}}, r"amounts\['layers\.1\.\*'\] must be in \[0, 1\)"),
    ({"amounts": {"": 0.2}}, "amounts keys must be module-name globs"),
    ({"amounts": [("layers.1.*", 0.2)]}, "amounts must be a dict"),
    ({"ignore": ("stem.0", 3)}, r"ignore must hold module-name globs .*\[3\]"),
    ({"ignore": 3}, "ignore must be a tuple of module-name globs"),
])
def test_bad_globs_and_values(resnet, kwargs, match):
    model, x = resnet
    with pytest.raises(ValueError, match=match):
        plan(model, x, amount=0.5, **kwargs)


def test_amounts_with_a_cost_budget_is_refused(resnet):
    model, x = resnet
    with pytest.raises(ValueError, match="amounts= .* cannot be combined with a macs= budget"):
        plan(model, x, macs=0.5, amounts={"layers.1.*": 0.3})


def test_unreachable_amount_names_its_groups(resnet):
    model, x = resnet
    with pytest.raises(ValueError, match=r"groups with amount=0\.95 \(layers\.1\.conv1.*"
                                         "unreachable"):
        plan(model, x, amount=0.5, amounts={"layers.1.conv1": 0.95})


class WideMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(20, 512), torch.nn.ReLU(),
                                       torch.nn.Linear(512, 100), torch.nn.ReLU(),
                                       torch.nn.Linear(100, 10))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("amount", [0.3, 0.37, 0.61])
def test_round_to_auto_aligns_only_wide_groups(amount):
    """The default drops a group of >= 256 channels to a multiple of 16 (dense GEMMs are slow
    at some unaligned widths) and leaves narrow ones alone: under amount= every width is then
    at or under round_to=1's, so the MAC cut is at least round_to=1's (Torch-Pruning's)."""
    torch.manual_seed(0)
    model, x = WideMLP().eval(), torch.randn(4, 20)
    p = plan(model, x, amount=amount)
    fine_plan = plan(model, x, amount=amount, round_to=1)
    auto, fine = _widths(p), _widths(fine_plan)
    assert fine["net.0"][1] % 16 != 0 or amount == 0.3  # the case is not aligned already
    assert auto["net.0"] == (512, fine["net.0"][1] // 16 * 16)
    assert auto["net.2"] == fine["net.2"] == (100, round(100 * (1 - amount)))
    assert p.after["macs"] <= fine_plan.after["macs"]
    assert plan(model, x, amount=amount, round_to="auto").keep.tolist() == p.keep.tolist()


@pytest.mark.parametrize("macs", [0.3, 0.55])
def test_round_to_auto_under_a_cost_budget_rounds_in_the_search(macs):
    """Under a MAC budget the wide group's width is a multiple of 16 and the budget holds (the
    search accounts for the rounding; narrow groups take up what it moved)."""
    torch.manual_seed(0)
    model, x = WideMLP().eval(), torch.randn(4, 20)
    p = plan(model, x, macs=macs)
    assert _widths(p)["net.0"][1] % 16 == 0
    assert p.after["macs"] <= macs * p.before["macs"] * (1 + 1e-9)
    _exact(model, x, p)


@pytest.mark.parametrize("bad", [0, -16, "16", 2.5, True, None])
def test_round_to_must_be_a_positive_int_or_auto(bad):
    with pytest.raises(ValueError, match="round_to"):
        plan(WideMLP().eval(), torch.randn(4, 20), amount=0.5, round_to=bad)


@pytest.mark.parametrize("budget", [{"macs": 0.15}, {"amount": 0.86}])
def test_round_to_auto_keeps_the_floor_of_round_to_1(budget):
    """"auto" does not raise a floor to a multiple of 16: a budget round_to=1 reaches stays
    reachable, and a group at its floor keeps exactly the floor (38 of 300 at min_ratio 1/8)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 300), torch.nn.ReLU(),
                                torch.nn.Linear(300, 10)).eval()
    x = torch.randn(4, 20)
    fine = plan(model, x, round_to=1, **budget)
    auto = plan(model, x, **budget)
    width = _widths(auto)["0"][1]
    assert width % 16 == 0 or width == 38
    assert width >= 38 and _widths(fine)["0"][1] >= 38
    if "macs" in budget:
        assert auto.after["macs"] <= 0.15 * auto.before["macs"] * (1 + 1e-9)


def test_round_to_accepts_numpy_ints_and_names_itself_when_unreachable():
    model, x = WideMLP().eval(), torch.randn(4, 20)
    assert plan(model, x, amount=0.5, round_to=np.int64(16)).config.round_to == 16
    with pytest.raises(ValueError, match="round_to='auto'"):
        plan(model, x, macs=0.001)
