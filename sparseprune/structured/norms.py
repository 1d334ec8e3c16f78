"""LayerNorm over pruned channels, exactly: statistics still count the removed channels.

In the masked model (the original with every removed slice zeroed) a removed channel reaches a
LayerNorm as an exact zero, and the norm's mean and variance are taken over all ``C`` channels,
zeros included. A plain LayerNorm cut to the ``k`` kept channels would average over ``k``
instead and change every output. :class:`PrunedLayerNorm` keeps the original count: with
``r = k / C`` and ``mean_k, var_k`` the statistics of the kept channels,

    mean_C = r * mean_k        var_C = r * var_k + r * (1 - r) * mean_k ** 2

which is what the masked model computes. ``counted_layer_norm`` computes it as the masked model
does, in one fused ``F.layer_norm`` over the input padded back with the zeros (``var_mean`` and
the formula above ran ~9x slower on a CPU), and copies the kept channels out.
The surgery swaps a shrunk ``nn.LayerNorm`` (or a LayerNorm-like module whose forward is only a
permute, ``F.layer_norm`` and the inverse permute, such as torchvision's ``LayerNorm2d``) to
this class; ``load_pruned`` does the same from the recorded ``full_width`` / ``channel_dim``.
Pruning is exact only while the removed channels' inputs are zero: ``plan`` checks that on the
masked model and keeps the width of any norm where they are not.
"""

# No ``from __future__ import annotations``: TorchScript reads these annotations.
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PrunedLayerNorm", "counted_layer_norm", "removed_input_max", "to_pruned_layer_norm"]


def counted_layer_norm(x: Tensor, full_width: int, weight: Optional[Tensor],  # noqa: UP045
                       bias: Optional[Tensor], eps: float, dim: int = -1) -> Tensor:  # noqa: UP045
    """Layer norm of ``x`` over ``dim`` (``k`` channels) as if ``full_width - k`` more
    channels held zeros.

    Args:
        x: any float tensor; ``x.shape[dim]`` is the kept width ``k`` (``k <= full_width``).
        full_width: the channel count the statistics are taken over.
        weight, bias: ``[k]`` affine parameters or None.
        eps: added to the variance.
        dim: the normalised dim (-1: channels last, 1: NCHW).

    Returns:
        A tensor like ``x``.
    """
    k = x.shape[dim]
    if full_width < k:
        raise ValueError("counted_layer_norm: full_width=" + str(full_width) + " is below the "
                         "input's " + str(k) + " channels along dim " + str(dim))
    if x.numel() == 0:  # no channels kept, or batch 0
        return x.clone()
    # The masked model's computation itself: the removed channels put back as zeros, one fused
    # F.layer_norm over all of them, the kept ones copied out into a tensor laid out like ``x``
    # (a slice would keep the padded tensor alive and break a later ``.view``). On a CPU this
    # takes 0.13 ms on a ViT-B norm (batch 1, 640 of 768 channels), where var_mean and five
    # elementwise ops took 0.9 ms and a plain LayerNorm of the kept width takes 0.06-0.10 ms.
    last = dim % x.dim() == x.dim() - 1
    xt = x if last else x.movedim(dim, -1)
    pad = [0, full_width - k]
    y = F.layer_norm(F.pad(xt, pad), [full_width],
                     None if weight is None else F.pad(weight, pad),
                     None if bias is None else F.pad(bias, pad), eps)[..., :k]
    return torch.empty_like(x).copy_(y if last else y.movedim(-1, dim))


class PrunedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over ``normalized_shape == (k,)`` kept channels whose statistics are
    those of the unpruned ``full_width`` channels, the removed ones being zero.

    Attributes (besides nn.LayerNorm's):
        full_width: channels before pruning (the count the mean and variance divide by).
        channel_dim: the normalised dim of the input: -1 (like nn.LayerNorm) or a positive dim
            (1 for NCHW, like torchvision's ``LayerNorm2d``).
    """

    def __init__(self, normalized_shape: int, full_width: int, *, channel_dim: int = -1,
                 eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine,
                         bias=bias, device=device, dtype=dtype)
        _check(self.normalized_shape, full_width, channel_dim)
        self.full_width = int(full_width)
        self.channel_dim = int(channel_dim)

    def forward(self, x: Tensor) -> Tensor:
        return counted_layer_norm(x, self.full_width, self.weight, self.bias, self.eps,
                                  self.channel_dim)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, full_width={self.full_width}, " \
               f"channel_dim={self.channel_dim}"


def _check(normalized_shape: tuple, full_width: object, channel_dim: object) -> None:
    if len(normalized_shape) != 1:
        raise ValueError(f"PrunedLayerNorm normalises one dim; got normalized_shape="
                         f"{tuple(normalized_shape)}")
    for name, v in (("full_width", full_width), ("channel_dim", channel_dim)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"PrunedLayerNorm {name} must be an int; got {v!r}")
    if full_width < normalized_shape[0] or full_width < 1:
        raise ValueError(f"PrunedLayerNorm full_width={full_width} must be >= 1 and >= the kept "
                         f"width {normalized_shape[0]}")
    if channel_dim == 0 or channel_dim < -1:
        raise ValueError(f"PrunedLayerNorm channel_dim must be -1 or a dim >= 1; got "
                         f"{channel_dim}")


def to_pruned_layer_norm(mod: nn.LayerNorm, width: int, full_width: int,
                         channel_dim: int) -> PrunedLayerNorm:
    """Turn ``mod`` (its weight and bias already ``[width]``) into a :class:`PrunedLayerNorm`
    in place (same object, parameters and hooks; its class changes) and return it."""
    shape = (int(width),)
    _check(shape, full_width, channel_dim)
    mod.__class__ = PrunedLayerNorm
    mod.normalized_shape = shape
    mod.full_width = int(full_width)
    mod.channel_dim = int(channel_dim)
    return mod


def removed_input_max(x: Tensor, dim: int, removed: Tensor) -> float:
    """Largest ``|x|`` over the ``removed`` channel indices of ``dim`` (0.0 when none): a
    pruned norm is exact only where this is 0 in the masked model."""
    if removed.numel() == 0 or x.numel() == 0:
        return 0.0
    return float(x.detach().index_select(dim % x.dim(), removed).abs().max())
