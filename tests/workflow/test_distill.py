"""distill(): a pruned student recovers its teacher's outputs; masks and the teacher stay put."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from sparseprune.pruning.masks import effective_weight, masked_tensors
from sparseprune.workflow import DistillConfig, DistillResult, distill
from sparseprune.workflow.data import Batches

from .conftest import tiny_mlp

FAST = {"lr": 1e-2, "progress": False}


def batches(n: int = 8, size: int = 32, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, 8, generator=g) for _ in range(n)]


def pair(amount: float = 0.7, remove: bool = False) -> tuple[nn.Module, nn.Module]:
    """A dense teacher and its deep copy, each Linear weight L1-pruned to ``amount``."""
    torch.manual_seed(0)
    teacher = tiny_mlp()
    student = copy.deepcopy(teacher)
    for m in student:
        if isinstance(m, nn.Linear):
            torch_prune.l1_unstructured(m, "weight", amount=amount)
            if remove:
                torch_prune.remove(m, "weight")
    return student, teacher


@torch.no_grad()
def gap(student: nn.Module, teacher: nn.Module, x: torch.Tensor, loss: str = "mse") -> float:
    s, t = student(x), teacher(x)
    if loss == "cosine":
        return float(1 - nn.functional.cosine_similarity(s, t, dim=-1).mean())
    return float(nn.functional.mse_loss(s, t))


def zero_pattern(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: effective_weight(m, "weight") == 0 for n, m in model.named_modules()
            if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("loss", ["cosine", "mse"])
def test_distill_closes_the_gap_to_the_teacher(loss):
    student, teacher = pair()
    held_out = batches(1, 256, seed=9)[0]
    before = gap(student, teacher, held_out, loss)
    result = distill(student, teacher, batches(), loss=loss, steps=120, **FAST)
    assert isinstance(result, DistillResult)
    assert result.steps == len(result.losses) == 120 and result.stopped_by == "steps"
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert gap(student, teacher, held_out, loss) < 0.5 * before


def test_hooked_masks_stay_fixed_and_pruned_orig_entries_do_not_leak():
    student, teacher = pair()
    before = zero_pattern(student)
    with torch.no_grad():  # garbage outside the mask must never reach the effective weight
        for t in masked_tensors(student):
            mask = t.module.weight_mask
            t.module.weight_orig.add_((1 - mask) * 100.0)
    distill(student, teacher, batches(), steps=30, weight_decay=0.1, **FAST)
    after = zero_pattern(student)
    for name, zero in before.items():
        assert torch.equal(after[name], zero), name
        layer = student.get_submodule(name)
        assert torch.equal(layer.weight_mask == 0, zero)
    x = batches(1, 4)[0]
    assert torch.equal(student(x), student(x))  # still runs through the pre-hooks


def test_removed_masks_keep_their_zeros():
    student, teacher = pair(remove=True)
    assert not masked_tensors(student)
    before = zero_pattern(student)
    distill(student, teacher, batches(), steps=30, **FAST)
    for name, zero in zero_pattern(student).items():
        assert torch.equal(zero, before[name]), name
    loose, teacher = pair(remove=True)  # without keep_zeros the optimizer fills them in
    distill(loose, teacher, batches(), steps=5, keep_zeros=False, **FAST)
    assert sum(int(z.sum()) for z in zero_pattern(loose).values()) < \
        sum(int(z.sum()) for z in before.values())


class Scaled(nn.Module):
    """forward(x, scale=1.0): to call with a dict or a tuple batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_mlp()

    def forward(self, x, scale=1.0):
        return self.net(x) * scale


@pytest.mark.parametrize("kind", ["tensor", "tuple", "list", "dict"])
def test_batch_kinds(kind):
    torch.manual_seed(0)
    teacher = Scaled()
    student = copy.deepcopy(teacher)
    torch_prune.l1_unstructured(student.net[0], "weight", amount=0.5)
    xs = batches(4)
    data = {"tensor": xs, "tuple": [(x, 2.0) for x in xs], "list": [[x, 2.0] for x in xs],
            "dict": [{"x": x, "scale": 2.0} for x in xs]}[kind]
    result = distill(student, teacher, data, epochs=2, **FAST)
    assert result.steps == 8 and result.stopped_by == "epochs"


def test_inputs_maps_labelled_batches_and_steps_cycle_the_data():
    student, teacher = pair()
    x = torch.randn(48, 8)
    loader = Batches(x, torch.zeros(48, dtype=torch.long), 16)
    result = distill(student, teacher, loader, inputs=lambda b: b[0], steps=7, **FAST)
    assert result.steps == 7 and result.stopped_by == "steps"
    with pytest.raises(TypeError, match="got int"):
        distill(student, teacher, [1, 2], **FAST)


def test_max_seconds_stops_early():
    student, teacher = pair()
    result = distill(student, teacher, batches(), steps=10_000, max_seconds=1e-9, **FAST)
    assert result.stopped_by == "time" and 1 <= result.steps < 10_000


def test_hidden_states_are_matched():
    student, teacher = pair()
    x = batches(1, 256, seed=9)[0]

    def hidden_gap():
        with torch.no_grad():
            return float(nn.functional.mse_loss(student[:3](x), teacher[:3](x)))

    before = hidden_gap()
    first = batches(1)[0]
    with torch.no_grad():  # the first step's loss is output MSE + weight * hidden MSE
        expected = (nn.functional.mse_loss(student(first), teacher(first))
                    + 2.0 * nn.functional.mse_loss(student[:3](first), teacher[:3](first)))
    result = distill(student, teacher, batches(), loss="mse", steps=80, match_modules=["2"],
                     hidden_weight=2.0, **FAST)
    assert result.losses[0] == pytest.approx(float(expected), rel=1e-5)
    assert hidden_gap() < 0.5 * before and result.losses[-1] < result.losses[0]
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
    # a {student: teacher} mapping, and mismatched shapes named in the error
    distill(student, teacher, batches(2), match_modules={"1": "3"}, hidden_weight=0.5, **FAST)
    with pytest.raises(ValueError, match=r"'4'.*\[32, 3\].*\[32, 32\]"):
        distill(student, teacher, batches(2), match_modules={"4": "2"}, hidden_weight=1.0,
                **FAST)
    with pytest.raises(ValueError, match="student has no module 'nope'"):
        distill(student, teacher, batches(2), match_modules=["nope"], hidden_weight=1.0, **FAST)
    with pytest.raises(ValueError, match="teacher has no module 'nope'"):
        distill(student, teacher, batches(2), match_modules={"2": "nope"}, hidden_weight=1.0,
                **FAST)
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])


def test_teacher_is_untouched_and_flags_are_restored():
    student, teacher = pair()
    student.add_module("drop", nn.Dropout(0.1))
    teacher.train()
    teacher[1].eval()
    student.eval()
    student[0].train()
    t_state = copy.deepcopy(teacher.state_dict())
    t_flags = [m.training for m in teacher.modules()]
    s_flags = [m.training for m in student.modules()]
    seen = []

    def loss(s, t):
        seen.append((student.training, teacher.training, t.requires_grad))
        return nn.functional.mse_loss(s, t)

    distill(student, teacher, batches(), loss=loss, steps=5, **FAST)
    assert seen[0] == (True, False, False)
    assert all(torch.equal(v, t_state[k]) for k, v in teacher.state_dict().items())
    assert all(p.grad is None for p in teacher.parameters())
    assert [m.training for m in teacher.modules()] == t_flags
    assert [m.training for m in student.modules()] == s_flags
    distill(student, teacher, batches(2), loss=loss, train_mode=False, **FAST)
    assert seen[-1][0] is False


def test_output_index_warmup_and_custom_optimizer():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()

        def forward(self, x):
            return self.net(x), "not a tensor"

    torch.manual_seed(0)
    teacher = Pair()
    student = copy.deepcopy(teacher)
    opts, lrs = [], []

    def sgd(params, lr):
        opts.append(torch.optim.SGD(params, lr=lr))
        return opts[-1]

    def loss(s, t):
        lrs.append(opts[-1].param_groups[0]["lr"])
        return nn.functional.mse_loss(s, t)

    distill(student, teacher, batches(), loss=loss, output=0, optimizer=sgd, lr=0.4,
            warmup_steps=4, steps=6, progress=False)
    assert lrs == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    lrs.clear()
    distill(student, teacher, batches(), loss=loss, output=0, optimizer=sgd, lr=0.4,
            warmup_steps=2, steps=6, decay="cosine", progress=False)
    # Warmup 0.2, 0.4, then cos over the 4 remaining steps from 0.4 toward 0.
    assert lrs == pytest.approx([0.2, 0.4, 0.4, 0.2 * (1 + math.cos(math.pi / 4)), 0.2,
                                 0.2 * (1 + math.cos(3 * math.pi / 4))])
    with pytest.raises(ValueError, match="decay must be 'constant' or 'cosine'"):
        distill(student, teacher, batches(), decay="linear", progress=False)
    with pytest.raises(ValueError, match="needs a known length"):
        distill(student, teacher, iter(batches()), decay="cosine", progress=False)
    distill(student, teacher, batches(2), output=lambda out: out[0], **FAST)
    with pytest.raises(TypeError, match="compares tensors"):
        distill(student, teacher, batches(2), **FAST)


def test_seeded_runs_repeat_and_leave_the_global_rng_alone():
    def run():
        student, teacher = pair()
        student.insert(1, nn.Dropout(0.2))
        torch.manual_seed(123)
        state = torch.get_rng_state()
        losses = distill(student, teacher, batches(), steps=10, seed=3, **FAST).losses
        assert torch.equal(torch.get_rng_state(), state)
        return losses

    assert run() == run()


def test_bad_arguments_raise_useful_errors():
    student, teacher = pair()
    with pytest.raises(ValueError, match=r"loss must be one of \['cosine', 'mse'\].*'kl'"):
        distill(student, teacher, batches(), loss="kl")
    with pytest.raises(ValueError, match="no batches"):
        distill(student, teacher, [], **FAST)
    with pytest.raises(ValueError, match="no batches on pass 2"):
        distill(student, teacher, iter(batches(2)), steps=5, **FAST)
    with pytest.raises(ValueError, match="same module"):
        distill(teacher, teacher, batches(), **FAST)
    shared = copy.deepcopy(teacher)
    shared[4] = teacher[4]
    with pytest.raises(ValueError, match=r"'4.weight' shares its tensor"):
        distill(shared, teacher, batches(), **FAST)
    shared[4].requires_grad_(False)  # frozen and shared: allowed, and left alone
    frozen = teacher[4].weight.clone()
    distill(shared, teacher, batches(2), **FAST)
    assert torch.equal(teacher[4].weight, frozen)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['stpes'\]"):
        distill(student, teacher, batches(), stpes=3)
    with pytest.raises(ValueError, match="go together"):
        distill(student, teacher, batches(), match_modules=["0"])
    with pytest.raises(ValueError, match="lr must be a number > 0, got -1"):
        DistillConfig(lr=-1)
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        DistillConfig(steps=2.5)
    with pytest.raises(ValueError, match="weight_decay"):
        DistillConfig(optimizer=torch.optim.SGD, weight_decay=0.1)
    with pytest.raises(FloatingPointError, match="step 0"):
        distill(student, teacher, [torch.full((4, 8), float("nan"))], **FAST)


def test_config_object_and_zero_steps():
    student, teacher = pair()
    config = DistillConfig(steps=0, progress=False)
    result = distill(student, teacher, batches(), config)
    assert result.steps == 0 and result.losses == [] and result.stopped_by == "steps"
    assert distill(student, teacher, batches(2), config, steps=2).steps == 2


def test_progress_bar_runs_without_a_length(capsys):
    class Unsized:  # re-iterable, no __len__: the bar has no total
        def __iter__(self):
            return iter(batches(3))

    student, teacher = pair()
    result = distill(student, teacher, Unsized(), lr=1e-2, progress=True)
    assert result.steps == 3 and result.stopped_by == "epochs"
    assert "distill" in capsys.readouterr().err
