"""Structured (channel) pruning: remove whole channels and heads, get a smaller dense model.

    plan = sparseprune.structured.plan(model, example_inputs, amount=0.5)
    print(plan)            # widths before/after, ops whose channels were kept and why
    small = plan.apply()   # a plain nn.Module with smaller tensors
"""

from .budget import CostModel, count_macs, count_params
from .fold import fold_batchnorm, folded_batchnorms
from .graph import DependencyGraph, Group, StructuredTraceError, Unprunable, trace
from .importance import IMPORTANCE, BNScale, LpNorm, Random, Taylor
from .io import load_pruned, save_pruned, width_config
from .latency import LatencyModel, WallClock
from .mha import HeadPrunedMultiheadAttention
from .norms import PrunedLayerNorm
from .planner import Plan, PlanConfig, plan
from .rules import register_module_rule
from .surgery import StructuredPruningError, apply_plan, masked_model

__all__ = [
    "IMPORTANCE",
    "BNScale",
    "CostModel",
    "DependencyGraph",
    "Group",
    "HeadPrunedMultiheadAttention",
    "LatencyModel",
    "LpNorm",
    "Plan",
    "PlanConfig",
    "PrunedLayerNorm",
    "Random",
    "StructuredPruningError",
    "StructuredTraceError",
    "Taylor",
    "Unprunable",
    "WallClock",
    "apply_plan",
    "count_macs",
    "count_params",
    "fold_batchnorm",
    "folded_batchnorms",
    "load_pruned",
    "masked_model",
    "plan",
    "prune_channels",
    "register_module_rule",
    "save_pruned",
    "trace",
    "width_config",
]


def prune_channels(model, example_inputs, **kwargs):
    """``plan(model, example_inputs, **kwargs)`` then ``apply()``; returns ``(pruned, plan)``."""
    p = plan(model, example_inputs, **kwargs)
    return p.apply(), p
