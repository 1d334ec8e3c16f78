"""``SparseLinear``: an inference-time drop-in for ``nn.Linear`` whose weight is packed sparse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..formats import CSR

__all__ = ["SparseLinear", "dense_weight_of"]


def dense_weight_of(linear: nn.Module) -> torch.Tensor:
    """The effective weight of a Linear-like module, honouring ``torch.nn.utils.prune`` masks.

    A pruned module carries ``weight_orig`` (the trained parameter) and ``weight_mask``; its
    effective weight is their product. Masked-out entries are taken as exact zeros even when
    ``weight_orig`` holds NaN there.
    """
    orig = getattr(linear, "weight_orig", None)
    mask = getattr(linear, "weight_mask", None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return torch.where(mask != 0, orig.detach(), torch.zeros((), dtype=orig.dtype))
    return linear.weight.detach()


def _identity(t: torch.Tensor | None) -> tuple:
    """What must not change for cached NumPy views of ``t`` to stay valid and current: the
    object, its storage (``share_memory_``, ``set_`` move it) and its version (in-place edits)."""
    if t is None:
        return (None,)
    # Inference tensors (made under torch.inference_mode) keep no version counter; they cannot
    # be edited in place outside inference mode, so their identity and storage suffice.
    return (id(t), t.data_ptr(), -1 if t.is_inference() else t._version)


class _Packed:
    """Per-module cache, keyed by the buffers' identities: their NumPy views (after a full
    validation) and the SELL-C copy once built."""

    __slots__ = ("key", "arrays", "sell")

    def __init__(self, key: tuple, row_ptr, col_idx, values, bias):
        self.key = key
        self.arrays = ops.weight_arrays(row_ptr, col_idx, values, bias)
        self.sell = None


class SparseLinear(nn.Module):
    """y = x Wᵀ + b with W stored in CSR and computed by sparseprune's native kernels.

    Inference only: the packed weight is a set of buffers, not a Parameter. When autograd needs a
    gradient (grad mode on and the input requires grad), forward falls back to a correct but slow
    dense path (``F.linear`` with the unpacked weight), so gradients flow to the input; the
    weight and bias get none.

    Inputs: ``[..., in_features]`` on CPU, any floating dtype. float16 / bfloat16 / float64 are
    computed in float32 (the weight's precision) and returned in the input's dtype; integer or
    CUDA inputs raise a clear error. Non-contiguous inputs are made contiguous. NaN and Inf
    propagate exactly as in dense torch (rows holding them are recomputed densely, since dense
    torch also spreads them through the pruned zeros: 0 * Inf = NaN; compiled or exported graphs
    skip that fix-up, so there a NaN/Inf input reaches only outputs with a stored weight for it).
    An empty batch returns an empty output.

    Args:
        in_features: K. out_features: N.
        bias: whether the layer has a bias.
        weight: the packed weight (shape [N, K]); an all-zero CSR when omitted.
        name: the layer's name in its model, used in error messages (``convert`` sets it).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight: CSR | None = None, name: str = "") -> None:
        super().__init__()
        if in_features < 0 or out_features < 0:
            raise ValueError(f"SparseLinear: negative size ({in_features}, {out_features})")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.name = name
        if weight is None:
            weight = CSR.from_dense(torch.zeros(out_features, in_features))
        if weight.shape != (out_features, in_features):
            raise ValueError(f"SparseLinear {name!r}: weight shape {weight.shape} does not match "
                             f"(out_features, in_features) = {(out_features, in_features)}")
        self._set_weight(weight)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    def _set_weight(self, weight: CSR) -> None:
        self.register_buffer("row_ptr", weight.row_ptr)
        self.register_buffer("col_idx", weight.col_idx)
        self.register_buffer("values", weight.values)
        self.register_buffer("format_header", weight.header())

    @property
    def format(self) -> str:
        """The packed format, e.g. ``"csr[uint16]"``."""
        return f"csr[{str(self.col_idx.dtype).replace('torch.', '')}]"

    @property
    def weight(self) -> CSR:
        """The packed weight as a CSR view of this module's buffers."""
        return CSR(self.row_ptr, self.col_idx, self.values, (self.out_features, self.in_features))

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, name: str = "") -> SparseLinear:
        """Packs an ``nn.Linear`` (plain, or carrying ``torch.nn.utils.prune`` masks).

        The zeros already in the weight are dropped; with a prune mask, the masked entries are.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense {name!r}: expected nn.Linear, got "
                            f"{type(linear).__name__}")
        weight = dense_weight_of(linear)
        if weight.device.type != "cpu":
            raise ValueError(f"SparseLinear.from_dense {name!r}: the layer is on {weight.device}; "
                             "sparseprune kernels run on CPU (call .cpu() first)")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    weight=CSR.from_dense(weight, name=name or "weight"), name=name)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().to(torch.float32))
        return layer

    def to_dense(self) -> nn.Linear:
        """An ``nn.Linear`` with the exact same weight and bias."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        with torch.no_grad():
            out.weight.copy_(self.weight.to_dense())
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    def _where(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"SparseLinear{label} [{self.out_features}x{self.in_features}]"

    def _packed(self) -> _Packed:
        """NumPy views of the packed buffers (and the SELL-C copy once built). Remade, after a
        full validation, whenever a buffer changes in any way (assignment, ``load_state_dict``,
        ``.to()``, ``share_memory_()``, in-place edits), so a kernel never sees unchecked data."""
        # Module.__getattr__ costs ~2 us per buffer; these dict lookups cost ~50 ns each.
        bufs = self._buffers
        key = (_identity(bufs["row_ptr"]), _identity(bufs["col_idx"]),
               _identity(bufs["values"]), _identity(bufs["bias"]))
        p = self.__dict__.get("_packed_cache")
        if p is None or p.key != key:
            p = self._repack()
        return p

    def _repack(self) -> _Packed:
        bufs = self._buffers
        weight = CSR.from_tensors(bufs["row_ptr"], bufs["col_idx"], bufs["values"],
                                  (self.out_features, self.in_features), name=self._where())
        bias = bufs["bias"]
        if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (
                self.out_features,) or not bias.is_cpu):
            raise ValueError(f"{self._where()}: bias must be a float32 CPU tensor of shape "
                             f"({self.out_features},), got {bias.dtype} {tuple(bias.shape)}")
        if bias is not None and not bias.is_contiguous():
            bufs["bias"] = bias = bias.contiguous()
        # from_tensors may have made contiguous copies: keep the validated tensors themselves.
        for name in ("row_ptr", "col_idx", "values"):
            if bufs[name] is not getattr(weight, name):
                bufs[name] = getattr(weight, name)
        key = (_identity(bufs["row_ptr"]), _identity(bufs["col_idx"]),
               _identity(bufs["values"]), _identity(bias))
        p = _Packed(key, bufs["row_ptr"], bufs["col_idx"], bufs["values"], bias)
        self.__dict__["_packed_cache"] = p
        return p

    def _sell(self):
        """The SELL-C copy for batches >= ``ops.SELL_MIN_BATCH``, built on first use (tens of
        ms for 4096x4096; ~5 B per nonzero) and dropped when the buffers change."""
        p = self._packed()
        if p.sell is None:
            p.sell = ops.prepack_sell(p.arrays, self.in_features)
        return p.sell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The common case (2-D contiguous float32 CPU input, no autograd, eager) goes straight to
        # the kernel: every no-op tensor call costs ~0.2-2 us from Python, and a small layer's
        # whole kernel takes a few.
        if (type(x) is torch.Tensor and x.dtype is torch.float32 and x.dim() == 2
                and x.shape[1] == self.in_features and x.is_cpu and not x.requires_grad
                and x.is_contiguous() and not ops.is_tracing()):
            return self._run(x)
        return self._forward_general(x)

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        """x2: [B, in_features] float32, contiguous, CPU; eager mode."""
        p = self._packed()
        sell = self._sell() if x2.shape[0] >= ops.SELL_MIN_BATCH else None
        y, nonfinite = ops.csr_linear_arrays(x2, p.arrays, self.out_features, self.in_features,
                                             sell=sell)
        if nonfinite:
            # Dense torch spreads a NaN/Inf input through the pruned zeros too (0 * Inf = NaN);
            # the kernel skips those zeros. Redo those rows densely so results match torch.
            bad_rows = ~torch.isfinite(x2).all(dim=1)
            y[bad_rows] = F.linear(x2[bad_rows], self.weight.to_dense(), self.bias)
        return y

    def _forward_general(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self._where()}: expected a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{self._where()}: expected a floating point input, got {x.dtype}")
        if not x.is_cpu:
            raise RuntimeError(f"{self._where()}: input is on {x.device}; sparseprune kernels run "
                               "on CPU only (move the input with .cpu())")
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"{self._where()}: input shape {tuple(x.shape)} does not end in "
                             f"in_features = {self.in_features}")
        if x.requires_grad and torch.is_grad_enabled():
            w = self.weight.to_dense().to(x.dtype)
            return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        if ops.is_tracing():
            y = ops.csr_linear(x2, self.row_ptr, self.col_idx, self.values, self.bias,
                               self.in_features)
        else:
            y = self._run(x2)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # The packed buffers change size with nnz, so they are replaced (after validation)
        # rather than copied into; the base class then loads the rest (bias) as usual.
        keys = {k: prefix + k for k in ("row_ptr", "col_idx", "values", "format_header")}
        present = [k for k, v in keys.items() if v in state_dict]
        if present and len(present) < len(keys):
            # Copying some packed buffers in place without the others (and without the header)
            # would leave an unchecked, inconsistent weight; refuse even with strict=False.
            missing = sorted(set(keys) - set(present))
            raise ValueError(f"{self._where()}: state_dict has {present} but not {missing}; "
                             "packed weights load as a whole")
        if present:
            where = self._where()
            rows, cols = CSR.shape_from_header(state_dict[keys["format_header"]], name=where)
            if (rows, cols) != (self.out_features, self.in_features):
                raise ValueError(f"{where}: state_dict holds a [{rows}x{cols}] weight")
            weight = CSR.from_tensors(state_dict[keys["row_ptr"]], state_dict[keys["col_idx"]],
                                      state_dict[keys["values"]], (rows, cols), name=where)
            self._set_weight(weight)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={self.weight.sparsity:.3f}, "
                f"format={self.format}")
