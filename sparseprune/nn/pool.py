"""``MaxPool2d``: ``nn.MaxPool2d`` with a native NCHW kernel.

torch's CPU ``max_pool2d`` on a contiguous (NCHW) input runs a per-output loop that also tracks
indices: on a ResNet stem's ``[1, 64, 112, 112]`` map it takes ~4x longer than the same pool
on a channels_last copy and ~20x longer than this kernel, which computes each output row as a
vertical max of the window's input rows (vectorized over the width) and a horizontal max over
that (csrc/pool/). In a 90 %-sparse converted ResNet-18 that pool would otherwise be a large
share of the run time, so ``sparseprune.convert`` swaps it in.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import _C, ops

__all__ = ["MaxPool2d", "list_pool_kernels"]


def list_pool_kernels() -> list[dict]:
    """Every compiled max-pooling kernel: name, family ("pool"), isa, supported, default."""
    return _C.list_pool_kernels()


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling output size (the last window must start inside the input or its left
    padding)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (math.ceil(span / s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


class MaxPool2d(nn.MaxPool2d):
    """Same arguments, state and results as ``nn.MaxPool2d`` (it is one: isinstance checks,
    tracing and structured pruning see a MaxPool2d).

    The native kernel runs for float32 CPU inputs ``[N, C, H, W]`` / ``[C, H, W]`` that are
    contiguous (NCHW), without ``return_indices``, outside autograd and tracing; everything
    else (channels_last inputs, where torch is fast already; other dtypes; gradients;
    ``torch.compile`` / ``torch.export``) runs ``nn.MaxPool2d.forward``. Results are torch's,
    NaN propagation included.

    Args:
        kernel: a name from ``list_pool_kernels()`` to run instead of the default (tests).
    """

    def __init__(self, *args, kernel: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.kernel = kernel

    @classmethod
    def from_torch(cls, pool: nn.MaxPool2d) -> MaxPool2d:
        """The same pool (same arguments and training flag)."""
        if not isinstance(pool, nn.MaxPool2d):
            raise TypeError(f"MaxPool2d.from_torch: expected nn.MaxPool2d, got "
                            f"{type(pool).__name__}")
        new = cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation,
                  pool.return_indices, pool.ceil_mode)
        new.train(pool.training)
        return new

    def _native_ok(self, x: torch.Tensor) -> bool:
        return (not self.return_indices and isinstance(x, torch.Tensor)
                and x.dtype == torch.float32 and x.device.type == "cpu"
                and x.layout == torch.strided and x.dim() in (3, 4) and x.is_contiguous()
                and not (torch.is_grad_enabled() and x.requires_grad)
                and not ops.is_tracing() and not ops.is_functorch_wrapped(x))

    def forward(self, x: torch.Tensor):
        if not self._native_ok(x):
            return super().forward(x)
        kh, kw = _pair(self.kernel_size)
        sh, sw = _pair(self.stride if self.stride is not None else self.kernel_size)
        ph, pw = _pair(self.padding)
        dh, dw = _pair(self.dilation)
        h, w = x.shape[-2:]
        # torch's own argument checks (padding at most half the window, a positive output)
        # give its own errors: let it raise them.
        if ph > kh // 2 or pw > kw // 2 or 0 in x.shape[-2:]:
            return super().forward(x)
        oh = _out_size(h, kh, sh, ph, dh, self.ceil_mode)
        ow = _out_size(w, kw, sw, pw, dw, self.ceil_mode)
        if oh <= 0 or ow <= 0:
            return super().forward(x)
        lead = x.shape[:-2]
        planes = math.prod(lead)
        y = torch.empty(*lead, oh, ow)
        if planes:
            _C.max_pool2d(x.detach().reshape(planes, h, w).numpy(),
                          y.reshape(planes, oh, ow).numpy(),
                          (kh, kw, sh, sw, ph, pw, dh, dw), ops.get_num_threads(), self.kernel)
        return y
