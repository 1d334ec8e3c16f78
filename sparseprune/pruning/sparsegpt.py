"""SparseGPT: prune a Linear and update its surviving weights to keep the layer's output.

Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot"
(ICML 2023). For a layer ``y = W x`` with calibration inputs ``X``, pruning weight ``w_ij``
changes the output by ``w_ij`` times input ``j``; the optimal brain surgeon (OBS) update spreads
that error over the row's not yet visited weights through the inverse Hessian ``H⁻¹`` of
``‖W X - Ŵ X‖²`` (``H = XᵀX``, the same for every row). Columns are visited left to right:

* ``H⁻¹`` is damped (``H + λ·mean(diag H)·I``) and replaced by its upper Cholesky factor ``U``
  (``H⁻¹ = UᵀU``), whose row ``j`` restricted to columns ``≥ j`` is the inverse Hessian of the
  columns not yet visited, so one factorisation serves the whole sweep.
* In blocks of ``blocksize`` columns, the mask is chosen by the OBS saliency ``w² / U_jj²``
  (lowest pruned) just before the block is swept, so it sees the updates of earlier blocks
  (adaptive mask selection). N:M groups are chosen when the sweep reaches them.
* Visiting column ``j``: its pruned weights are set to zero and the error
  ``(w - q) / U_jj`` is subtracted, scaled by ``U[j, j:]``, from the later columns of the block;
  after the block, the block's errors update all later columns at once (a matrix product).

Inputs no calibration row ever reached (``H_jj = 0``) carry no information: their weights are
zeroed and count as pruned first.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ._checks import prune_count
from .patterns import NM, Pattern, Unstructured

__all__ = ["SparseGPT", "sparsegpt_prune"]


def _inverse_hessian_factor(hessian: Tensor, damp: float) -> Tensor:
    """Upper Cholesky factor of the damped inverse Hessian, float64 [K, K]."""
    h = hessian.to(torch.float64).clone()
    k = h.shape[0]
    diag = h.diagonal()
    mean = float(diag.mean()) if k else 0.0
    diag += damp * (mean if mean > 0 else 1.0)
    # A dead input's row/column is all zero; damping made its diagonal positive, so H stays
    # positive definite. More damping only if rounding still breaks the factorisation.
    for attempt in range(6):
        factor, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:
            break
        diag += damp * max(mean, 1e-12) * 10.0**attempt
    else:
        raise ValueError("sparsegpt: the calibration Hessian is not positive definite even "
                         "after damping (NaN or Inf in the layer's inputs?)")
    inverse = torch.cholesky_inverse(factor)
    return torch.linalg.cholesky(inverse, upper=True)


def _block_counts(total_cols: int, blocksize: int, rows: int, sparsity: float,
                  per_row: bool) -> list[int]:
    """How many weights each column block prunes (per row if ``per_row``), summing exactly."""
    unit = 1 if per_row else rows
    return [prune_count(min(start + blocksize, total_cols) * unit, sparsity)
            - prune_count(start * unit, sparsity) for start in range(0, total_cols, blocksize)]


def _lowest_mask(saliency: Tensor, count: int, per_row: bool) -> Tensor:
    """Bool [O, B]: True where pruned, the ``count`` lowest (per row, or in the block)."""
    pruned = torch.zeros_like(saliency, dtype=torch.bool)
    if count <= 0:
        return pruned
    if per_row:
        drop = torch.sort(saliency, dim=1, stable=True).indices[:, :count]
        return pruned.scatter_(1, drop, True)
    flat = pruned.view(-1)
    flat[torch.sort(saliency.reshape(-1), stable=True).indices[:count]] = True
    return pruned


@torch.no_grad()
def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    pattern: Pattern,
    sparsity: float,
    *,
    keep: Tensor | None = None,
    per_row: bool = False,
    blocksize: int = 128,
    damp: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Prune ``weight`` to ``pattern`` at ``sparsity`` and reconstruct the rest.

    Args:
        weight: [O, K] float weight of a Linear (not modified).
        hessian: [K, K] ``XᵀX / n`` of the layer's calibration inputs.
        pattern: :class:`Unstructured` or :class:`NM` (along K).
        sparsity: fraction to prune (N:M: its fixed ``1 - N/M``).
        keep: [O, K] bool mask so far; its zeros stay pruned and count toward the target.
        per_row: unstructured only: prune the same share of every row (and every block of it)
            instead of the same share of every column block.
        blocksize: columns per lazy-update block (rounded up to a multiple of M for N:M).
        damp: Hessian damping, as a fraction of the mean diagonal.

    Returns:
        (new weight [O, K] in ``weight``'s dtype with pruned entries 0, keep-mask [O, K] bool).
    """
    if weight.dim() != 2:
        raise ValueError(f"sparsegpt prunes [O, K] weights, got shape {list(weight.shape)}")
    rows, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(f"sparsegpt: Hessian of shape {list(hessian.shape)} for a weight with "
                         f"{cols} input features")
    if not isinstance(pattern, (Unstructured, NM)):
        raise ValueError(f"sparsegpt supports unstructured and N:M patterns, not {pattern}")
    is_nm = isinstance(pattern, NM)
    if is_nm:
        if abs(sparsity - pattern.fixed_sparsity) > 1e-12:
            raise ValueError(f"sparsegpt prunes {pattern} at its fixed sparsity "
                             f"{pattern.fixed_sparsity:g}, got {sparsity:g}")
        blocksize = -(-blocksize // pattern.m) * pattern.m
    w = weight.detach().to(torch.float64).clone()
    old_keep = (torch.ones_like(w, dtype=torch.bool) if keep is None
                else keep.to(w.device, torch.bool).reshape(rows, cols))
    dead = hessian.diagonal() == 0
    w[:, dead.to(w.device)] = 0.0
    w[~old_keep] = 0.0
    factor = _inverse_hessian_factor(hessian.to(w.device), damp)
    # Forced prunes (old zeros, dead inputs) rank below everything.
    forced = ~old_keep | dead.to(w.device).reshape(1, -1)
    pruned = torch.zeros_like(old_keep)
    counts = None if is_nm else _block_counts(cols, blocksize, rows, sparsity, per_row)
    for b, start in enumerate(range(0, cols, blocksize)):
        end = min(start + blocksize, cols)
        block = w[:, start:end].clone()
        u = factor[start:end, start:end]
        diag = u.diagonal()
        errors = torch.zeros_like(block)
        block_pruned = pruned[:, start:end]
        if not is_nm:
            saliency = (block.square() / diag.square()).masked_fill(forced[:, start:end],
                                                                    float("-inf"))
            block_pruned |= _lowest_mask(saliency, counts[b], per_row)  # type: ignore[index]
        for j in range(end - start):
            if is_nm and j % pattern.m == 0:  # type: ignore[union-attr]
                g_end = min(j + pattern.m, end - start)  # type: ignore[union-attr]
                group = block[:, j:g_end].square() / diag[j:g_end].square()
                group = group.masked_fill(forced[:, start + j:start + g_end], float("-inf"))
                drop = max(0, (g_end - j) - pattern.n)  # type: ignore[union-attr]
                block_pruned[:, j:g_end] |= _lowest_mask(group, drop, per_row=True)
            column = block[:, j]
            kept = column.masked_fill(block_pruned[:, j], 0.0)
            error = (column - kept) / diag[j]
            block[:, j:] -= error.unsqueeze(1) * u[j, j:].unsqueeze(0)
            block[:, j] = kept
            errors[:, j] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ factor[start:end, end:]
    new_keep = ~pruned & old_keep
    w[~new_keep] = 0.0
    return w.to(weight.dtype), new_keep


class SparseGPT:
    """Criterion ``"sparsegpt"``: OBS reconstruction with the calibration Hessian.

    Unlike a scoring criterion it chooses the mask and rewrites the surviving weights, layer
    by layer on the already-pruned model's activations (``prune(..., sequential=True)`` is its
    default). ``nn.Linear`` targets only; patterns: unstructured (``scope="layer"``: the same
    share of every column block, the paper's choice; ``"row"``: of every row too) and N:M.

    Args:
        blocksize: columns per lazy-update block (the paper's 128).
        damp: Hessian damping as a fraction of its mean diagonal (the paper's 0.01).
    """

    requires: ClassVar[frozenset[str]] = frozenset({"hessian"})
    sequential: ClassVar[bool] = True
    default_scope: ClassVar[str] = "layer"

    def __init__(self, blocksize: int = 128, damp: float = 0.01) -> None:
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise ValueError(f"sparsegpt blocksize must be a positive int, got {blocksize!r}")
        if not 0.0 < float(damp) < 10.0:
            raise ValueError(f"sparsegpt damp must be in (0, 10), got {damp!r}")
        self.blocksize = blocksize
        self.damp = float(damp)

    def supports(self, module: nn.Module) -> str | None:
        """Why ``module`` cannot be pruned by SparseGPT, or None."""
        if not isinstance(module, nn.Linear):
            return (f"sparsegpt reconstructs nn.Linear layers, not {type(module).__name__} "
                    "(exclude it, or use criterion='wanda')")
        return None

    def supports_pattern(self, pattern: Pattern) -> str | None:
        """Why ``pattern`` cannot be produced by SparseGPT, or None."""
        if not isinstance(pattern, (Unstructured, NM)):
            return (f"sparsegpt prunes unstructured or N:M patterns, not {pattern} (use "
                    "criterion='wanda' or 'magnitude' for blocks and channels)")
        return None

    def reconstruct(self, weight: Tensor, hessian: Tensor, keep: Tensor, pattern: Pattern,
                    sparsity: float, per_row: bool) -> tuple[Tensor, Tensor]:
        """(new weight, keep-mask) for one layer; see :func:`sparsegpt_prune`."""
        return sparsegpt_prune(weight, hessian, pattern, sparsity, keep=keep, per_row=per_row,
                               blocksize=self.blocksize, damp=self.damp)

    def __call__(self, module: nn.Module, ctx: object) -> Tensor:
        raise TypeError("sparsegpt chooses masks while it reconstructs the weights; it runs "
                        "through sparseprune.prune(..., criterion='sparsegpt'), not as a score")
