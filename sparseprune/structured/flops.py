"""Counting MACs with ``torch.utils.flop_counter.FlopCounterMode``, attention included.

Out of the box ``FlopCounterMode`` misses two attention paths, which makes a dense ViT-B/16
count 11.3 G MACs instead of 17.6 G:

- ``nn.MultiheadAttention``'s fused inference path (``aten._native_multi_head_attention``, taken
  in eval mode without gradients) has no formula: ``mac_counter`` turns the fast path off while
  counting, so the module runs its composed ops (linear, attention) and those are counted;
- on the CPU, ``F.scaled_dot_product_attention`` runs
  ``aten._scaled_dot_product_flash_attention_for_cpu``, which has no formula either: it gets the
  same one as the CUDA kernels (two batched matmuls, causal masks not discounted).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["mac_counter", "mha_fastpath"]


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """FLOPs of ``softmax(q k^T) v``: q ``[..., Lq, D]``, k ``[..., Lk, D]``, v ``[..., Lk, Dv]``
    (key/value heads broadcast to the query's: grouped-query attention)."""
    batch = math.prod(query_shape[:-2])
    lq, d = query_shape[-2:]
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * batch * lq * lk * (d + dv)


_EXTRA_FORMULAS = {
    op: _sdpa_flops
    for op in (getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None),)
    if op is not None
}


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """Set ``nn.MultiheadAttention``'s fused inference path on or off, restored on exit."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:  # no switch in this torch: nothing to do
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


@contextlib.contextmanager
def mac_counter() -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (not displayed) that counts attention too; MACs = FLOPs / 2."""
    with mha_fastpath(False), FlopCounterMode(display=False,
                                              custom_mapping=_EXTRA_FORMULAS) as counter:
        yield counter
