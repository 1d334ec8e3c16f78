"""``sparseprune bench --report FILE``: a dated markdown section (command, machine, table) added to
FILE, and a PNG beside it of speedup vs sparsity, one panel per batch size, the dense line at 1x.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch

from . import ops
from .benchmark import OURS, Result, format_table
from .choose import cpu_model

__all__ = ["write_report", "plot_speedups"]


def plot_speedups(results: Sequence[Result], path: str | os.PathLike) -> None:
    """Speedup vs dense over sparsity: one panel per batch size, a line per (pattern, method)
    for sparseprune and torch CSR int32 (the strongest peer in every measured table)."""
    from .workflow.plots import _pyplot

    plt = _pyplot()
    batches = sorted({r.case.batch for r in results})
    fig, axes = plt.subplots(1, len(batches), figsize=(4.0 * len(batches), 3.6), dpi=110,
                             squeeze=False)
    try:
        for ax, batch in zip(axes[0], batches, strict=True):
            lines: dict[tuple[str, str, bool], list[tuple[float, float]]] = {}
            for r in results:
                # Ours and the strongest peer family only: a line per method x pattern would
                # drown the picture (the table has them all).
                if r.case.batch != batch or r.method not in (OURS, "torch csr int32"):
                    continue
                key = (r.case.pattern, r.method, r.case.cold)
                lines.setdefault(key, []).append((100 * r.case.effective_sparsity, r.speedup))
            for (pattern, method, cold), pts in sorted(lines.items()):
                pts.sort()
                label = f"{method}{'' if pattern == 'unstructured' else ' ' + pattern}"
                label += " (cold)" if cold else ""
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                        linewidth=2.2 if method.startswith(OURS) else 1.0,
                        linestyle="--" if cold else "-", label=label)
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_yscale("log")
            ax.set_title(f"batch {batch}")
            ax.set_xlabel("sparsity (%)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("speedup vs torch dense (log)")
        axes[0][-1].legend(fontsize=6, loc="best")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_report(results: Sequence[Result], path: str | os.PathLike, command: str) -> str:
    """Appends a section to the markdown file ``path`` and writes
    ``<path stem>-speedup-<date>-<time>.png`` beside it (one per section, so earlier sections keep
    their plots); returns the PNG path ('' when matplotlib is missing: the table is written
    anyway)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    png = f"{os.path.splitext(os.fspath(path))[0]}-speedup-{stamp}.png"
    try:
        plot_speedups(results, png)
    except ImportError:
        png = ""
    isas = ", ".join(ops.cpu_info()["active"])
    section = [
        f"\n## {datetime.date.today().isoformat()} — `{command}`\n",
        f"Machine: {cpu_model()}, {os.cpu_count()} CPUs, ISAs {isas}; torch {torch.__version__}, "
        f"sparseprune {ops.native_version()}. Ratios from one run; effective GFLOP/s = "
        "2 · batch · nnz / time.\n",
        format_table(list(results)),
        "",
    ]
    if png:
        section.append(f"![speedup vs sparsity]({os.path.basename(png)})\n")
    with open(path, "a") as f:
        f.write("\n".join(section))
    return png
