"""Modules that run packed sparse weights with sparseprune's kernels."""

from .linear import SparseLinear

__all__ = ["SparseLinear"]
