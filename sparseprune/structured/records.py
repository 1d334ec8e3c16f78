"""Plain records shared by the dependency graph (``graph.py``) and the fx interpreter
(``interpreter.py``); this module imports neither, so both can import it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__: list[str] = []


@dataclass
class _CostItem:
    base: float
    dims: list[np.ndarray]  # atoms along each dim whose width scales the cost
    module: str | None = None
