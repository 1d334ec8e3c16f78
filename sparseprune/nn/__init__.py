"""Modules that run packed sparse weights with sparseprune's kernels."""

from .conv import SparseConv2d
from .linear import SparseLinear
from .packed import PackedModule

__all__ = ["PackedModule", "SparseConv2d", "SparseLinear"]
