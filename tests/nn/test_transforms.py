"""Packed layers under torch.func transforms and TorchScript: vmap and grad run densely with
the same weight (correct results), jit.trace records the custom op, jit.script says why not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseprune import SparseConv2d, SparseLinear


def _sparse(module: nn.Module, keep: float = 0.2) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        module.weight.mul_(torch.rand(module.weight.shape, generator=g) < keep)
    return module


def test_vmap_over_sparse_linear_equals_the_dense_layer():
    lin = _sparse(nn.Linear(32, 16))
    sl = SparseLinear.from_dense(lin)
    x = torch.randn(3, 5, 32)
    torch.testing.assert_close(torch.func.vmap(sl)(x), lin(x), atol=1e-6, rtol=1e-5)
    # In a batch of 2-D slices too (the fast path's input shape).
    torch.testing.assert_close(torch.func.vmap(sl, in_dims=1)(x), lin(x).transpose(0, 1),
                               atol=1e-6, rtol=1e-5)


def test_vmap_over_sparse_conv_equals_the_dense_layer():
    conv = _sparse(nn.Conv2d(4, 8, 3, padding=1))
    sc = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 3, 4, 7, 7)
    ref = torch.stack([conv(a) for a in x])
    torch.testing.assert_close(torch.func.vmap(sc)(x), ref, atol=1e-5, rtol=1e-5)


def test_func_grad_through_sparse_linear_matches_dense():
    lin = _sparse(nn.Linear(12, 6))
    sl = SparseLinear.from_dense(lin)
    x = torch.randn(4, 12)
    got = torch.func.grad(lambda t: sl(t).square().sum())(x)
    ref = torch.func.grad(lambda t: lin(t).square().sum())(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_jit_trace_of_sparse_linear_generalises_to_new_inputs():
    lin = _sparse(nn.Linear(32, 16))
    traced = torch.jit.trace(SparseLinear.from_dense(lin), torch.randn(4, 32))
    x = torch.randn(4, 32)
    torch.testing.assert_close(traced(x), lin(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [lambda: SparseLinear.from_dense(_sparse(nn.Linear(8, 4))),
                                  lambda: SparseConv2d.from_dense(_sparse(nn.Conv2d(2, 4, 3)))])
def test_jit_script_refuses_with_one_clear_message(make):
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile packed sparse "
                                           "layers; use torch.jit.trace"):
        torch.jit.script(nn.Sequential(make(), nn.ReLU()))
