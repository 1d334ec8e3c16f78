"""SparseGPT: the blocked sweep equals a plain OBS reference, keeps exact patterns, beats scores."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparseprune.pruning import NM, Unstructured, prune
from sparseprune.pruning.sparsegpt import sparsegpt_prune


def _layer_data(rows: int = 24, cols: int = 32, n: int = 256, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # Correlated inputs (a low-rank mix plus noise): where the OBS update has something to do.
    x = torch.randn(n, 8, generator=g, dtype=torch.float64) @ torch.randn(
        8, cols, generator=g, dtype=torch.float64)
    x = x + 0.1 * torch.randn(n, cols, generator=g, dtype=torch.float64)
    w = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    return w, x, x.T @ x / n


def _obs_reference(w: torch.Tensor, h: torch.Tensor, n: int, m: int, damp: float = 0.01):
    """Column-by-column optimal brain surgeon with an explicitly updated inverse Hessian.

    N:M masks are chosen when the sweep reaches each group, column k of the group scored by
    ``w_k² / [H_F⁻¹]_kk`` with F the columns from k on (what its OBS step will divide by; the
    blocked sweep reads it off the Cholesky factor as ``U_kk²``).
    """
    w = w.clone()
    h = h.clone()
    h.diagonal().add_(damp * h.diagonal().mean())
    hinv = torch.linalg.inv(h)
    cols = w.shape[1]
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for j in range(cols):
        if j % m == 0:
            ahead, diag = hinv.clone(), []
            for k in range(j, min(j + m, cols)):
                diag.append(ahead[k, k])
                ahead = ahead - ahead[:, k:k + 1] @ ahead[k:k + 1, :] / ahead[k, k]
            sal = w[:, j:j + m].square() / torch.stack(diag)
            drop = torch.sort(sal, dim=1, stable=True).indices[:, : m - n]
            pruned[:, j:j + m].scatter_(1, drop, True)
        q = w[:, j].masked_fill(pruned[:, j], 0.0)
        err = (w[:, j] - q) / hinv[j, j]
        w -= err.unsqueeze(1) * hinv[j].unsqueeze(0)
        w[:, j] = q
        # Remove column j from the inverse Hessian of the remaining columns.
        hinv = hinv - hinv[:, j:j + 1] @ hinv[j:j + 1, :] / hinv[j, j]
    return w, ~pruned


def _output_error(w_new: torch.Tensor, w: torch.Tensor, x: torch.Tensor) -> float:
    return float((x @ (w_new - w).T).norm() / (x @ w.T).norm())


@pytest.mark.parametrize("blocksize", [4, 8, 128])
def test_blocked_sweep_equals_plain_obs_for_nm(blocksize):
    w, x, h = _layer_data()
    ref_w, ref_keep = _obs_reference(w, h, 2, 4)
    new_w, keep = sparsegpt_prune(w, h, NM(2, 4), 0.5, blocksize=blocksize)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(new_w, ref_w, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 7)])
def test_nm_masks_are_exact(n, m):
    w, x, h = _layer_data(cols=m * 6)
    new_w, keep = sparsegpt_prune(w.float(), h, NM(n, m), 1 - n / m)
    groups = keep.reshape(keep.shape[0], -1, m)
    assert bool((groups.sum(-1) == n).all())
    assert bool((new_w[~keep] == 0).all())
    assert new_w.dtype == torch.float32


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_unstructured_count_is_exact(per_row, sparsity):
    w, x, h = _layer_data(rows=10, cols=300)
    new_w, keep = sparsegpt_prune(w, h, Unstructured(), sparsity, per_row=per_row, blocksize=64)
    assert int((~keep).sum()) == (10 * round(sparsity * 300) if per_row
                                  else round(sparsity * 3000))
    if per_row:
        assert bool(((~keep).sum(1) == round(sparsity * 300)).all())
    assert bool((new_w[~keep] == 0).all())


def test_reconstruction_beats_wanda_and_magnitude_on_the_layer_output():
    w, x, h = _layer_data(rows=32, cols=64, n=512)
    new_w, keep = sparsegpt_prune(w, h, Unstructured(), 0.5)
    ours = _output_error(new_w, w, x)
    norms = x.norm(dim=0)
    for scores in (w.abs(), w.abs() * norms):
        k = 32 * 64 // 2
        kept = torch.ones(w.numel(), dtype=torch.bool)
        kept[torch.sort(scores.reshape(-1), stable=True).indices[:k]] = False
        masked = w * kept.reshape(w.shape)
        assert ours < 0.7 * _output_error(masked, w, x)


def test_old_zeros_stay_pruned_and_count_toward_the_target():
    w, x, h = _layer_data(rows=8, cols=16)
    old = torch.ones_like(w, dtype=torch.bool)
    old[:, :4] = False  # a quarter pruned already
    new_w, keep = sparsegpt_prune(w, h, Unstructured(), 0.5, keep=old)
    assert not bool(keep[:, :4].any())
    assert int((~keep).sum()) == 64


def test_dead_inputs_are_pruned_first_and_zero_sparsity_changes_nothing():
    w, x, h = _layer_data(rows=6, cols=12)
    h[3, :] = 0.0
    h[:, 3] = 0.0
    new_w, keep = sparsegpt_prune(w, h, Unstructured(), 0.25, per_row=True)
    assert not bool(keep[:, 3].any())
    same_w, same_keep = sparsegpt_prune(w, _layer_data(rows=6, cols=12)[2], Unstructured(), 0.0)
    assert bool(same_keep.all())
    torch.testing.assert_close(same_w, w, atol=0, rtol=0)


def test_bad_inputs_are_refused():
    w, x, h = _layer_data(rows=4, cols=8)
    with pytest.raises(ValueError, match="Hessian of shape"):
        sparsegpt_prune(w, h[:4, :4], Unstructured(), 0.5)
    with pytest.raises(ValueError, match="fixed sparsity"):
        sparsegpt_prune(w, h, NM(2, 4), 0.3)
    nan_h = h.clone()
    nan_h[0, 0] = float("nan")
    with pytest.raises(ValueError, match="positive definite"):
        sparsegpt_prune(w, nan_h, Unstructured(), 0.5)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 16))


def _calibration() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(6, 24, generator=g)
    return [torch.randn(32, 6, generator=g) @ mix + 0.05 * torch.randn(32, 24, generator=g)
            for _ in range(4)]


def test_prune_with_sparsegpt_rewrites_weights_and_keeps_the_mask_contract():
    model = _mlp()
    data = _calibration()
    ref = torch.cat([model(b) for b in data]).detach()
    report = prune(model, 0.5, criterion="sparsegpt", calibration=data, protect=None)
    assert report.scope == "layer" and report.criterion == "sparsegpt"
    assert all(r.pruned == r.numel // 2 for r in report.layers)
    assert hasattr(model[0], "weight_orig") and hasattr(model[0], "weight_mask")
    out = torch.cat([model(b) for b in data]).detach()
    magnitude = _mlp()
    prune(magnitude, 0.5, protect=None, scope="layer")
    out_mag = torch.cat([magnitude(b) for b in data]).detach()
    assert (out - ref).norm() < 0.5 * (out_mag - ref).norm()


def test_sparsegpt_refuses_convs_and_global_scope():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    data = [torch.randn(2, 3, 8, 8)]
    with pytest.raises(ValueError, match=r"'0' \(Conv2d\).*reconstructs nn.Linear"):
        prune(model, 0.5, criterion="sparsegpt", calibration=data, protect=None)
    with pytest.raises(ValueError, match="cannot rank weights across layers"):
        prune(_mlp(), 0.5, criterion="sparsegpt", calibration=_calibration(), scope="global")
    with pytest.raises(ValueError, match="needs calibration data"):
        prune(_mlp(), 0.5, criterion="sparsegpt")
    model = _mlp()
    with pytest.raises(ValueError, match="sparsegpt prunes unstructured or N:M patterns"):
        prune(model, 0.5, criterion="sparsegpt", pattern="block4x1", calibration=_calibration())
    assert not hasattr(model[0], "weight_mask")  # refused before anything was pruned
