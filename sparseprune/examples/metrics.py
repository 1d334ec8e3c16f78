"""How closely a (pruned) sentence encoder agrees with its reference, and whether it still
recognises paraphrases. All computations run in float64 on the inputs' device; inputs may be
any floating dtype and need not be normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["embedding_metrics", "paraphrase_margin", "rankdata", "spearman"]


def _check_pair(a: Tensor, b: Tensor, names: tuple[str, str], min_rows: int) -> None:
    for t, name in zip((a, b), names, strict=True):
        if not isinstance(t, Tensor) or t.dim() != 2 or not t.dtype.is_floating_point:
            raise ValueError(f"{name} must be a floating tensor of shape [n, d]")
    if a.shape != b.shape:
        raise ValueError(f"{names[0]} {tuple(a.shape)} and {names[1]} {tuple(b.shape)} differ "
                         "in shape")
    if a.shape[0] < min_rows:
        raise ValueError(f"need at least {min_rows} rows, got {a.shape[0]}")


def _cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """[n, m] cosine similarities between the rows of a [n, d] and b [m, d]."""
    return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T


def rankdata(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, ties given the average of the ranks they span (as
    ``scipy.stats.rankdata(method="average")``); float64, same length."""
    if x.dim() != 1:
        raise ValueError("rankdata expects a 1-D tensor")
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True,
                                           return_counts=True)
    last = torch.cumsum(counts, 0).double()  # rank of the last element of each tie group
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors of one length: the Pearson correlation of
    their average ranks. NaN when either has a single distinct value (no ranking to compare)."""
    if x.dim() != 1 or x.shape != y.shape:
        raise ValueError("spearman expects two 1-D tensors of the same length")
    rx = rankdata(x)
    ry = rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = (rx.square().sum() * ry.square().sum()).sqrt()
    return float("nan") if denom == 0 else float((rx * ry).sum() / denom)


def embedding_metrics(reference: Tensor, candidate: Tensor) -> dict[str, float]:
    """Agreement of ``candidate`` [n, d] embeddings with ``reference`` [n, d] (row i of each
    embeds the same sentence; n >= 3):

    * ``cosine``: mean over i of cos(reference_i, candidate_i); 1 when the directions agree.
    * ``spearman``: Spearman rank correlation between the n(n-1)/2 pairwise cosine similarities
      (upper triangle, diagonal excluded) of the reference and of the candidate: 1 when the
      candidate orders every pair of sentences by similarity as the reference does, whatever
      the embeddings' own rotation or scale. NaN when one side has all pairs equal.
    """
    _check_pair(reference, candidate, ("reference", "candidate"), 3)
    cosine = F.cosine_similarity(reference.double(), candidate.double(), dim=1).mean()
    n = reference.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=reference.device)
    rho = spearman(_cosine_matrix(reference, reference)[i, j],
                   _cosine_matrix(candidate, candidate)[i, j])
    return {"cosine": float(cosine), "spearman": rho}


def paraphrase_margin(emb_a: Tensor, emb_b: Tensor) -> float:
    """Mean over pairs i of cos(a_i, b_i) - max over j != i of cos(a_i, b_j), for ``emb_a`` and
    ``emb_b`` [n, d] (n >= 2) where (a_i, b_i) embed two paraphrases. Positive when, on average,
    a sentence is closer to its own paraphrase than to the most similar wrong one; the larger
    the better. In [-2, 2]."""
    _check_pair(emb_a, emb_b, ("emb_a", "emb_b"), 2)
    sim = _cosine_matrix(emb_a, emb_b)
    own = sim.diagonal()
    others = sim.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device),
                             float("-inf"))
    return float((own - others.max(dim=1).values).mean())
