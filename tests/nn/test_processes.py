"""Converted models cross process boundaries: sent to spawn / forkserver workers (what
DataLoader workers and process pools do, after a batch >= 4 ran and built derived layouts) they
unpickle and compute the parent's result; a forked child computes it on its own thread pool."""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch
from torch import nn

import sparseprune

# Under .ci/sanitize the children would import the regular build beside the ASan runtime.
pytestmark = pytest.mark.skipif(bool(os.environ.get("SPARSEPRUNE_SANITIZER_RUN")),
                                reason="worker processes cannot load the sanitized build")


def _in_worker(method: str, args):
    """_worker(args) in one fresh process; a worker that dies raises (BrokenProcessPool)
    instead of being replaced, as a multiprocessing.Pool would do, forever."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context(method)) as pool:
        return pool.submit(_worker, args).result(timeout=120)


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32)).eval()
    sparseprune.prune(model, 0.9, protect=None)
    sparseprune.remove(model)
    conv = nn.Conv2d(4, 16, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(torch.rand(conv.weight.shape) < 0.2)
    sparse, _ = sparseprune.convert(model, min_sparsity=0.0)
    return nn.ModuleDict({"mlp": sparse, "conv": sparseprune.SparseConv2d.from_dense(conv)})


def _run(model: nn.Module, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        return model["mlp"](x), model["conv"](img)


def _worker(args):
    model, x, img = args
    torch.set_num_threads(1)
    return _run(model, x, img)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_converted_model_runs_in_spawned_workers(method):
    if method not in mp.get_all_start_methods():
        pytest.skip(f"start method {method} is not available on this platform")
    model = _model()
    x, img = torch.randn(16, 64), torch.randn(2, 4, 9, 9)
    expected = _run(model, x, img)  # batch 16: the derived layouts exist when pickled
    got = _in_worker(method, (model, x, img))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_converted_model_runs_in_a_forked_worker():
    model = _model()
    x, img = torch.randn(16, 64), torch.randn(2, 4, 9, 9)
    expected = _run(model, x, img)
    got = _in_worker("fork", (model, x, img))
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-6)
