"""``SparseLinear``: an inference-time drop-in for ``nn.Linear`` whose weight is packed sparse."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._weights import effective_weight
from ..formats import FORMATS, PackedWeight
from .packed import PackedModule

__all__ = ["SparseLinear", "DEFAULT_FORMAT"]

# Without a measurement, unstructured weights go to SELL-C: the faster layout at every batch on
# the shapes measured (bench/RESULTS.md); convert(example_inputs=...) measures instead.
DEFAULT_FORMAT = "sell"


class SparseLinear(PackedModule):
    """y = x Wᵀ + b with W packed sparse (any registered format) and run by native kernels.

    Inference only: the packed weight is not a Parameter. When autograd needs a gradient (grad
    mode on and the input requires grad), forward falls back to a correct but slow dense path
    (``F.linear`` with the unpacked weight), so gradients flow to the input; the weight and bias
    get none.

    Inputs: ``[..., in_features]`` on CPU, any floating dtype. float16 / bfloat16 / float64 are
    computed in float32 (the weight's precision) and returned in the input's dtype; integer or
    CUDA inputs raise a clear error. Rows need only be contiguous (any row stride). NaN and Inf
    propagate exactly as in dense torch (rows holding them are recomputed densely, since dense
    torch also spreads them through the pruned zeros: 0 * Inf = NaN; compiled and exported graphs
    too). An empty batch returns an empty output. ``.half()`` / ``.double()`` keep
    the packed weight and bias in float32; moving to another device raises.

    Args:
        in_features: K. out_features: N.
        bias: whether the layer has a bias.
        weight: the packed weight (shape [N, K]); an all-zero weight of ``DEFAULT_FORMAT``
            when omitted.
        name: the layer's name in its model, used in error messages (``convert`` sets it).
        kernels: fixed kernel names (see ``PackedModule``); () for the default choice.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight: PackedWeight | None = None, name: str = "",
                 kernels: tuple[str, ...] = ()) -> None:
        if in_features < 0 or out_features < 0:
            raise ValueError(f"SparseLinear: negative size ({in_features}, {out_features})")
        self.__dict__["in_features"] = int(in_features)
        self.__dict__["out_features"] = int(out_features)
        if weight is None:
            weight = FORMATS[DEFAULT_FORMAT].from_dense(
                torch.zeros(out_features, in_features, device="cpu"))
        super().__init__(weight, out_features if bias else None, name=name, kernels=kernels)

    # Shapes are fixed by the packed weight: assigning them would make the layer lie about it.
    def __setattr__(self, key, value):
        if key in ("in_features", "out_features") and key in self.__dict__:
            raise AttributeError(f"{self._where()}: {key} is fixed by the packed weight "
                                 "(build a new layer with from_dense)")
        super().__setattr__(key, value)

    def _expected_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def _where(self) -> str:
        label = f" {self.name!r}" if self.__dict__.get("name") else ""
        return f"SparseLinear{label} [{self.out_features}x{self.in_features}]"

    @classmethod
    def from_dense(cls, linear: nn.Linear, *, format: str = DEFAULT_FORMAT,
                   params: tuple[int, ...] = (), name: str = "",
                   kernels: tuple[str, ...] = ()) -> SparseLinear:
        """Packs an ``nn.Linear`` (plain, or carrying ``torch.nn.utils.prune`` masks).

        The zeros already in the weight are dropped; with a prune mask, the masked entries are.

        Args:
            format: a name from ``sparseprune.formats.FORMATS`` ("sell", "csr", ...).
            params: the format's parameters (e.g. block r, c), () where it has none.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"SparseLinear.from_dense {name!r}: expected nn.Linear, got "
                            f"{type(linear).__name__}")
        if format not in FORMATS:
            raise ValueError(f"SparseLinear.from_dense {name!r}: unknown format {format!r} "
                             f"(known: {sorted(FORMATS)})")
        weight = effective_weight(linear)
        if weight.device.type != "cpu":
            raise ValueError(f"SparseLinear.from_dense {name!r}: the layer is on {weight.device}; "
                             "sparseprune kernels run on CPU (call .cpu() first)")
        packed = FORMATS[format].from_dense(weight, params=params, name=name or "weight")
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                    weight=packed, name=name, kernels=kernels)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The common case (2-D float32 CPU input with contiguous rows, no autograd, eager) goes
        # straight to the kernel: every no-op tensor call costs ~0.2-2 us from Python, and a
        # small layer's whole kernel takes a few.
        if (type(x) is torch.Tensor and x.dtype is torch.float32 and x.dim() == 2
                and x.shape[1] == self.in_features and x.is_cpu and not x.requires_grad
                and (x.stride(1) == 1 or x.shape[1] <= 1) and not ops.is_tracing()):
            try:
                return self._run(x)
            except RuntimeError:
                if not ops.is_functorch_wrapped(x):  # checked only here: free on the fast path
                    raise
        return self._forward_general(x)

    def _run(self, x2: torch.Tensor) -> torch.Tensor:
        """x2: [B, in_features] float32 CPU with contiguous rows; eager mode."""
        if x2.stride(0) < x2.shape[1] and x2.shape[0] > 1:
            x2 = x2.contiguous()  # overlapping rows (e.g. expanded): the kernel needs real rows
        y, nonfinite = ops.linear_numpy(self.__dict__["_packed_weight"].native, x2.numpy(),
                                        self._bias_numpy(), self._plan())
        if nonfinite:
            # Dense torch spreads a NaN/Inf input through the pruned zeros too (0 * Inf = NaN);
            # the kernel skips those zeros. Redo those rows densely so results match torch.
            bad_rows = ~torch.isfinite(x2).all(dim=1)
            with torch.autocast("cpu", enabled=False):  # float32 like the kernel's rows
                y[bad_rows] = F.linear(x2[bad_rows], self.weight.to_dense(), self._bias())
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
        if (x.requires_grad and torch.is_grad_enabled()) or ops.is_functorch_wrapped(x):
            # Autograd and torch.func transforms (vmap, grad) run densely with the same weight.
            w = self.weight.to_dense().to(x.dtype)
            b = self.bias
            return F.linear(x, w, None if b is None else b.to(x.dtype))
        x2 = x.reshape(-1, self.in_features).to(torch.float32).contiguous()
        if ops.is_tracing():
            w = self.weight
            y = ops.linear(x2, w.FORMAT_ID, w.shape, w.params, self._traced_tensors(),
                           self._bias())
        else:
            y = self._run(x2)
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        w = self.weight
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, sparsity={w.sparsity:.3f}, format={w.NAME}"
                f"{w.params if w.params else ''}, nbytes={w.nbytes}")
