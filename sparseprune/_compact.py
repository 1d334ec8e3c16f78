"""CSR indices for files: delta + varint coding, about 1 byte per nonzero below ~99 % sparsity.

Within a row, sorted unique columns ``c_0 < c_1 < ...`` become gaps ``c_0, c_1 - c_0 - 1, ...``,
each written as a little-endian base-128 varint (7 bits per byte, high bit set on all but the
last byte of a number). At 90 % sparsity the mean gap is ~9, so one byte each instead of the two
of a uint16 index; row pointers become per-row counts, ~1-2 bytes per row. Only
:func:`sparseprune.save` / :func:`sparseprune.load` use it; decoding rebuilds the canonical
``row_ptr`` / ``col_idx`` buffers, which the format then validates in full.
"""

from __future__ import annotations

import torch

from .formats.base import claims_more_than_it_holds, describe_tensor

__all__ = ["decode_columns", "decode_rows", "encode_columns", "encode_rows"]

_MAX_BYTES = 5  # a varint of an int32-range gap


def _varint_encode(values: torch.Tensor) -> torch.Tensor:
    """uint8 [bytes]: non-negative int64 ``values`` as varints."""
    nbytes = torch.ones_like(values)
    for k in range(1, _MAX_BYTES):
        nbytes += (values >= (1 << (7 * k))).to(torch.int64)
    owner = torch.repeat_interleave(torch.arange(values.numel()), nbytes)
    offset = torch.arange(owner.numel()) - torch.repeat_interleave(
        torch.cumsum(nbytes, 0) - nbytes, nbytes)
    chunk = (values[owner] >> (7 * offset)) & 0x7F
    more = offset < nbytes[owner] - 1
    return (chunk | (more.to(torch.int64) << 7)).to(torch.uint8)


def _varint_decode(data: object, count: int, name: str) -> torch.Tensor:
    """int64 [count] from untrusted varint bytes; ValueError unless exactly ``count`` fit."""
    if not (isinstance(data, torch.Tensor) and data.layout == torch.strided
            and data.device.type == "cpu" and data.dtype == torch.uint8 and data.dim() == 1):
        raise ValueError(f"{name}: compact data must be a dense 1-D uint8 CPU tensor, got "
                         f"{describe_tensor(data)}")
    if claims_more_than_it_holds(data):
        raise ValueError(f"{name}: compact data claims {data.numel()} bytes but holds "
                         f"{data.untyped_storage().nbytes()} (an expanded view)")
    # Each number takes 1..5 bytes: the length bounds the count before anything is allocated.
    if not count <= data.numel() <= _MAX_BYTES * count:
        raise ValueError(f"{name}: {data.numel()} bytes cannot hold {count} numbers")
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    b = data.contiguous().to(torch.int64)
    last = (b & 0x80) == 0
    if not bool(last[-1]):
        raise ValueError(f"{name}: the last number is truncated")
    if int(last.sum()) != count:
        raise ValueError(f"{name}: holds {int(last.sum())} numbers, expected {count}")
    group = torch.cumsum(last.to(torch.int64), 0) - last.to(torch.int64)
    start = torch.cat([torch.zeros(1, dtype=torch.int64),
                       torch.nonzero(last).squeeze(1)[:-1] + 1])
    offset = torch.arange(b.numel()) - start[group]
    if int(offset.max()) >= _MAX_BYTES:
        raise ValueError(f"{name}: a number is longer than {_MAX_BYTES} bytes")
    return torch.zeros(count, dtype=torch.int64).index_add_(0, group,
                                                            (b & 0x7F) << (7 * offset))


def encode_rows(row_ptr: torch.Tensor) -> torch.Tensor:
    """uint8 [bytes]: the per-row counts of ``row_ptr`` as varints."""
    return _varint_encode(row_ptr[1:] - row_ptr[:-1])


def decode_rows(data: object, rows: int, name: str = "row_ptr") -> torch.Tensor:
    """int64 [rows + 1] row pointers back from :func:`encode_rows`' bytes (untrusted)."""
    counts = _varint_decode(data, rows, name)
    return torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])


def encode_columns(row_ptr: torch.Tensor, col_idx: torch.Tensor) -> torch.Tensor:
    """uint8 [bytes]: the gaps of ``col_idx`` (sorted, unique per row) as varints."""
    cols = col_idx.to(torch.int64)
    counts = row_ptr[1:] - row_ptr[:-1]
    first = torch.zeros(cols.numel(), dtype=torch.bool)
    first[row_ptr[:-1][counts > 0]] = True
    prev = torch.cat([torch.zeros(1, dtype=torch.int64), cols[:-1]])
    gaps = torch.where(first, cols, cols - prev - 1)
    if cols.numel() and int(gaps.min()) < 0:
        raise ValueError("column indices must be sorted and unique within each row")
    return _varint_encode(gaps)


def decode_columns(data: object, row_ptr: torch.Tensor, dtype: torch.dtype,
                   name: str = "col_idx") -> torch.Tensor:
    """The ``col_idx`` buffer back from :func:`encode_columns`' bytes.

    Args:
        data: the uint8 [bytes] tensor from a file (untrusted).
        row_ptr: the layer's int64 row pointers, monotone from 0 (:func:`decode_rows` makes
            them so).
        dtype: the format's index dtype (uint16 or int32).
        name: for messages.

    Raises:
        ValueError: not a uint8 vector, a truncated or overlong varint, a count that does not
            match ``row_ptr``, or a column beyond the index dtype.
    """
    nnz = int(row_ptr[-1]) if row_ptr.numel() else 0
    gaps = _varint_decode(data, nnz, name)
    if nnz == 0:
        return torch.empty(0, dtype=dtype)
    counts = row_ptr[1:] - row_ptr[:-1]
    row_start = torch.repeat_interleave(row_ptr[:-1], counts)
    total = torch.cumsum(gaps + 1, 0)  # col_j = sum of (gap + 1) over the row so far, minus 1
    base = torch.cat([torch.zeros(1, dtype=torch.int64), total])[row_start]
    cols = total - base - 1
    limit = 65535 if dtype == torch.uint16 else 2**31 - 1
    if int(cols.max()) > limit:
        raise ValueError(f"{name}: a column index exceeds {limit}")
    return cols.to(dtype)
