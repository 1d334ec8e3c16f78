"""Pruning front end: masks only (criteria, patterns, schedules, scopes), PyTorch-prune compatible.

Pure Python on top of ``torch.nn.utils.prune``; it does not need the native extension.
"""

from .api import DEFAULT_PROTECT, Pruner, prune, remove
from .criteria import (
    CRITERIA,
    L1,
    L2,
    Context,
    Criterion,
    Magnitude,
    Random,
    SparseGPT,
    Taylor,
    Wanda,
)
from .masks import MaskMethod, apply_mask, load_masked_state_dict
from .patterns import NM, PATTERNS, Block, Channel, Pattern, Unstructured, parse_pattern
from .report import LayerReport, PruneReport
from .schedules import SCHEDULES, Cubic, Geometric, Linear, OneShot, Schedule
from .scope import SCOPES, Global, PerLayer, PerRow, Protect, Scope
from .summary import LayerSummary, Summary, summary

__all__ = [
    "CRITERIA",
    "DEFAULT_PROTECT",
    "L1",
    "L2",
    "NM",
    "PATTERNS",
    "SCHEDULES",
    "SCOPES",
    "Block",
    "Channel",
    "Context",
    "Criterion",
    "Cubic",
    "Geometric",
    "Global",
    "LayerReport",
    "LayerSummary",
    "Linear",
    "Magnitude",
    "MaskMethod",
    "OneShot",
    "Pattern",
    "PerLayer",
    "PerRow",
    "Protect",
    "PruneReport",
    "Pruner",
    "Random",
    "Schedule",
    "Scope",
    "SparseGPT",
    "Summary",
    "Taylor",
    "Unstructured",
    "Wanda",
    "apply_mask",
    "load_masked_state_dict",
    "parse_pattern",
    "prune",
    "remove",
    "summary",
]
