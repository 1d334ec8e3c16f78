"""How ``convert`` handles ``nn.Conv2d``: the converter registered for it (packed formats the
conv kernels run, the dense reference, measuring inputs at a batch size, the cost model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from . import choose as _choose
from ._weights import effective_weight
from .convert import register_converter
from .nn import SparseConv2d
from .nn.conv import CONV_FORMATS

# Without a measurement a conv is packed only from this sparsity on: dense convolution runs
# near the machine's peak (oneDNN), so the sparse kernel must skip most of the work to win
# (measured on Zen 4, 3x3 at batch 1: 1.56x at 70 %, below 1x around 50 %; bench/RESULTS.md).
COST_MODEL_MIN_SPARSITY = 0.65
# The same for r x 1 block masks (r >= 4), which run near the FMA peak: 2.7-3x at 70 %.
COST_MODEL_MIN_BLOCK_SPARSITY = 0.5
# Fewer filter taps than this per output channel (a depthwise 3x3 has 9) leave the kernel
# nothing to vectorize over but one short run per tap; dense wins there.
COST_MODEL_MIN_TAPS = 32


def _dense(module: nn.Conv2d):
    w = effective_weight(module)
    b = module.bias.detach() if module.bias is not None else None
    return lambda x: module._conv_forward(x, w, b)


def _at_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """The captured [N, C, H, W] input with N = batch (its images repeated as needed)."""
    x = x.float()
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.shape[0] == 0:
        return torch.randn(batch, *x.shape[1:])
    return x[torch.arange(batch) % x.shape[0]].contiguous()


def _batch_of(x: torch.Tensor) -> int:
    return 1 if x.dim() == 3 else int(x.shape[0])


def _context(module: nn.Conv2d, x: torch.Tensor) -> tuple:
    # The speed depends on the input size and the geometry, not only the filter's mask.
    return ("conv2d", *x.shape[-3:], *module.kernel_size, *module.stride, str(module.padding),
            *module.dilation, module.groups, module.padding_mode)


def _accepts(module: nn.Conv2d, cand: _choose.Candidate) -> bool:
    """CSR always; BSR when its blocks are r x 1 (r output channels of one tap) and never
    straddle two groups."""
    if cand.format == "bsr":
        r, c = cand.params
        return c == 1 and r > 1 and (module.out_channels // module.groups) % r == 0
    return cand.format in CONV_FORMATS


def _cost(module: nn.Conv2d, cands: Sequence[_choose.Candidate], keep: torch.Tensor,
          min_sparsity: float) -> _choose.Candidate:
    sparsity = 1.0 - float(keep.sum()) / keep.numel() if keep.numel() else 1.0
    if keep.shape[1] < COST_MODEL_MIN_TAPS or sparsity < min_sparsity:
        return _choose.Candidate(_choose.DENSE)
    # r x 1 blocks feed r FMAs per input load (FMA-bound): they pay from lower sparsity.
    blocks = [c for c in cands if c.format == "bsr" and c.params[0] >= 4]
    if blocks and sparsity >= COST_MODEL_MIN_BLOCK_SPARSITY:
        return blocks[0]
    csr = [c for c in cands if c.format == "csr"]
    if csr and sparsity >= COST_MODEL_MIN_SPARSITY:
        return csr[0]
    return _choose.Candidate(_choose.DENSE)


@register_converter(nn.Conv2d, dense=_dense, formats=CONV_FORMATS, at_batch=_at_batch,
                    batch_of=_batch_of, context=_context, cost=_cost, accepts=_accepts)
def _conv_to_sparse(module: nn.Conv2d, name: str, cand: _choose.Candidate) -> nn.Module:
    return SparseConv2d.from_dense(module, format=cand.format, params=cand.params, name=name)


def foldable_pairs(model: nn.Module, names: list[str]) -> dict[str, str]:
    """{conv name: eval-mode BatchNorm2d name} that can fold into the packed conv."""
    # Imported here: the fx machinery is only needed when a model has BatchNorms to fold.
    from .structured.fold import conv_bn_pairs
    from .structured.graph import StructuredTraceError

    if not any(isinstance(m, nn.BatchNorm2d) and not m.training for m in model.modules()):
        return {}
    try:
        pairs = conv_bn_pairs(model, prune_masks_ok=True)
    except StructuredTraceError:
        return {}  # untraceable: nothing is known to be safe to fold
    return {c: b for c, b in pairs.items()
            if c in names and type(model.get_submodule(c)) is nn.Conv2d
            and isinstance(model.get_submodule(b), nn.BatchNorm2d)
            and not model.get_submodule(b).training}


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A plain conv computing bn(conv(x)) in eval mode, from the conv's effective (masked)
    weight: pruned zeros stay zeros (each output channel is only scaled)."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    weight = effective_weight(conv).to(torch.float32)
    bias = conv.bias.detach().to(torch.float32) if conv.bias is not None else None
    w, b = fuse_conv_bn_weights(weight, bias, bn.running_mean, bn.running_var, bn.eps,
                                bn.weight, bn.bias)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, True, conv.padding_mode)
    with torch.no_grad():
        out.weight.copy_(torch.where(weight == 0, torch.zeros(()), w.detach()))
        out.bias.copy_(b.detach())
    return out.eval()
