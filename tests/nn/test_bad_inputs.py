"""What each kind of input gets from the packed layers (the README's bad-input table): a clear
error naming the layer, or the result dense torch gives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparseprune import SparseConv2d, SparseLinear


def _sparse(module: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        module.weight.mul_(torch.rand(module.weight.shape, generator=g) < 0.2)
    return module


LIN = _sparse(nn.Linear(32, 16))
SL = SparseLinear.from_dense(LIN)
CONV = _sparse(nn.Conv2d(4, 8, 3, padding=1))
SC = SparseConv2d.from_dense(CONV)


@pytest.mark.parametrize("layer,x,error,match", [
    (SL, torch.ones(4, 32, dtype=torch.int64), TypeError, r"SparseLinear \[16x32\]: expected a "
                                                          "floating point input, got torch.int64"),
    (SL, [1.0] * 32, TypeError, "expected a tensor, got list"),
    (SL, torch.randn(4, 31), ValueError, r"input shape \(4, 31\) does not end in in_features"),
    (SL, torch.tensor(1.0), ValueError, r"input shape \(\) does not end"),
    (SL, torch.randn(4, 32, device="meta"), RuntimeError, "input is on meta; sparseprune kernels "
                                                          "run on CPU only"),
    (SC, torch.randn(2, 3, 9, 9), ValueError, r"expected input \[N, 4, H, W\] or \[4, H, W\], "
                                              r"got \(2, 3, 9, 9\)"),
    (SC, torch.randn(1, 2, 4, 9, 9), ValueError, "expected input"),
    (SC, torch.ones(1, 4, 9, 9, dtype=torch.bool), TypeError, "floating point input"),
])
def test_refused_inputs_name_the_layer_and_the_problem(layer, x, error, match):
    with pytest.raises(error, match=match):
        layer(x)


@pytest.mark.parametrize("x", [
    torch.randn(4, 32).double(), torch.randn(4, 32).half(), torch.randn(4, 32).bfloat16(),
    torch.randn(32), torch.randn(0, 32), torch.randn(2, 3, 32), torch.randn(32, 4).t(),
    torch.randn(1, 32).expand(6, 32), torch.randn(4, 64)[:, ::2],
    torch.full((3, 32), float("nan")), torch.tensor([[float("inf")] + [1.0] * 31]),
], ids=["float64", "float16", "bfloat16", "1-d", "batch0", "3-d", "transposed", "expanded",
        "strided", "nan", "inf"])
def test_accepted_linear_inputs_match_dense_torch(x):
    y = SL(x)
    ref = F.linear(x.float(), LIN.weight, LIN.bias).to(x.dtype)
    assert y.dtype == x.dtype and y.shape == ref.shape
    tol = 1e-5 if x.dtype in (torch.float32, torch.float64) else 2e-2
    torch.testing.assert_close(y, ref, atol=tol, rtol=tol, equal_nan=True)


@pytest.mark.parametrize("x", [
    torch.randn(2, 4, 9, 9).to(memory_format=torch.channels_last), torch.randn(4, 9, 9),
    torch.randn(0, 4, 9, 9), torch.randn(1, 4, 1, 1), torch.randn(2, 4, 9, 9).double(),
    torch.randn(2, 8, 9, 9)[:, ::2], torch.full((1, 4, 5, 5), float("nan")),
], ids=["channels_last", "3-d", "batch0", "smaller-than-kernel", "float64", "strided", "nan"])
def test_accepted_conv_inputs_match_dense_torch(x):
    y = SC(x)
    ref = CONV(x.float()).to(x.dtype)
    assert y.shape == ref.shape and y.dtype == x.dtype
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.shape[0] > 1:
        assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5, equal_nan=True)


def test_autocast_leaves_the_kernels_in_float32_nan_rows_included():
    x = torch.randn(4, 32)
    x[1, 3] = float("nan")
    xc = torch.randn(1, 4, 6, 6)
    xc[0, 0, 0, 0] = float("inf")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, yc = SL(x), SC(xc)
    assert y.dtype == yc.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x, LIN.weight, LIN.bias), equal_nan=True)
    torch.testing.assert_close(yc, CONV(xc), equal_nan=True)


def test_requires_grad_runs_densely_with_correct_gradients():
    x = torch.randn(4, 32, requires_grad=True)
    SL(x).sum().backward()
    torch.testing.assert_close(x.grad, LIN.weight.sum(0).expand(4, 32))
