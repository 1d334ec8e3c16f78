"""The one bridge to the native extension ``sparseprune._C``.

Everything else in the package calls these functions; nothing else imports ``_C``. Tensors cross
the boundary as zero-copy NumPy views of contiguous float32 CPU tensors, and outputs are allocated
here with ``torch.empty`` and filled in place by the kernel (which releases the GIL).

``csr_linear`` is also registered as the ``torch.library`` custom op ``sparseprune::csr_linear``
(with a fake implementation), so ``torch.compile`` and ``torch.export`` can trace through
``SparseLinear`` without graph breaks.
"""

from __future__ import annotations

import numpy as np
import torch

from . import _C

# csr_linear_eager, csr_linear_arrays, weight_arrays and prepack_sell are deliberately not
# exported: they trust their CSR input (validated once by CSR.from_tensors / SparseLinear), and a
# kernel run on unchecked indices could read out of bounds.
__all__ = [
    "csr_linear",
    "validate_csr",
    "list_kernels",
    "cpu_info",
    "set_num_threads",
    "get_num_threads",
    "native_version",
    "is_tracing",
]

_num_threads_override: int | None = None


def set_num_threads(n: int | None) -> None:
    """Sets the kernels' thread count; ``None`` follows ``torch.get_num_threads()`` again.

    Args:
        n: a positive thread count, or None to follow torch again.
    """
    global _num_threads_override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"set_num_threads expects a positive int or None, got {n!r}")
    _num_threads_override = n


def get_num_threads() -> int:
    """Threads the kernels use: the ``set_num_threads`` value, else ``torch.get_num_threads()``."""
    if _num_threads_override is not None:
        return _num_threads_override
    return max(1, torch.get_num_threads())


def list_kernels() -> list[dict]:
    """Every compiled kernel variant: name, family, format, isa, mr, nr, supported, default."""
    return _C.list_kernels()


def cpu_info() -> dict:
    """ISAs detected on this CPU (``detected``) and allowed by ``SPARSEPRUNE_ISA`` (``active``)."""
    return _C.cpu_info()


def native_version() -> str:
    """The version string compiled into the extension."""
    return _C.__version__


def validate_csr(row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
                 cols: int) -> str:
    """Full O(rows + nnz) structural check of CSR data; returns '' when valid, else the problem.

    Args:
        row_ptr: [rows + 1] int64, contiguous.
        col_idx: [nnz] uint16 (cols <= 65536) or int32, contiguous.
        values: [nnz] float32, contiguous.
        cols: number of columns (input features).
    """
    return _C.validate_csr(row_ptr.numpy(), col_idx.numpy(), values.numpy(), int(cols))


def csr_linear_eager(x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                     values: torch.Tensor, bias: torch.Tensor | None, cols: int,
                     kernel: str = "") -> tuple[torch.Tensor, bool]:
    """``csr_linear`` without the custom-op wrapper, also returning whether x held NaN/Inf.

    The flag comes from a scan inside the extension, so callers can match dense semantics for
    non-finite inputs without a second pass over x in Python. Not traceable.
    """
    arrays = weight_arrays(row_ptr, col_idx, values, bias)
    return csr_linear_arrays(x, arrays, row_ptr.shape[0] - 1, cols, kernel)


def csr_linear_arrays(x: torch.Tensor, arrays: tuple, rows: int, cols: int,
                      kernel: str = "", sell: object | None = None) -> tuple[torch.Tensor, bool]:
    """``csr_linear_eager`` on NumPy views made once by ``weight_arrays``.

    ``SparseLinear`` caches the views: converting four tensors costs several microseconds a
    call, more than a small layer's kernel. The output is allocated by NumPy and wrapped without
    a copy (cheaper than ``torch.empty`` + ``.numpy()``).

    Args:
        sell: the weight's ``prepack_sell`` result, used for batch panels of >= 16 rows.
    """
    y = np.empty((x.shape[0], rows), dtype=np.float32)
    rp, ci, v, b = arrays
    nonfinite = _C.csr_linear(rp, ci, v, cols, x.numpy(), b, y, get_num_threads(), kernel, sell)
    return torch.from_numpy(y), nonfinite


# Batches at least this large use the K-blocked SELL-C kernels (when a pack is given): below it
# only CSR panels or SpMV would run, so the second copy of the weight is not built.
SELL_MIN_BATCH = 4


def prepack_sell(arrays: tuple, cols: int) -> object:
    """The K-blocked SELL-C copy of a validated CSR weight (``weight_arrays`` views).

    About 5 bytes per nonzero (+ ~1-2 % padding). Derived data: never stored in a state_dict.
    """
    rp, ci, v, _ = arrays
    return _C.prepack_sell(rp, ci, v, cols)


def weight_arrays(row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple:
    """Zero-copy NumPy views of packed CSR buffers (and bias), as the extension takes them."""
    return (row_ptr.numpy(), col_idx.numpy(), values.numpy(),
            None if bias is None else bias.numpy())


def _csr_linear_impl(x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
                     values: torch.Tensor, bias: torch.Tensor | None, cols: int,
                     kernel: str) -> torch.Tensor:
    return csr_linear_eager(x, row_ptr, col_idx, values, bias, cols, kernel)[0]


def csr_linear(x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor,
               values: torch.Tensor, bias: torch.Tensor | None, cols: int,
               kernel: str = "") -> torch.Tensor:
    """y = x Wᵀ + bias with W [rows, cols] in CSR.

    Eager calls validate the CSR data in full first (O(nnz)); ``SparseLinear`` avoids that cost by
    validating once and calling the trusted internals. Traced calls (the custom op) trust it.

    Args:
        x: [B, cols] float32, contiguous, CPU.
        row_ptr: [rows + 1] int64. col_idx: [nnz] uint16 or int32. values: [nnz] float32.
        bias: [rows] float32 or None.
        cols: input features.
        kernel: '' for the automatic choice, else a variant name from ``list_kernels()`` that
            then handles every batch row (tests and benchmarks use this).

    Returns:
        [B, rows] float32.
    """
    if kernel or not is_tracing():
        # Eager calls skip the custom-op dispatcher: it costs ~30 us a call, more than a small
        # layer's whole kernel.
        problem = validate_csr(row_ptr, col_idx, values, cols)
        if problem:
            raise ValueError(f"csr_linear: invalid CSR data: {problem}")
        return _csr_linear_impl(x, row_ptr, col_idx, values, bias, cols, kernel)
    return _csr_linear_op(x, row_ptr, col_idx, values, bias, cols)


_compiler = getattr(torch, "compiler", None)
_is_compiling = getattr(_compiler, "is_compiling", lambda: False)
_is_exporting = getattr(_compiler, "is_exporting", lambda: False)


def is_tracing() -> bool:
    """True under ``torch.compile`` / ``torch.export`` tracing (the custom op must be used)."""
    return _is_compiling() or _is_exporting()


def _register_custom_op():
    """Wraps the automatic-choice path as a torch.library custom op where torch supports it."""
    custom_op = getattr(torch.library, "custom_op", None)  # torch >= 2.4
    if custom_op is None:
        return lambda x, row_ptr, col_idx, values, bias, cols: _csr_linear_impl(
            x, row_ptr, col_idx, values, bias, cols, "")

    @custom_op("sparseprune::csr_linear", mutates_args=(), device_types="cpu")
    def op(x: torch.Tensor, row_ptr: torch.Tensor, col_idx: torch.Tensor, values: torch.Tensor,
           bias: torch.Tensor | None, cols: int) -> torch.Tensor:
        return _csr_linear_impl(x, row_ptr, col_idx, values, bias, cols, "")

    @op.register_fake
    def _(x, row_ptr, col_idx, values, bias, cols):
        return x.new_empty((x.shape[0], row_ptr.shape[0] - 1))

    return op


_csr_linear_op = _register_custom_op()
