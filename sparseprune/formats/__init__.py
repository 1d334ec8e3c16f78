"""Packed sparse weight formats (packing, unpacking, validation; no kernels).

``FORMATS`` maps a name to its ``PackedWeight`` class; ``parse_header`` reads the header every
packed weight carries.
"""

from .base import (
           FORMATS,
           HEADER_LEN,
           MAGIC,
           PackedWeight,
           format_by_id,
           parse_header,
           register_format,
)
from .bsr import BSR
from .csr import CSR, SELL
from .nm import NMFormat

__all__ = ["BSR", "CSR", "FORMATS", "HEADER_LEN", "MAGIC", "NMFormat", "PackedWeight", "SELL",
           "format_by_id", "parse_header", "register_format"]
