"""Criteria: a score per weight, higher = more important.

A criterion is any callable ``(module, ctx) -> scores`` where ``scores`` is a float tensor shaped
like the parameter being pruned. ``ctx`` (:class:`Context`) carries the effective weight, the mask
so far, and calibration statistics when the criterion declares it needs them through a
``requires`` attribute (``{"activations"}`` for Wanda, ``{"gradients"}`` for Taylor).
:func:`sparseprune.prune` overrides the scores of already-pruned weights with ``-inf``, so a
criterion does not need to care about them.

Structure-level criteria (L1 / L2 over a block or channel) come from the pattern summing element
scores over the structure: ``l1`` scores ``|w|`` (the sum is the L1 norm), ``l2`` scores ``w**2``
(the sum is the squared L2 norm, same order as the norm).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ._checks import unknown_name
from .sparsegpt import SparseGPT

__all__ = [
    "CRITERIA",
    "Context",
    "Criterion",
    "L1",
    "L2",
    "Magnitude",
    "Random",
    "SparseGPT",
    "Taylor",
    "Wanda",
    "get_criterion",
    "requirements",
    "wanda_input_norms",
]

Criterion = Callable[[nn.Module, "Context"], Tensor]


@dataclass
class Context:
    """What a criterion may use besides the module.

    Attributes:
        name: qualified module name in the model (``"features.0"``), for messages.
        param: name of the parameter being scored (``"weight"``).
        weight: effective weight ``orig * mask``, detached, shaped like the parameter.
        mask: bool keep-mask so far, shaped like the parameter.
        act_norms: Wanda's ``‖x_j‖₂`` per input channel, [in_features] for Linear, [in_channels]
            for ConvNd, float64; None unless the criterion requires ``"activations"``.
        grad: mean over calibration batches of ``∂L/∂w`` (w.r.t. the effective weight, zero where
            masked), shaped like the parameter; None unless it requires ``"gradients"``.
        generator: seeded CPU generator for random criteria.
    """

    name: str
    param: str
    weight: Tensor
    mask: Tensor
    act_norms: Tensor | None = None
    grad: Tensor | None = None
    generator: torch.Generator | None = None


class Magnitude:
    """``|w|`` (Han et al., NeurIPS 2015). Equals ``torch.nn.utils.prune.L1Unstructured``."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, module: nn.Module, ctx: Context) -> Tensor:
        return ctx.weight.abs()


class L1(Magnitude):
    """``|w|``; summed over a block or channel by the pattern, the structure's L1 norm."""


class L2:
    """``w**2``; summed over a block or channel by the pattern, the squared L2 norm."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, module: nn.Module, ctx: Context) -> Tensor:
        return ctx.weight.square()


class Taylor:
    """First-order Taylor importance ``|w · ḡ|``, ``ḡ`` = mean gradient over calibration batches.

    The loss change from zeroing ``w`` is about ``-w · ∂L/∂w`` (Molchanov et al., "Importance
    Estimation for Neural Network Pruning", CVPR 2019, per weight). Needs ``calibration`` batches
    ``(inputs, targets)`` and a ``loss_fn(outputs, targets)``.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"gradients"})

    def __call__(self, module: nn.Module, ctx: Context) -> Tensor:
        if ctx.grad is None:
            raise ValueError(
                f"the taylor criterion needs gradients for layer {ctx.name!r}: pass "
                "calibration=[(inputs, targets), ...] and loss_fn=..."
            )
        return (ctx.weight * ctx.grad.to(ctx.weight.dtype)).abs()


def wanda_input_norms(module: nn.Module, weight: Tensor, norms: Tensor, name: str = "") -> Tensor:
    """Broadcast per-input-channel norms to the weight's shape.

    Args:
        module: the layer; ConvNd groups are honoured.
        weight: [O, I] (Linear or any 2-D weight) or [O, C/groups, *kernel] (ConvNd).
        norms: [I] or [C], ``‖x_j‖₂`` over all calibration rows / positions.
        name: layer name for the error message.

    Returns:
        float tensor shaped like ``weight``. For a conv, input channel ``c`` has one norm over
        all positions, shared by its kernel offsets (the im2col column norm up to border effects).
    """
    if isinstance(module, nn.modules.conv._ConvNd) and weight.dim() >= 3:
        groups = module.groups
        out_ch, c_per_group = weight.shape[0], weight.shape[1]
        if norms.numel() != groups * c_per_group:
            raise ValueError(f"layer {name!r}: {norms.numel()} input-channel norms for a conv "
                             f"with {groups * c_per_group} input channels")
        per_group = norms.reshape(groups, c_per_group)
        group_of_out = torch.arange(out_ch, device=norms.device) // (out_ch // groups)
        per_out = per_group[group_of_out]  # [O, C/groups]
        return per_out.reshape(*per_out.shape, *([1] * (weight.dim() - 2))).expand_as(weight)
    if weight.dim() == 2 and norms.numel() == weight.shape[1]:
        return norms.reshape(1, -1).expand_as(weight)
    raise TypeError(
        f"wanda: cannot map {norms.numel()} input norms of layer {name!r} "
        f"({type(module).__name__}) onto a weight of shape {list(weight.shape)}; "
        "wanda supports Linear-like [O, I] weights and ConvNd"
    )


class Wanda:
    """``|w_ij| · ‖x_j‖₂`` with ``x_j`` the j-th input over all calibration rows.

    Sun et al., "A Simple and Effective Pruning Approach for Large Language Models" (ICLR 2024).
    Scores are compared within each output row by default (``scope="row"``, the paper's
    comparison group; per layer or global ranks mix rows and layers whose inputs have different
    scales). Inputs are gathered with forward pre-hooks in one pass of the current (masked)
    model; ``prune(..., sequential=True)`` gathers them layer by layer through the pruned
    predecessors instead, as in the paper.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"activations"})
    default_scope: ClassVar[str] = "row"

    def __call__(self, module: nn.Module, ctx: Context) -> Tensor:
        if ctx.act_norms is None:
            raise ValueError(
                f"the wanda criterion needs calibration activations for layer {ctx.name!r}: "
                "pass calibration=[inputs, ...] (a list or DataLoader of batches)"
            )
        norms = wanda_input_norms(module, ctx.weight, ctx.act_norms, ctx.name)
        return ctx.weight.abs() * norms.to(ctx.weight.dtype)


class Random:
    """Uniform random scores, the control every pruning paper reports. Seeded by ``seed``."""

    requires: ClassVar[frozenset[str]] = frozenset()

    def __call__(self, module: nn.Module, ctx: Context) -> Tensor:
        # Drawn on the CPU generator, then moved: the same seed gives the same mask on any device.
        scores = torch.rand(ctx.weight.shape, generator=ctx.generator, dtype=torch.float64)
        return scores.to(ctx.weight.device)


CRITERIA: dict[str, type] = {
    "magnitude": Magnitude,
    "l1": L1,
    "l2": L2,
    "taylor": Taylor,
    "wanda": Wanda,
    "sparsegpt": SparseGPT,
    "random": Random,
}


def get_criterion(spec: str | Criterion) -> Criterion:
    """A criterion from a :data:`CRITERIA` name, or ``spec`` itself if callable.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in CRITERIA:
            raise unknown_name("criterion", spec, CRITERIA)
        return CRITERIA[key]()
    if not callable(spec):
        raise TypeError(f"criterion must be a name ({', '.join(CRITERIA)}) or a callable "
                        f"(module, ctx) -> scores; got {type(spec).__name__}")
    return spec


def requirements(criterion: Criterion) -> frozenset[str]:
    """What calibration data a criterion needs: a subset of {"activations", "gradients",
    "hessian"} (``"hessian"``: a reconstructing criterion such as :class:`SparseGPT`)."""
    needs = frozenset(getattr(criterion, "requires", frozenset()))
    unknown = needs - {"activations", "gradients", "hessian"}
    if unknown:
        raise ValueError(f"criterion {criterion!r} requires unknown data {sorted(unknown)}; "
                         "known: 'activations', 'gradients', 'hessian'")
    return needs
