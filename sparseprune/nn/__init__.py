"""Modules that run packed sparse weights with sparseprune's kernels."""

from .conv import SparseConv2d
from .linear import SparseLinear
from .packed import PackedModule
from .pool import MaxPool2d, list_pool_kernels

__all__ = ["MaxPool2d", "PackedModule", "SparseConv2d", "SparseLinear", "list_pool_kernels"]
