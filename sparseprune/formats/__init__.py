"""Packed sparse weight formats (packing, unpacking, validation; no kernels)."""

from .csr import CSR

__all__ = ["CSR"]
