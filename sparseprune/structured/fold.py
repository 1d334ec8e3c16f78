"""Fold inference-mode BatchNorm into the convolution before it.

After channel pruning, unfused BatchNorm is a large share of a small model's time (44 % of a
pruned MobileNetV2 at batch 32 on one core), because it is a full memory pass per layer.
``fold_batchnorm`` rewrites ``conv -> bn`` into one conv with adjusted weights and bias and replaces
the BatchNorm module by ``nn.Identity``, so the result is still the same plain module classes
(scriptable, exportable, savable with ``save_pruned``). Only for inference: the folded model uses
the running statistics, as an eval-mode model does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import fx, nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .._modules import deepcopy_model
from .graph import symbolic_trace

__all__ = ["FOLDED_ATTR", "conv_bn_pairs", "fold_batchnorm", "folded_batchnorms"]

# Root-module attribute recording {batchnorm name: conv name}; read by ``width_config``.
FOLDED_ATTR = "_sparseprune_folded_bn"

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
          nn.ConvTranspose3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def folded_batchnorms(model: nn.Module) -> dict[str, str]:
    """``{batchnorm name: conv name}`` of the BatchNorms folded into ``model`` so far, also
    those folded into its submodules (names relative to ``model``)."""
    out: dict[str, str] = {}
    for prefix, mod in model.named_modules():
        pre = f"{prefix}." if prefix else ""
        for bn, conv in getattr(mod, FOLDED_ATTR, {}).items():
            out[pre + bn] = pre + conv
    return out


def _only_prune_hooks(module: nn.Module) -> bool:
    """True when every forward pre-hook is a ``torch.nn.utils.prune`` mask (which recomputes
    ``weight`` from ``weight_orig * weight_mask``, nothing else)."""
    from torch.nn.utils.prune import BasePruningMethod

    return all(isinstance(h, BasePruningMethod) for h in module._forward_pre_hooks.values())


def _pairs(gm: fx.GraphModule, model: nn.Module, prune_masks_ok: bool = False
           ) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names where the conv's only use is the BatchNorm's input.

    ``prune_masks_ok``: a conv carrying ``torch.nn.utils.prune`` masks still pairs (for callers
    that fold into the effective weight themselves, as ``convert`` does)."""
    calls: dict[str, int] = {}
    touched: set[str] = set()  # modules whose tensors forward reads directly
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
        elif node.op == "get_attr":
            touched.add(str(node.target).rpartition(".")[0])
    names: dict[int, int] = {}  # a module reachable under two names: folding one is unsafe
    for _, mod in model.named_modules(remove_duplicate=False):
        names[id(mod)] = names.get(id(mod), 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _NORMS):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = model.get_submodule(src.target)
        bn = model.get_submodule(node.target)
        transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
        if (
            isinstance(conv, _CONVS)
            and not (transposed and conv.groups != 1)  # weight [in, out/g, ...]: no fold
            and calls[src.target] == 1
            and calls[node.target] == 1
            and names[id(conv)] == 1
            and names[id(bn)] == 1
            and not touched & {str(src.target), str(node.target)}
            and not parametrize.is_parametrized(conv)
            and bn.running_mean is not None
            and bn.num_features == conv.out_channels
            # torch.nn.utils.prune masks recompute weight: only callers that fold into the
            # masked weight themselves may accept them.
            and (not conv._forward_pre_hooks or (prune_masks_ok and _only_prune_hooks(conv)))
            and not conv._forward_hooks
            and not bn._forward_pre_hooks
            and not bn._forward_hooks
        ):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def conv_bn_pairs(model: nn.Module, *, prune_masks_ok: bool = False,
                  leaf_modules: Sequence[type] = ()) -> dict[str, str]:
    """``{conv name: batchnorm name}`` of the pairs ``fold_batchnorm`` would fold (see there);
    with ``prune_masks_ok``, convs under ``torch.nn.utils.prune`` masks count too.

    Raises:
        StructuredTraceError: ``torch.fx`` cannot trace the model.
    """
    gm = symbolic_trace(model, leaf_modules)
    return dict(_pairs(gm, model, prune_masks_ok))


def _set_module(model: nn.Module, name: str, value: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, value)


def fold_batchnorm(
    model: nn.Module, *, inplace: bool = False, leaf_modules: Sequence[type] = ()
) -> nn.Module:
    """Fold every BatchNorm that directly follows a conv into that conv; for inference.

    A pair is folded when the conv (Conv1d/2d/3d, or an ungrouped ConvTranspose) feeds only the
    BatchNorm, both are called once in ``forward`` and reachable under one name, ``forward`` reads
    none of their tensors directly, the BatchNorm tracks running statistics, and no hooks (such as
    ``torch.nn.utils.prune`` masks) or parametrizations sit on them. The BatchNorm becomes
    ``nn.Identity`` and the conv gains a bias if it had none. Other BatchNorms stay.

    Args:
        model: the model; traced with ``torch.fx`` (not modified unless ``inplace``).
        inplace: fold into ``model`` itself instead of a deep copy.
        leaf_modules: module types not to trace into (as in ``plan``).

    Returns:
        The model in eval mode; ``folded_batchnorms(result)`` lists what was folded.

    Raises:
        StructuredTraceError: ``torch.fx`` cannot trace the model.
    """
    out = model if inplace else deepcopy_model(model)
    gm = symbolic_trace(out, leaf_modules)
    folded = dict(getattr(out, FOLDED_ATTR, {}))
    with torch.no_grad():
        for conv_name, bn_name in _pairs(gm, out):
            conv, bn = out.get_submodule(conv_name), out.get_submodule(bn_name)
            weight, bias = fuse_conv_bn_weights(
                conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                bn.bias, transpose=isinstance(conv, nn.modules.conv._ConvTransposeNd),
            )
            conv.weight = nn.Parameter(weight.detach(), conv.weight.requires_grad)
            conv.bias = nn.Parameter(bias.detach(), conv.weight.requires_grad)
            _set_module(out, bn_name, nn.Identity())
            folded[bn_name] = conv_name
    setattr(out, FOLDED_ATTR, folded)
    return out.eval()
