"""The one bridge to the native extension ``sparseprune._C``.

Everything else in the package calls these functions; nothing else imports ``_C``. Native weight
objects (``_C.CsrWeight``, ``_C.SellWeight``, ...) are built here from canonical arrays (and
validated by their constructors); activations cross the boundary as zero-copy NumPy views of
float32 CPU tensors, and outputs are allocated here and filled in place by the kernel (which
releases the GIL).

``linear`` is also registered as the ``torch.library`` custom op ``sparseprune::linear`` (with a
fake implementation), so ``torch.compile`` and ``torch.export`` trace through packed modules
without graph breaks. The op takes the canonical buffers and validates them (once per distinct
set of buffers) before any kernel runs.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from . import _C

__all__ = [
    "linear",
    "linear_numpy",
    "make_weight",
    "make_plan",
    "list_kernels",
    "cpu_info",
    "dispatch_log",
    "set_num_threads",
    "get_num_threads",
    "native_version",
    "is_functorch_wrapped",
    "is_tracing",
    "MAX_THREADS",
    "register_native",
    "make_conv_plan",
    "conv2d_numpy",
    "conv2d",
]

MAX_THREADS = 1024
_num_threads_override: int | None = None

# Format id -> native class and canonical buffer order; filled by formats.register_format.
_NATIVE: dict[int, type] = {}
_BUFFER_NAMES: dict[int, tuple[str, ...]] = {}


def set_num_threads(n: int | None) -> None:
    """Sets the kernels' thread count; ``None`` follows ``torch.get_num_threads()`` again.

    Args:
        n: a thread count in [1, ``MAX_THREADS``], or None to follow torch again.
    """
    global _num_threads_override
    if n is not None and (isinstance(n, bool) or not isinstance(n, int)
                          or not 1 <= n <= MAX_THREADS):
        raise ValueError(f"set_num_threads expects an int in [1, {MAX_THREADS}] or None, "
                         f"got {n!r}")
    _num_threads_override = n


def get_num_threads() -> int:
    """Threads the kernels use: the ``set_num_threads`` value, else ``torch.get_num_threads()``."""
    if _num_threads_override is not None:
        return _num_threads_override
    return min(MAX_THREADS, max(1, torch.get_num_threads()))


def list_kernels() -> list[dict]:
    """Every compiled kernel: name, family, format, format_id, isa, mr, nr, supported, default."""
    return _C.list_kernels()


def cpu_info() -> dict:
    """ISAs detected on this CPU (``detected``) and allowed by ``SPARSEPRUNE_ISA`` (``active``)."""
    return _C.cpu_info()


def dispatch_log() -> str:
    """One line per format: the kernels the default plans use."""
    return _C.dispatch_log()


def native_version() -> str:
    """The version string compiled into the extension."""
    return _C.__version__


def make_weight(format_id: int, rows: int, cols: int, params: Sequence[int],
                arrays: Mapping[str, np.ndarray]) -> object:
    """The native weight of a format from its canonical arrays; ValueError when invalid."""
    cls = _NATIVE.get(int(format_id))
    if cls is None:
        raise ValueError(f"no native weight type for format id {format_id}")
    return cls(int(rows), int(cols), tuple(int(p) for p in params), dict(arrays))


def make_plan(format_id: int, names: Sequence[str]) -> object:
    """A fixed kernel choice (names from ``list_kernels()``) for one format."""
    return _C.KernelPlan(int(format_id), list(names))


def linear_eager(x: torch.Tensor, native: object, bias: torch.Tensor | None,
                 plan: object | None = None, *, out_cols_pad: int = 0
                 ) -> tuple[torch.Tensor, bool]:
    """y = x Wᵀ + bias on a native weight, also returning whether x held NaN/Inf.

    Args:
        x: [B, cols] float32 CPU with contiguous rows (any row stride).
        native: a native weight from ``make_weight``.
        bias: [rows] float32 contiguous, or None.
        plan: ``make_plan`` result, or None for the default kernels.
        out_cols_pad: extra output columns (the kernel writes y[:, :rows] of a wider array,
            i.e. with a row stride > rows; tests use it).

    Returns:
        ([B, rows + out_cols_pad] float32, whether x held NaN or Inf). The flag comes from a
        scan inside the extension, so callers can match dense semantics without a second pass.
    """
    y = np.empty((x.shape[0], native.rows + out_cols_pad), dtype=np.float32)
    out = y[:, : native.rows] if out_cols_pad else y
    nonfinite = _C.linear(native, x.numpy(), None if bias is None else bias.numpy(), out,
                          get_num_threads(), plan)
    return torch.from_numpy(y), nonfinite


def linear_numpy(native: object, x: np.ndarray, bias: np.ndarray | None,
                 plan: object | None) -> tuple[torch.Tensor, bool]:
    """``linear_eager`` on NumPy views the caller keeps (the per-call fast path of packed
    modules: converting tensors costs ~1 us each, a small layer's kernel a few)."""
    y = np.empty((x.shape[0], native.rows), dtype=np.float32)
    n = _num_threads_override or torch.get_num_threads()
    nonfinite = _C.linear(native, x, bias, y, n if n <= MAX_THREADS else MAX_THREADS, plan)
    return torch.from_numpy(y), nonfinite


def _version(t: torch.Tensor) -> int:
    """In-place edits bump it; -1 for inference tensors, which do not count them."""
    return -1 if t.is_inference() else t._version


class _NativeCache:
    """Native weights built by the custom op, keyed by the identity and version of the buffers
    they came from, so a traced graph validates its constant buffers once, not every call.

    A ``torch.export`` program whose module was not prepared (``prepare_for_compile``) hands
    the op fresh copies of its constants on every call (``lift_fresh_copy``): new identities.
    Those are matched by content against the weights already validated (a copy and a compare,
    ~2 bytes of memory traffic per stored byte) instead of being validated and packed again."""

    def __init__(self, size: int = 8) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple, object] = {}
        self._size = size

    @staticmethod
    def key(format_id, rows, cols, params, tensors) -> tuple:
        ids = tuple((id(t), t.data_ptr(), _version(t), t.numel()) for t in tensors)
        return (format_id, rows, cols, tuple(params), ids)

    def _same_content(self, head: tuple, tensors) -> object | None:
        """A validated native weight whose buffers equal ``tensors`` elementwise, or None."""
        with self._lock:
            items = [v for k, v in self._items.items() if k[:4] == head]
        for native, _, held, versions in items:
            # Only buffers unchanged since they were validated stand for the native weight (an
            # in-place edit of a held constant bumps its version; inference tensors have none).
            if versions != [_version(t) for t in held] or -1 in versions:
                continue
            if all(a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
                   for a, b in zip(held, tensors, strict=True)):
                return native
        return None

    def get(self, format_id, rows, cols, params, names, tensors) -> object:
        for t in tensors:  # before anything reads them (data_ptr, equal, numpy)
            if not isinstance(t, torch.Tensor) or t.layout != torch.strided \
                    or t.device.type != "cpu":
                raise ValueError("sparseprune::linear: packed buffers must be dense CPU tensors")
        k = self.key(format_id, rows, cols, params, tensors)
        with self._lock:
            hit = self._items.get(k)
        if hit is not None and hit[1] == [id(t) for t in tensors]:
            return hit[0]
        native = self._same_content(k[:4], tensors)
        if native is not None:
            return native
        from .formats import format_by_id  # formats imports this module

        # The format's own checks, the same as a state_dict load's (dtypes, sizes, expanded
        # views), then the native validation.
        native = format_by_id(format_id).from_tensors(
            dict(zip(names, tensors, strict=True)), (rows, cols), tuple(params),
            name="sparseprune op").native
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            # Holding the tensors keeps their ids from being reused by other tensors.
            self._items[k] = (native, [id(t) for t in tensors], list(tensors),
                              [_version(t) for t in tensors])
        return native


_cache = _NativeCache()

def register_native(format_id: int, buffers: Sequence[str], native: str) -> None:
    """Called once per format (by ``formats.register_format``): its canonical buffer order and
    the name of its native class in ``_C``."""
    _BUFFER_NAMES[int(format_id)] = tuple(buffers)
    _NATIVE[int(format_id)] = getattr(_C, native)


def _linear_impl(x: torch.Tensor, format_id: int, rows: int, cols: int, params: list[int],
                 tensors: list[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    names = _BUFFER_NAMES.get(int(format_id))
    if names is None or len(names) != len(tensors):
        raise ValueError(f"sparseprune::linear: format id {format_id} with {len(tensors)} "
                         "buffers is not a known packed format")
    if x.dim() != 2 or x.dtype != torch.float32 or x.shape[1] != cols:
        raise ValueError(f"sparseprune::linear: x must be [B, {cols}] float32, got "
                         f"{x.dtype} {tuple(x.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (rows,)):
        raise ValueError(f"sparseprune::linear: bias must be float32 [{rows}]")
    native = _cache.get(int(format_id), rows, cols, params, names, tensors)
    b = None if bias is None else bias.detach().contiguous()
    x = x.contiguous()
    y, nonfinite = linear_eager(x, native, b)
    if nonfinite:  # as in eager SparseLinear: dense torch spreads NaN/Inf through the zeros
        bad = ~torch.isfinite(x).all(dim=1)
        dense = _dense_weight(format_id, rows, cols, params, names, tensors)
        with torch.autocast("cpu", enabled=False):
            y[bad] = torch.nn.functional.linear(x[bad], dense, b)
    return y


def _dense_weight(format_id, rows, cols, params, names, tensors) -> torch.Tensor:
    """The dense [rows, cols] weight of validated canonical buffers (the rare NaN/Inf path)."""
    from .formats import format_by_id  # formats imports this module

    cls = format_by_id(int(format_id))
    packed = cls.from_tensors(dict(zip(names, tensors, strict=True)), (rows, cols),
                              tuple(params), name="sparseprune op")
    return packed.to_dense()


def _register_custom_op():
    custom_op = getattr(torch.library, "custom_op", None)  # torch >= 2.4
    if custom_op is None:
        return _linear_impl

    @custom_op("sparseprune::linear", mutates_args=(), device_types="cpu")
    def op(x: torch.Tensor, format_id: int, rows: int, cols: int, params: list[int],
           tensors: list[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
        return _linear_impl(x, format_id, rows, cols, params, tensors, bias)

    @op.register_fake
    def _(x, format_id, rows, cols, params, tensors, bias):
        return x.new_empty((x.shape[0], rows))

    return op


linear_op = _register_custom_op()


def linear(x: torch.Tensor, format_id: int, shape: tuple[int, int], params: Sequence[int],
           tensors: Sequence[torch.Tensor], bias: torch.Tensor | None) -> torch.Tensor:
    """y = x Wᵀ + bias from a format's canonical buffers (validated before any kernel runs).

    The traceable entry point (``torch.compile`` / ``torch.export`` see one custom op); eager
    callers with a packed module use its native weight directly instead.

    Args:
        x: [B, cols] float32 CPU.
        format_id: the format's ``FORMAT_ID``. shape: (rows, cols). params: format parameters.
        tensors: the format's ``BUFFERS`` in order. bias: [rows] float32 or None.
    """
    return linear_op(x, int(format_id), int(shape[0]), int(shape[1]), [int(p) for p in params],
                     list(tensors), bias)


# ---- direct sparse convolution ----

def make_conv_plan(native: object, spec: Sequence[int], kernel: str | None = None) -> object:
    """A conv filter (native CSR, or BSR with r x 1 blocks) met with one input size
    (``_C.ConvPlan``): the geometry that maps every
    kept tap to an input offset, and the kernel row (``kernel`` by name, None: chosen by the
    output size). ``spec`` = (channels, height, width, kh, kw, stride_h, stride_w, dil_h, dil_w,
    groups, pad_top, pad_left, pad_bottom, pad_right). ValueError when they do not fit."""
    return _C.ConvPlan(native, tuple(int(v) for v in spec), kernel)


def conv2d_numpy(plan: object, x: np.ndarray, bias: np.ndarray | None
                 ) -> tuple[torch.Tensor, bool]:
    """y = conv2d(x, W) + bias for a ``make_conv_plan`` plan.

    Args:
        x: [N, C, H, W] float32 C-contiguous (C, H, W those of the plan's spec).
        bias: [O] float32 contiguous, or None.

    Returns:
        ([N, O, out_h, out_w] float32, whether x held NaN or Inf).
    """
    y = np.empty((x.shape[0], plan.rows, plan.out_h, plan.out_w), dtype=np.float32)
    n = _num_threads_override or torch.get_num_threads()
    nonfinite = _C.conv2d(plan, x, bias, y, n if n <= MAX_THREADS else MAX_THREADS)
    return torch.from_numpy(y), nonfinite


class _ConvPlanCache:
    """Conv plans of the custom op, per (native weight, spec): building one walks every tap."""

    def __init__(self, size: int = 16) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple, tuple[object, object]] = {}
        self._size = size

    def get(self, native: object, spec: tuple[int, ...]) -> object:
        k = (id(native), spec)
        with self._lock:
            hit = self._items.get(k)
        if hit is not None and hit[0] is native:
            return hit[1]
        plan = make_conv_plan(native, spec)
        with self._lock:
            if len(self._items) >= self._size:
                self._items.pop(next(iter(self._items)))
            self._items[k] = (native, plan)
        return plan


_conv_plans = _ConvPlanCache()


def _conv2d_impl(x: torch.Tensor, format_id: int, rows: int, cols: int, params: list[int],
                 tensors: list[torch.Tensor], bias: torch.Tensor | None,
                 conv: list[int]) -> torch.Tensor:
    names = _BUFFER_NAMES.get(int(format_id))
    if names is None or len(names) != len(tensors) or _NATIVE.get(int(format_id)) not in (
            _C.CsrWeight, _C.BsrWeight):
        raise ValueError(f"sparseprune::conv2d: format id {format_id} is not a conv filter "
                         "format (CSR, or BSR with r x 1 blocks)")
    if x.dim() != 4 or x.dtype != torch.float32:
        raise ValueError(f"sparseprune::conv2d: x must be [N, C, H, W] float32, got {x.dtype} "
                         f"{tuple(x.shape)}")
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (rows,)):
        raise ValueError(f"sparseprune::conv2d: bias must be float32 [{rows}]")
    if len(conv) != 11:
        raise ValueError("sparseprune::conv2d: conv must hold (kh, kw, stride_h, stride_w, "
                         "dil_h, dil_w, groups, pad_top, pad_left, pad_bottom, pad_right)")
    native = _cache.get(int(format_id), rows, cols, params, names, tensors)
    spec = (int(x.shape[1]), int(x.shape[2]), int(x.shape[3]), *(int(v) for v in conv))
    plan = _conv_plans.get(native, spec)
    b = None if bias is None else bias.detach().contiguous()
    x = x.detach().contiguous()
    y, nonfinite = conv2d_numpy(plan, x.numpy(), None if b is None else b.numpy())
    if nonfinite:  # as in eager SparseConv2d: dense torch spreads NaN/Inf through the zeros
        kh, kw, sh, sw, dh, dw, groups, pt, pl, pb, pr = (int(v) for v in conv)
        dense = _dense_weight(format_id, rows, cols, params, names, tensors)
        dense = dense.reshape(rows, cols // (kh * kw), kh, kw)
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (pl, pr, pt, pb)), dense, b,
                                       (sh, sw), 0, (dh, dw), groups)
    return y


def _register_conv_op():
    custom_op = getattr(torch.library, "custom_op", None)
    if custom_op is None:
        return _conv2d_impl

    @custom_op("sparseprune::conv2d", mutates_args=(), device_types="cpu")
    def op(x: torch.Tensor, format_id: int, rows: int, cols: int, params: list[int],
           tensors: list[torch.Tensor], bias: torch.Tensor | None,
           conv: list[int]) -> torch.Tensor:
        return _conv2d_impl(x, format_id, rows, cols, params, tensors, bias, conv)

    @op.register_fake
    def _(x, format_id, rows, cols, params, tensors, bias, conv):
        kh, kw, sh, sw, dh, dw, _g, pt, pl, pb, pr = conv
        oh = (x.shape[2] + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (x.shape[3] + pl + pr - dw * (kw - 1) - 1) // sw + 1
        return x.new_empty((x.shape[0], rows, oh, ow))

    return op


conv2d_op = _register_conv_op()


def conv2d(x: torch.Tensor, format_id: int, shape: tuple[int, int], params: Sequence[int],
           tensors: Sequence[torch.Tensor], bias: torch.Tensor | None,
           conv: Sequence[int]) -> torch.Tensor:
    """The traceable sparse conv2d (one custom op for ``torch.compile`` / ``torch.export``).

    Args:
        x: [N, C, H, W] float32 CPU. format_id / shape / params / tensors: the CSR filter
            [O, C/groups * kh * kw] as canonical buffers. bias: [O] float32 or None.
        conv: (kh, kw, stride_h, stride_w, dil_h, dil_w, groups, pad_top, pad_left,
            pad_bottom, pad_right).
    """
    return conv2d_op(x, int(format_id), int(shape[0]), int(shape[1]), [int(p) for p in params],
                     list(tensors), bias, [int(v) for v in conv])


_compiler = getattr(torch, "compiler", None)
_is_compiling = getattr(_compiler, "is_compiling", lambda: False)
_is_exporting = getattr(_compiler, "is_exporting", lambda: False)


_jit_tracing = torch.jit.is_tracing


def is_functorch_wrapped(x: torch.Tensor) -> bool:
    """True for a ``torch.func`` (vmap / grad / jvp) wrapper, which has no storage a kernel
    could read: packed layers compute such inputs with their dense weight."""
    if _is_compiling():
        return False  # dynamo cannot call the check, and traces functorch transforms itself
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(x)) if check is not None else False


def is_tracing() -> bool:
    """True under ``torch.compile`` / ``torch.export`` / ``torch.jit.trace`` tracing (the custom
    op must be used: a direct kernel call would be recorded as a constant result)."""
    return _is_compiling() or _is_exporting() or _jit_tracing()
