"""``nn.MultiheadAttention`` after head pruning.

``nn.MultiheadAttention`` needs ``num_heads * head_dim == embed_dim``: once heads are removed the
projections are ``num_heads * head_dim`` wide while the input and output stay ``embed_dim`` wide,
which its forward rejects. ``HeadPrunedMultiheadAttention`` is the same module (same attributes,
parameters and state_dict keys, still an ``nn.MultiheadAttention``) with a forward for that case;
the surgery and ``load_pruned`` switch a pruned module's class to it.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HeadPrunedMultiheadAttention", "is_head_pruned", "keep_heads", "keep_width",
           "mark_head_pruned"]


class HeadPrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose inner width ``num_heads * head_dim`` is below ``embed_dim``.

    Same call signature and results as ``nn.MultiheadAttention.forward`` (attention weights
    averaged over the remaining heads). Not supported: ``add_bias_kv``, ``add_zero_attn`` and
    per-head 3-D ``attn_mask`` (the planner keeps the heads of such modules).
    """

    def forward(  # type: ignore[override]
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.bias_k is not None or self.add_zero_attn:
            raise NotImplementedError("head-pruned MultiheadAttention with add_bias_kv or "
                                      "add_zero_attn")
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        tgt, n, _ = query.shape
        src = key.shape[0]
        h, d = self.num_heads, self.head_dim
        wq, wk, wv = _qkv_weights(self._qkv_same_embed_dim, self.in_proj_weight,
                                  self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        bq, bk, bv = _qkv_biases(self.in_proj_bias)
        q = F.linear(query, wq, bq).reshape(tgt, n * h, d).transpose(0, 1)
        k = F.linear(key, wk, bk).reshape(src, n * h, d).transpose(0, 1)
        v = F.linear(value, wv, bv).reshape(src, n * h, d).transpose(0, 1)
        scores = torch.bmm(q * (1.0 / d) ** 0.5, k.transpose(1, 2))  # [n*h, tgt, src]
        mask = _float_mask(attn_mask, query.dtype)
        if mask is not None:
            if mask.dim() == 3 and mask.shape[0] != n * h:
                raise ValueError(f"3-D attn_mask of {mask.shape[0]} heads x batch; this module "
                                 f"has {h} heads left after pruning")
            scores = scores + mask
        kpm = _float_mask(key_padding_mask, query.dtype)
        if kpm is not None:
            scores = (scores.view(n, h, tgt, src) + kpm.view(n, 1, 1, src)).view(n * h, tgt, src)
        attn = scores.softmax(dim=-1)
        if self.training and self.dropout > 0:
            attn = F.dropout(attn, p=self.dropout)
        out = torch.bmm(attn, v).transpose(0, 1).reshape(tgt, n, h * d)
        out = F.linear(out, self.out_proj.weight, self.out_proj.bias)
        weights: torch.Tensor | None = None
        if need_weights:
            w = attn.view(n, h, tgt, src)
            if average_attn_weights:
                w = w.mean(dim=1)
            weights = w.squeeze(0) if not batched else w
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, weights


def _qkv_weights(
    same: bool,
    packed: torch.Tensor | None,
    wq: torch.Tensor | None,
    wk: torch.Tensor | None,
    wv: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if same:
        if packed is None:
            raise ValueError("HeadPrunedMultiheadAttention: in_proj_weight is None, but the "
                             "module has the same embed dim for query, key and value")
        a, b, c = packed.chunk(3)
        return a, b, c
    # separate ifs (no comprehension, no f-string): this runs under TorchScript too
    separate = (" is None, but the module has separate query / key / value projections (kdim "
                "or vdim differs from embed_dim)")
    if wq is None:
        raise ValueError("HeadPrunedMultiheadAttention: q_proj_weight" + separate)
    if wk is None:
        raise ValueError("HeadPrunedMultiheadAttention: k_proj_weight" + separate)
    if wv is None:
        raise ValueError("HeadPrunedMultiheadAttention: v_proj_weight" + separate)
    return wq, wk, wv


def _qkv_biases(
    packed: torch.Tensor | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    if packed is None:
        return None, None, None
    a, b, c = packed.chunk(3)
    return a, b, c


def _float_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    out: torch.Tensor | None = None
    if mask is not None:
        if mask.dtype == torch.bool:
            out = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                mask, float("-inf"))
        else:
            out = mask.to(dtype)
    return out


def is_head_pruned(m: nn.Module) -> bool:
    return isinstance(m, nn.MultiheadAttention) and m.num_heads * m.head_dim != m.embed_dim


def mark_head_pruned(model: nn.Module) -> None:
    """Switch each ``nn.MultiheadAttention`` that lost heads to ``HeadPrunedMultiheadAttention``."""
    for m in model.modules():
        if is_head_pruned(m) and not isinstance(m, HeadPrunedMultiheadAttention):
            m.__class__ = HeadPrunedMultiheadAttention


def keep_heads(m: nn.MultiheadAttention, heads: int) -> nn.MultiheadAttention:
    """A copy of ``m`` with its first ``heads`` heads (1 <= heads <= num_heads), as the surgery
    leaves it: the same class when no head goes, else ``HeadPrunedMultiheadAttention``. Used to
    time attention at a head count (the latency table); ``m`` is not modified."""
    h, d = m.num_heads, m.head_dim
    if not 1 <= heads <= h:
        raise ValueError(f"keep_heads: heads must be in [1, {h}], got {heads}")
    out = copy.deepcopy(m)
    if heads == h:
        return out
    rows = torch.arange(heads * d)

    def cut(t: torch.Tensor | None, dim: int, packed: bool) -> nn.Parameter | None:
        if t is None:
            return None
        idx = torch.cat([rows + i * h * d for i in range(3)]) if packed else rows
        return nn.Parameter(t.detach().index_select(dim, idx).clone(), requires_grad=False)

    with torch.no_grad():
        if m._qkv_same_embed_dim:
            out.in_proj_weight = cut(m.in_proj_weight, 0, True)
        else:
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                setattr(out, name, cut(getattr(m, name), 0, False))
        if m.in_proj_bias is not None:
            out.in_proj_bias = cut(m.in_proj_bias, 0, True)
        out.out_proj.weight = cut(m.out_proj.weight, 1, False)
    out.num_heads = heads
    mark_head_pruned(out)
    return out


def keep_width(m: nn.MultiheadAttention, width: int) -> nn.MultiheadAttention:
    """A copy of self-attention ``m`` (one packed in-projection) on its first ``width``
    embedding channels (1 <= width <= embed_dim), as the surgery leaves a module whose residual
    stream shrank: ``embed_dim``, the in-projection's inputs and ``out_proj``'s outputs cut,
    heads kept. Used to time attention at an embedding width (the latency table)."""
    e = m.embed_dim
    if not m._qkv_same_embed_dim:
        raise ValueError("keep_width: the module has separate query / key / value projections")
    if not 1 <= width <= e:
        raise ValueError(f"keep_width: width must be in [1, {e}], got {width}")
    out = copy.deepcopy(m)
    if width == e:
        return out

    def param(t: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(t.detach().clone(), requires_grad=False)

    with torch.no_grad():
        out.in_proj_weight = param(m.in_proj_weight[:, :width])
        out.out_proj.weight = param(m.out_proj.weight[:width])
        if m.out_proj.bias is not None:
            out.out_proj.bias = param(m.out_proj.bias[:width])
    out.embed_dim = out.kdim = out.vdim = width
    out.out_proj.out_features = width
    out.out_proj.in_features = out.num_heads * out.head_dim
    mark_head_pruned(out)
    return out
