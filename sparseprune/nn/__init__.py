"""Modules that run packed sparse weights with sparseprune's kernels."""

from .linear import SparseLinear
from .packed import PackedModule

__all__ = ["PackedModule", "SparseLinear"]
