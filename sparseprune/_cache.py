"""Where sparseprune keeps what it measured on this machine (convert's format choices, the
structured planner's latency tables): one folder, one environment variable for both."""

from __future__ import annotations

import os

__all__ = ["cache_dir"]


def cache_dir() -> str:
    """``$SPARSEPRUNE_CACHE_DIR``, else ``$SPARSEPRUNE_CACHE`` (the name the latency tables
    read before both caches shared one), else ``$XDG_CACHE_HOME/sparseprune``, else
    ``~/.cache/sparseprune``. Not created here: writers create it when they first save."""
    for var in ("SPARSEPRUNE_CACHE_DIR", "SPARSEPRUNE_CACHE"):
        if os.environ.get(var):
            return os.environ[var]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sparseprune")
