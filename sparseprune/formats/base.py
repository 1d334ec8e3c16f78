"""The packed-weight protocol every format follows, and the header they all share.

A format is a ``PackedWeight`` subclass registered in ``FORMATS``: it packs a dense weight
(``from_dense``) into canonical tensors (``BUFFERS``, what a state_dict stores), and hands them to
its native weight type in ``sparseprune._C``, which validates them once and owns its own copy
(in whatever layout its kernels want). Python never edits the native data in place, so a kernel
never sees unchecked data; ``tensors()`` gives fresh copies back.

Header (int64 ``[8]``, one layout for all formats): magic, format id, dtype id (1 = float32),
layout version, rows, cols, p0, p1 (format parameters: r x c for blocks, n:m for N:M; 0 where
unused).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch

from .. import ops

__all__ = ["PackedWeight", "FORMATS", "register_format", "format_by_id", "parse_header",
           "MAGIC", "HEADER_LEN"]

MAGIC = 0x53505253  # "SPRS"
HEADER_LEN = 8
_DTYPE_F32 = 1
_LEGACY_CSR_HEADER_LEN = 6  # sparseprune 0.1 CSR files: no format parameters

FORMATS: dict[str, type[PackedWeight]] = {}
_BY_ID: dict[int, type[PackedWeight]] = {}


def register_format(cls: type[PackedWeight]) -> type[PackedWeight]:
    """Class decorator: adds a format to ``FORMATS`` (by ``NAME``) and to the id table."""
    if cls.FORMAT_ID in _BY_ID:
        raise ValueError(f"format id {cls.FORMAT_ID} is taken by {_BY_ID[cls.FORMAT_ID].NAME}")
    FORMATS[cls.NAME] = cls
    _BY_ID[cls.FORMAT_ID] = cls
    ops.register_native(cls.FORMAT_ID, cls.BUFFERS, cls.NATIVE)
    return cls


def format_by_id(format_id: int) -> type[PackedWeight]:
    cls = _BY_ID.get(int(format_id))
    if cls is None:
        raise ValueError(f"unknown packed format id {format_id} (known: "
                         f"{ {k: v.NAME for k, v in sorted(_BY_ID.items())} })")
    return cls


def is_small_cpu_int64(t: object, lengths: tuple[int, ...]) -> bool:
    """Whether ``t`` is a dense, 1-D CPU int64 tensor of one of ``lengths`` entries: what must
    hold before ``.tolist()`` may read it (a meta or sparse tensor has no readable data, and a
    zero-stride view may claim billions of entries while holding one)."""
    return (isinstance(t, torch.Tensor) and t.layout == torch.strided and t.device.type == "cpu"
            and t.dtype == torch.int64 and t.dim() == 1 and t.numel() in lengths)


def describe_tensor(t: object) -> str:
    """A short description of a value that was meant to be a tensor, for error messages; never
    reads the data."""
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    layout = "" if t.layout == torch.strided else f" {t.layout}"
    return f"{t.dtype}{layout} tensor of shape {tuple(t.shape)} on {t.device}"


def claims_more_than_it_holds(t: torch.Tensor) -> bool:
    """Whether a strided CPU tensor claims more elements than its storage holds (an expanded,
    zero-stride view): copying it would allocate memory a file never paid for."""
    return t.numel() > 0 and t.untyped_storage().nbytes() < t.numel() * t.element_size()


def parse_header(header: object, *, name: str = "weight"
                 ) -> tuple[type[PackedWeight], tuple[int, int], tuple[int, ...]]:
    """Checks a packed header and returns (format class, (rows, cols), params)."""
    if not is_small_cpu_int64(header, (HEADER_LEN, _LEGACY_CSR_HEADER_LEN)):
        raise ValueError(f"{name}: format header must be a dense CPU int64 tensor of shape "
                         f"({HEADER_LEN},), got {describe_tensor(header)}")
    values = [int(v) for v in header.tolist()]
    magic, fmt, dtype, version, rows, cols = values[:6]
    if magic != MAGIC:
        raise ValueError(f"{name}: not a sparseprune packed weight (magic {magic:#x})")
    cls = format_by_id(fmt)
    if len(values) == _LEGACY_CSR_HEADER_LEN and cls.NAME != "csr":
        raise ValueError(f"{name}: a {len(values)}-entry header is only valid for csr")
    if dtype != _DTYPE_F32:
        raise ValueError(f"{name}: unsupported value dtype id {dtype} (only float32)")
    if version != cls.LAYOUT_VERSION:
        raise ValueError(f"{name}: {cls.NAME} layout version {version} is not supported by this "
                         f"sparseprune (expects {cls.LAYOUT_VERSION})")
    if rows < 0 or cols < 0 or rows * cols >= 1 << 62:
        raise ValueError(f"{name}: implausible shape ({rows}, {cols}) in the header")
    params = tuple(values[6:6 + cls.NUM_PARAMS]) if len(values) == HEADER_LEN else ()
    if any(values[6 + cls.NUM_PARAMS:]):
        raise ValueError(f"{name}: unused header entries of a {cls.NAME} weight must be 0, got "
                         f"{values[6 + cls.NUM_PARAMS:]}")
    cls.check_params(params, name=name)
    return cls, (rows, cols), params


def plain_numpy(t: torch.Tensor):
    """A contiguous NumPy view (or copy) of a CPU tensor, with negated/conjugated views resolved."""
    return t.detach().resolve_neg().resolve_conj().contiguous().numpy()


class PackedWeight:
    """A validated, packed float32 weight ``[rows, cols]`` (rows = output features).

    Build one with ``from_dense`` (packing) or ``from_tensors`` (validating buffers, e.g. from a
    state_dict). Immutable: the data lives in the native object (``native``).
    """

    NAME: ClassVar[str]
    FORMAT_ID: ClassVar[int]
    LAYOUT_VERSION: ClassVar[int] = 1
    BUFFERS: ClassVar[tuple[str, ...]]
    NATIVE: ClassVar[str]  # the native class in sparseprune._C
    NUM_PARAMS: ClassVar[int] = 0  # header entries p0, p1 used

    def __init__(self, native: object, shape: tuple[int, int], params: tuple[int, ...]) -> None:
        self.native = native
        self.shape = (int(shape[0]), int(shape[1]))
        self.params = tuple(int(p) for p in params)

    # --- what a format defines ---
    @classmethod
    def check_params(cls, params: tuple[int, ...], *, name: str = "weight") -> None:
        """Raises ValueError when ``params`` are not valid for this format."""
        if len(params) != cls.NUM_PARAMS:
            raise ValueError(f"{name}: {cls.NAME} takes {cls.NUM_PARAMS} parameters, got "
                             f"{params}")

    @classmethod
    def pack(cls, weight: torch.Tensor, keep: torch.Tensor, params: tuple[int, ...], *,
             name: str) -> dict[str, torch.Tensor]:
        """Canonical buffers of ``weight`` [rows, cols] float32 where ``keep`` (bool)."""
        raise NotImplementedError

    @classmethod
    def expected_sizes(cls, shape: tuple[int, int], params: tuple[int, ...],
                       tensors: Mapping[str, torch.Tensor]) -> dict[str, int | None]:
        """Element counts each buffer must have (None: any), checked before anything is copied."""
        raise NotImplementedError

    @classmethod
    def dtypes(cls, shape: tuple[int, int]) -> dict[str, torch.dtype]:
        raise NotImplementedError

    def to_dense(self) -> torch.Tensor:
        """The exact dense float32 matrix [rows, cols]."""
        raise NotImplementedError

    # --- shared ---
    @classmethod
    def from_dense(cls, weight: torch.Tensor, mask: torch.Tensor | None = None, *,
                   params: tuple[int, ...] = (), name: str = "weight") -> PackedWeight:
        """Packs ``weight`` (any float dtype, CPU; stored as float32), dropping exact zeros and,
        with ``mask``, entries where the mask is 0. NaN/Inf values are kept as values."""
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() != 2:
            raise ValueError(f"{name}: expected a 2-D weight [rows, cols], got shape "
                             f"{tuple(weight.shape)}")
        if not weight.is_floating_point():
            raise TypeError(f"{name}: expected a floating point weight, got {weight.dtype}")
        if weight.device.type != "cpu":
            raise ValueError(f"{name}: packing runs on CPU tensors, got one on {weight.device}")
        params = tuple(int(p) for p in params)
        cls.check_params(params, name=name)
        w = weight.detach().to(torch.float32)
        keep = w != 0
        if mask is not None:
            if tuple(mask.shape) != tuple(w.shape):
                raise ValueError(f"{name}: mask shape {tuple(mask.shape)} does not match weight "
                                 f"shape {tuple(w.shape)}")
            keep &= mask.detach().to("cpu") != 0
        with torch.device("cpu"):  # a packer's scratch tensors too, under any default device
            tensors = cls.pack(w, keep, params, name=name)
        return cls.from_tensors(tensors, tuple(w.shape), params, name=name)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], shape: tuple[int, int],
                     params: tuple[int, ...] = (), *, name: str = "weight") -> PackedWeight:
        """Validates ``tensors`` (the ``BUFFERS``) in full and builds the native weight.

        Cheap checks (types, dtypes, sizes) run before any copy, so a tensor claiming a huge
        size through a zero stride costs nothing before it is refused. Raises ValueError
        naming the problem.
        """
        rows, cols = (int(s) for s in shape)
        if rows < 0 or cols < 0:
            raise ValueError(f"{name}: negative shape {(rows, cols)}")
        params = tuple(int(p) for p in params)
        cls.check_params(params, name=name)
        missing = [b for b in cls.BUFFERS if b not in tensors]
        if missing:
            raise ValueError(f"{name}: {cls.NAME} weight needs buffers {list(cls.BUFFERS)}, "
                             f"missing {missing}")
        dtypes = cls.dtypes((rows, cols))
        for b in cls.BUFFERS:
            t = tensors[b]
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{name}: {b} must be a tensor, got {type(t).__name__}")
            if t.layout != torch.strided:
                raise ValueError(f"{name}: {b} must be a dense (strided) tensor, got {t.layout}")
            if t.device.type != "cpu":
                raise ValueError(f"{name}: {b} is on {t.device}; packed weights live on the CPU")
            if t.dim() != 1:
                raise ValueError(f"{name}: {b} must be 1-D, got shape {tuple(t.shape)}")
            if t.dtype != dtypes[b]:
                raise ValueError(f"{name}: {b} must be {dtypes[b]}, got {t.dtype}")
            if claims_more_than_it_holds(t):
                raise ValueError(f"{name}: {b} claims {t.numel()} entries but its storage holds "
                                 f"{t.untyped_storage().nbytes() // t.element_size()} (an "
                                 "expanded view); packed buffers must hold their data")
        try:
            sizes = cls.expected_sizes((rows, cols), params, tensors)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        for b, n in sizes.items():
            if n is not None and tensors[b].numel() != n:
                raise ValueError(f"{name}: {b} has {tensors[b].numel()} entries, expected {n}")
        arrays = {b: plain_numpy(tensors[b]) for b in cls.BUFFERS}
        try:
            native = ops.make_weight(cls.FORMAT_ID, rows, cols, params, arrays)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return cls(native, (rows, cols), params)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Fresh copies of the canonical buffers (editing them changes nothing here)."""
        return {k: torch.from_numpy(v) for k, v in self.native.arrays().items()}

    def header(self) -> torch.Tensor:
        """int64 [8]: magic, format id, dtype id, layout version, rows, cols, p0, p1."""
        p = list(self.params) + [0] * (2 - len(self.params))
        return torch.tensor([MAGIC, self.FORMAT_ID, _DTYPE_F32, self.LAYOUT_VERSION,
                             self.rows, self.cols, *p], dtype=torch.int64)

    @property
    def rows(self) -> int:
        return self.shape[0]

    @property
    def cols(self) -> int:
        return self.shape[1]

    @property
    def nnz(self) -> int:
        """Stored values (padding included where a format pads)."""
        return int(self.native.nnz)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros of the dense weight, in [0, 1]; 1.0 for a 0-element matrix."""
        total = self.rows * self.cols
        return 1.0 - self.nnz / total if total else 1.0

    @property
    def nbytes(self) -> int:
        """Bytes the native weight holds at run time (its kernel layout)."""
        return int(self.native.nbytes)

    def __getstate__(self) -> dict:
        return {"native": self.native, "shape": self.shape, "params": self.params}

    def __setstate__(self, state: dict) -> None:
        # The native object re-validates its arrays when unpickled; the Python side must then
        # describe that same weight (a forged state could pair other params or a shape with it).
        native, shape, params = state["native"], tuple(state["shape"]), tuple(state["params"])
        if getattr(native, "format_id", None) != self.FORMAT_ID or \
                (native.rows, native.cols) != shape or tuple(native.params) != params:
            raise ValueError(f"pickled {self.NAME} weight does not match its native data "
                             f"(shape {shape}, params {params})")
        self.native, self.shape, self.params = native, shape, params

    def __repr__(self) -> str:
        extra = f", params={self.params}" if self.params else ""
        return (f"{type(self).__name__}(shape={self.shape}, nnz={self.nnz}, "
                f"sparsity={self.sparsity:.3f}{extra}, nbytes={self.nbytes})")
