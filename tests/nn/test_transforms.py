"""Packed layers under torch.func transforms and TorchScript: vmap and grad run densely with
the same weight (correct results), jit.trace records the custom op, jit.script says why not;
meta-device construction and to_empty for lazy loading."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparseprune
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


def _pruned_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    sparseprune.prune(model, 0.9, protect=None)
    sparseprune.remove(model)
    return model


def test_layers_built_under_the_meta_device_load_and_run_on_the_cpu():
    """Lazy loading: a model built inside ``torch.device("meta")`` gets CPU packed layers (an
    all-zero weight), which ``load_state_dict`` validates and fills."""
    sparse, _ = sparseprune.convert(_pruned_mlp(), min_sparsity=0.0)
    with torch.device("meta"):
        lazy = nn.Sequential(SparseLinear(64, 32), nn.ReLU(), SparseLinear(32, 8),
                             SparseConv2d(3, 8, 3))
        packed = SparseLinear.from_dense(nn.Linear(8, 4, device="cpu"))
    assert lazy[0].bias.device.type == "cpu" and lazy[0].weight.nnz == 0
    assert packed.bias.device.type == "cpu" and packed.weight.nnz == 32
    assert lazy[3](torch.ones(1, 3, 5, 5)).abs().max() == 0  # all-zero filter and bias
    lazy = lazy[:3]
    lazy.load_state_dict(sparse.state_dict())
    x = torch.randn(5, 64)
    torch.testing.assert_close(lazy(x), sparse(x), rtol=0, atol=0)


def test_to_empty_on_the_cpu_keeps_packed_layers_and_other_devices_are_refused():
    dense = _pruned_mlp()
    sparse, _ = sparseprune.convert(dense, min_sparsity=0.0, exclude=["2"])
    with torch.device("meta"):
        lazy = nn.Sequential(SparseLinear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    lazy.to_empty(device="cpu")  # the dense Linear gets CPU storage; the packed layer stays
    lazy.load_state_dict(sparse.state_dict())
    x = torch.randn(5, 64)
    torch.testing.assert_close(lazy(x), sparse(x), rtol=0, atol=0)
    for move in (lambda m: m.to_empty(device="meta"), lambda m: m.to("meta")):
        with pytest.raises(RuntimeError, match="CPU only; cannot move to meta"):
            move(lazy)
