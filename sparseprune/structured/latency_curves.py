"""A module's cost curve by width, timed as ratios to its full width on this CPU.

``_curve`` times ``point(f_row, f_col)`` modules on a grid of kept fractions, each as a ratio to
the full-width module, interleaved; ``_bilinear`` reads a table between its grid points;
``_valid_table`` decides whether a cached table can be used. Shared by the layer, attention and
norm tables of ``latency.py`` and ``latency_norms.py``.
"""

from __future__ import annotations

import time

import numpy as np

from .wallclock import WallClock, median_known

GRID = (0.25, 0.5, 1.0)


# Each grid point is timed interleaved with the full-width module at least PAIRS times, then
# until the median ratio is known to POINT_REL_ERROR (standard error), PAIRS_MAX pairs or
# POINT_MAX_TIME seconds: single ratios of a 3 ms Linear scatter 0.18-0.31 on a shared VM, and
# tables of two pairs per point put one 30 % ViT-B plan at 0.97-1.05 of its budget. PAIRS is a
# floor even where one pair outlasts POINT_MAX_TIME (a batch-32 conv): a median needs three.
PAIRS = 3
PAIRS_MAX = 8
POINT_REL_ERROR = 0.02
POINT_MAX_TIME = 1.5
TABLE_VERSION = "ratio-curves-3"  # in every cache key: older tables are measured again


def _curve(point, grid: tuple, timer: WallClock, cols: tuple | None = None
           ) -> list[list[float]]:
    """``point(f_row, f_col) -> (module, inputs)`` timed on ``grid`` x ``cols`` (default
    ``grid``; the last of each is the full width): each point as
    its median ratio to the full-width module over ``PAIRS`` or more interleaved timings, times the
    full module's median. A curve timed point by point drifts with the machine (±9 % over
    seconds on a shared VM: three fresh ViT-B tables predicted 0.48-0.57 for one plan); as
    ratios, 0.50-0.52."""
    cols = grid if cols is None else cols
    full, full_inputs = point(grid[-1], cols[-1])
    tops = [timer.layer(full, full_inputs)]
    table = []
    for fr in grid:
        row = []
        for fc in cols:
            if fr == grid[-1] and fc == cols[-1]:
                row.append(None)
                continue
            module, inputs = point(fr, fc)
            ratios: list[float] = []
            start = time.perf_counter()
            while len(ratios) < PAIRS_MAX:
                t = timer.layer(module, inputs)
                top = timer.layer(full, full_inputs)
                tops.append(top)
                ratios.append(t / top if top > 0 else 1.0)
                if len(ratios) >= PAIRS and (median_known(ratios, POINT_REL_ERROR)
                                             or time.perf_counter() - start > POINT_MAX_TIME):
                    break
            row.append(float(np.median(ratios)))
        table.append(row)
    level = float(np.median(tops))
    return [[level if r is None else r * level for r in row] for row in table]


def _valid_table(entry, shape: tuple = (len(GRID), len(GRID))) -> bool:
    """A cached table fit to use: ``shape`` (GRID x GRID for layers and attention,
    ``NORM_SHAPE`` for norms) finite positive seconds (anything else, from an older version or
    an edited file, is measured again)."""
    try:
        table = np.array(entry, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return table.shape == tuple(shape) and bool(np.isfinite(table).all()
                                                          and (table > 0).all())


def _bilinear(table: np.ndarray, fin: float, fout: float, rows: tuple = GRID,
              cols: tuple = GRID) -> float:
    """``table`` (timed at fractions ``rows`` x ``cols``, ascending) interpolated at
    ``(fin, fout)``, clamped to the grid."""

    def interp(v: float, g: np.ndarray) -> tuple[int, float]:
        v = float(np.clip(v, g[0], g[-1]))
        i = int(np.clip(np.searchsorted(g, v) - 1, 0, len(g) - 2))
        span = g[i + 1] - g[i]
        return i, (v - g[i]) / span if span > 0 else 0.0

    i, a = interp(fin, np.asarray(rows, dtype=np.float64))
    j, b = interp(fout, np.asarray(cols, dtype=np.float64))
    return float(
        table[i, j] * (1 - a) * (1 - b) + table[i + 1, j] * a * (1 - b)
        + table[i, j + 1] * (1 - a) * b + table[i + 1, j + 1] * a * b
    )
