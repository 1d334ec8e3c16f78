"""Workflows: fine-tuning, distillation, iterative pruning, lottery tickets, sensitivity.

All take ``train_fn(model, epochs, lr_scale=1.0)`` and ``eval_fn(model) -> float`` callables
(:class:`FineTuner` makes them from data loaders), so any training code plugs in.
"""

from ._state import Levels
from .channels import iterative_channel_prune
from .distill import DistillConfig, DistillResult, distill
from .distributed import broadcast_masks, broadcast_model, check_consistent, is_main_process
from .iterative import History, Round, iterative_prune
from .lottery import LotteryResult, find_lottery_ticket, reinitialize
from .plots import plot_histories, plot_sensitivity
from .sensitivity import Sensitivity, sensitivity
from .train import FineTuneConfig, FineTuner, evaluate, fit

__all__ = [
    "DistillConfig",
    "DistillResult",
    "FineTuneConfig",
    "FineTuner",
    "History",
    "Levels",
    "LotteryResult",
    "Round",
    "Sensitivity",
    "broadcast_masks",
    "broadcast_model",
    "check_consistent",
    "distill",
    "evaluate",
    "find_lottery_ticket",
    "fit",
    "is_main_process",
    "iterative_channel_prune",
    "iterative_prune",
    "plot_histories",
    "plot_sensitivity",
    "reinitialize",
    "sensitivity",
]
