"""The max-pooling kernel table (csrc/pool/): every row the CPU runs equals torch's
``F.max_pool2d`` exactly on random geometries, NaN / Inf included; sparseprune.nn.MaxPool2d
keeps nn.MaxPool2d's contract and falls back to it where the kernel does not apply."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprune.nn import MaxPool2d, list_pool_kernels

ROWS = list_pool_kernels()


def _row_param(row):
    marks = () if row["supported"] else pytest.mark.skip(
        reason=f"{row['name']} needs {row['isa']}, which this CPU lacks")
    return pytest.param(row["name"], marks=marks, id=row["name"])


KERNELS = [_row_param(r) for r in ROWS]


def _geometries(seed: int, count: int):
    g = torch.Generator().manual_seed(seed)

    def pick(lo, hi):
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    for _ in range(count):
        kh, kw = pick(1, 5), pick(1, 5)
        dh, dw = pick(1, 2), pick(1, 2)
        ph, pw = pick(0, kh // 2), pick(0, kw // 2)  # torch: padding <= kernel / 2
        sh, sw = pick(1, 3), pick(1, 3)
        h = pick(max(1, dh * (kh - 1) + 1 - 2 * ph), 23)
        w = pick(max(1, dw * (kw - 1) + 1 - 2 * pw), 40)
        yield dict(kernel_size=(kh, kw), stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw),
                   ceil_mode=bool(pick(0, 1))), (pick(0, 2), pick(1, 5), h, w)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("seed", range(4))
def test_every_row_equals_torch_on_random_geometries(kernel, seed):
    for args, shape in _geometries(seed, 40):
        x = torch.randn(shape)
        want = F.max_pool2d(x, **args)
        got = MaxPool2d(**args, kernel=kernel)(x)
        assert got.shape == want.shape, (args, shape)
        assert torch.equal(got, want), (args, shape)


@pytest.mark.parametrize("kernel", KERNELS)
def test_nan_and_inf_propagate_as_in_torch(kernel):
    x = torch.randn(2, 3, 17, 33)
    x[0, 0, 4, 5] = float("nan")
    x[0, 1, 0, 0] = float("inf")
    x[1, 2, 16, 32] = float("-inf")
    x[1, 0, 8:, :] = float("-inf")
    for stride in (1, 2, 3):
        want = F.max_pool2d(x, 3, stride, 1)
        got = MaxPool2d(3, stride, 1, kernel=kernel)(x)
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("kernel", KERNELS)
def test_resnet_stem_pool_and_wide_rows(kernel):
    """The shape convert() exists for (vector path, stride 2) and widths around the vector
    tails."""
    for shape in [(1, 64, 112, 112), (2, 8, 9, 17), (1, 4, 5, 47), (3, 2, 33, 16)]:
        x = torch.randn(shape)
        for k, s, p in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (5, 2, 2)]:
            want = F.max_pool2d(x, k, s, p)
            assert torch.equal(MaxPool2d(k, s, p, kernel=kernel)(x), want), (shape, k, s, p)


def test_default_row_is_the_best_the_cpu_allows_and_the_isa_cap_applies():
    defaults = [r for r in ROWS if r["default"]]
    assert len(defaults) == 1 and defaults[0]["supported"]
    code = ("from sparseprune.nn import list_pool_kernels; "
            "print(next(r['name'] for r in list_pool_kernels() if r['default']))")
    env = dict(os.environ, SPARSEPRUNE_ISA="scalar")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "maxpool2d_f32_scalar"


def test_unknown_or_unsupported_kernel_names_are_refused():
    with pytest.raises(ValueError, match="unknown pool kernel"):
        MaxPool2d(2, kernel="nope")(torch.randn(1, 1, 4, 4))


def test_fallbacks_give_torchs_result():
    pool, ref = MaxPool2d(3, 2, 1), nn.MaxPool2d(3, 2, 1)
    x = torch.randn(2, 4, 11, 12)
    cases = [x.double(), x.contiguous(memory_format=torch.channels_last), x[..., ::2],
             x.requires_grad_()]
    for c in cases:
        torch.testing.assert_close(pool(c), ref(c), rtol=0, atol=0)
    y = pool(x)
    y.sum().backward()  # the autograd fallback keeps gradients
    assert x.grad is not None and x.grad.abs().sum() > 0
    with_indices = MaxPool2d(2, return_indices=True)
    out, idx = with_indices(x.detach())
    ref_out, ref_idx = nn.MaxPool2d(2, return_indices=True)(x.detach())
    assert torch.equal(out, ref_out) and torch.equal(idx, ref_idx)


def test_empty_batch_3d_input_and_torchs_own_errors():
    pool = MaxPool2d(3, 2, 1)
    assert pool(torch.randn(0, 3, 8, 8)).shape == (0, 3, 4, 4)
    x = torch.randn(3, 9, 9)
    assert torch.equal(pool(x), F.max_pool2d(x, 3, 2, 1))
    with pytest.raises(RuntimeError, match="pad should be"):
        MaxPool2d(2, padding=2)(torch.randn(1, 1, 8, 8))


def test_module_contract_pickle_copy_compile_and_export():
    pool = MaxPool2d.from_torch(nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True))
    assert isinstance(pool, nn.MaxPool2d) and pool.ceil_mode and pool.state_dict() == {}
    x = torch.randn(1, 3, 10, 10)
    want = F.max_pool2d(x, 3, 2, 1, ceil_mode=True)
    for clone in (copy.deepcopy(pool), pickle.loads(pickle.dumps(pool))):
        assert torch.equal(clone(x), want)
    exported = torch.export.export(pool, (x,)).module()
    assert torch.equal(exported(x), want)
    with pytest.raises(TypeError, match="expected nn.MaxPool2d"):
        MaxPool2d.from_torch(nn.AvgPool2d(2))


def test_convert_runs_plain_max_pools_natively_and_says_so():
    import sparseprune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.Sequential(nn.MaxPool2d(2, return_indices=True))).eval()
    model[3] = nn.MaxPool2d(2)  # nested plain pools are found too
    x = torch.randn(2, 3, 12, 12)
    converted, report = sparseprune.convert(model)
    assert type(converted[2]) is MaxPool2d and type(converted[3]) is MaxPool2d
    assert type(model[2]) is nn.MaxPool2d  # the model passed in is untouched
    assert torch.equal(converted(x), model(x))
    assert report.native_pools == ("2", "3") and "max pools on sparseprune's" in str(report)
    kept, report = sparseprune.convert(model, native_pooling=False)
    assert type(kept[2]) is nn.MaxPool2d and report.native_pools == ()
    with_indices = nn.Sequential(nn.MaxPool2d(2, return_indices=True))
    out, _ = sparseprune.convert(with_indices)
    assert type(out[0]) is nn.MaxPool2d  # its indices are torch's business
    root, report = sparseprune.convert(nn.MaxPool2d(2))
    assert type(root) is MaxPool2d and report.native_pools == ("",)
