"""PNG plots with matplotlib (optional dependency, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .iterative import History
    from .sensitivity import Sensitivity

__all__ = ["plot_histories", "plot_sensitivity"]


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("plots need matplotlib: pip install matplotlib") from err
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_histories(histories: Sequence[History], path: str | os.PathLike, *,
                   title: str = "") -> None:
    """Accuracy vs sparsity, one line per history (its rounds in order), written to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        for h in histories:
            xs = [100 * r.sparsity for r in h.rounds]
            ys = [r.accuracy for r in h.rounds]
            ax.plot(xs, ys, marker="o", markersize=3, label=h.method)
        _finish(fig, ax, path, "sparsity (% of parameters zero)", "accuracy", title)
    finally:
        plt.close(fig)


def _finish(fig, ax, path: str | os.PathLike, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, grid, legend and title shared by every plot, then writes ``path``."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def plot_sensitivity(result: Sensitivity, path: str | os.PathLike, *, title: str = "") -> None:
    """Accuracy drop vs rate, one line per layer, written to ``path``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    try:
        xs = [100 * r for r in result.rates]
        for i, name in enumerate(result.layers):
            ys = [result.baseline - s for s in result.scores[i]]
            ax.plot(xs, ys, marker="o", markersize=3,
                    label=f"{name} ({result.params[i]:,} weights)")
        _finish(fig, ax, path, "layer sparsity (%), that layer alone, no fine-tuning",
                "accuracy drop", title)
    finally:
        plt.close(fig)
