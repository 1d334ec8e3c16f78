"""An independent MAC reference for the structured tests.

``reference_macs`` is ``FlopCounterMode`` FLOPs / 2 with ``nn.MultiheadAttention``'s fused path
off and ``F.scaled_dot_product_attention`` forced onto its math backend, whose matmuls the
counter sees on the CPU (it has no formula for the CPU flash kernel). ``count_macs`` takes the
other route (a formula for that kernel), so agreement checks both.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from sparseprune.structured import count_macs

# Private to torch, but this is the switch the fused path reads; the reference must not share
# code with sparseprune's counter.
_mha = torch.backends.mha


def reference_macs(model: nn.Module, x: torch.Tensor) -> float:
    was = model.training
    before = _mha.get_fastpath_enabled()
    _mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(
            display=False
        ) as counter:
            model.eval()(x)
    finally:
        _mha.set_fastpath_enabled(before)
        model.train(was)
    return counter.get_total_flops() / 2


def assert_macs_agree(p, model: nn.Module, pruned: nn.Module, x: torch.Tensor,
                      rel: float = 0.02) -> float:
    """``count_macs`` and the plan's before/after MACs within ``rel`` of the reference; returns
    the MAC cut (reference before / after)."""
    before, after = reference_macs(model, x), reference_macs(pruned, x)
    for what, got, want in [
        ("count_macs(model)", count_macs(model, x), before),
        ("count_macs(pruned)", count_macs(pruned, x), after),
        ("plan.before['macs']", p.before["macs"], before),
        ("plan.after['macs']", p.after["macs"], after),
    ]:
        assert abs(got - want) <= rel * want, f"{what} = {got:.0f}, reference {want:.0f}"
    return before / after
