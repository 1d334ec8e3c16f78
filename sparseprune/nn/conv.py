"""``SparseConv2d``: an inference-time drop-in for ``nn.Conv2d`` whose filter is packed sparse and
run by direct sparse convolution (csrc/conv/conv_geometry.h: every kept tap is one contiguous
axpy over the output pixels; 1x1 convolutions read the input as it is)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._weights import effective_weight
from ..formats import FORMATS, PackedWeight
from ..formats.base import describe_tensor, is_small_cpu_int64
from .packed import PackedModule

__all__ = ["SparseConv2d", "CONV_FORMATS"]

# Formats whose native weight the convolution kernels take (the filter flattened to
# [out_channels, in_channels / groups * kh * kw]): CSR for any mask, BSR with r x 1 blocks (r
# output channels sharing each kept tap: one input load feeds r FMAs) for block masks.
CONV_FORMATS = ("csr", "bsr")
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
_MAX_PLANS = 4  # input sizes whose geometry a layer keeps


def _suggest_memory_format(x: torch.Tensor) -> torch.memory_format:
    try:  # torch's own rule (what its conv uses to lay out the output)
        from torch._prims_common import suggest_memory_format
    except ImportError:  # pragma: no cover - older torch
        return (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                else torch.contiguous_format)
    return suggest_memory_format(x)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def conv_pair(value, label: str, low: int, where: str) -> tuple[int, int]:
    """``value`` (an int or a pair of ints, each >= ``low``) as a pair; ValueError otherwise.

    Stricter than torch's ``_pair``, which passes any iterable through: a stride of length 1 or
    3 would build a layer whose every forward fails."""
    pair = (value, value) if _is_int(value) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2
            and all(_is_int(v) and v >= low for v in pair)):
        kind = "positive" if low >= 1 else "non-negative"
        raise ValueError(f"{where}: {label} must be a {kind} int or a pair of them, got "
                         f"{value!r}")
    return int(pair[0]), int(pair[1])


class SparseConv2d(PackedModule):
    """``conv2d(x, W) + b`` with W packed sparse (CSR, or BSR with r x 1 blocks, over the
    flattened filter) and run natively.

    Same arguments and output as ``nn.Conv2d`` (any kernel size, stride, padding including
    ``"same"`` / ``"valid"`` and non-zero padding modes, dilation, groups). Inference only: when
    autograd needs a gradient, forward falls back to ``F.conv2d`` with the unpacked filter.

    Inputs: ``[N, C, H, W]`` or ``[C, H, W]`` on CPU, any floating dtype (computed in float32,
    returned in the input's dtype), contiguous or channels_last (the output keeps the input's
    memory format, as ``nn.Conv2d``'s does; a channels_last input costs one layout copy each
    way). NaN / Inf inputs give exactly dense torch's result (such calls run densely). The
    geometry (tap offsets) is built once per input size and kept.

    Args:
        weight: the packed filter, shape [out_channels, in_channels / groups * kh * kw]; an
            all-zero CSR filter when omitted.
        name / kernels: see ``PackedModule``; ``kernels`` holds at most one name, a
            ``spconv`` row of ``sparseprune.ops.list_kernels()`` for the weight's format.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 weight: PackedWeight | None = None, name: str = "",
                 kernels: tuple[str, ...] = ()) -> None:
        where = f"SparseConv2d {name!r}" if name else "SparseConv2d"
        ks = conv_pair(kernel_size, "kernel_size", 1, where)
        st = conv_pair(stride, "stride", 1, where)
        dil = conv_pair(dilation, "dilation", 1, where)
        if not (_is_int(groups) and groups >= 1 and _is_int(in_channels) and in_channels >= 1
                and _is_int(out_channels) and out_channels >= 1
                and in_channels % groups == 0 and out_channels % groups == 0):
            raise ValueError(f"{where}: in_channels {in_channels} and out_channels "
                             f"{out_channels} must be positive multiples of groups {groups}")
        if not isinstance(padding_mode, str) or padding_mode not in _PADDING_MODES:
            raise ValueError(f"{where}: padding_mode must be one of {_PADDING_MODES}, got "
                             f"{padding_mode!r}")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"{where}: padding must be 'same', 'valid', an int or a pair, "
                                 f"got {padding!r}")
            if padding == "same" and st != (1, 1):
                raise ValueError(f"{where}: padding='same' needs stride 1, got {st}")
            pads = (0, 0, 0, 0)
            if padding == "same":  # torch's convention: the odd pixel goes after
                th, tw = dil[0] * (ks[0] - 1), dil[1] * (ks[1] - 1)
                pads = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
        else:
            padding = conv_pair(padding, "padding", 0, where)
            pads = (padding[0], padding[1], padding[0], padding[1])
        d = self.__dict__
        d.update(in_channels=in_channels, out_channels=out_channels, kernel_size=ks, stride=st,
                 padding=padding, dilation=dil, groups=groups, padding_mode=padding_mode)
        d["_pads"] = pads  # (top, left, bottom, right)
        if weight is None:
            weight = FORMATS["csr"].from_dense(torch.zeros(self._expected_shape(), device="cpu"))
        super().__init__(weight, out_channels if bias else None, name=name, kernels=kernels)

    _FIXED = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
              "groups", "padding_mode")

    def __setattr__(self, key, value):
        if key in self._FIXED and key in self.__dict__:
            raise AttributeError(f"{self._where()}: {key} is fixed (build a new layer with "
                                 "from_dense)")
        super().__setattr__(key, value)

    # --- PackedModule hooks ---
    _DERIVED = PackedModule._DERIVED + ("_conv_plans",)

    def _expected_shape(self) -> tuple[int, int]:
        kh, kw = self.kernel_size
        return (self.out_channels, self.in_channels // self.groups * kh * kw)

    def _where(self) -> str:
        label = f" {self.name!r}" if self.__dict__.get("name") else ""
        kh, kw = self.kernel_size
        return (f"SparseConv2d{label} [{self.out_channels}x{self.in_channels // self.groups}"
                f"x{kh}x{kw}]")

    def _set_weight(self, weight: PackedWeight) -> None:
        if isinstance(weight, PackedWeight):
            if weight.NAME not in CONV_FORMATS:
                raise ValueError(f"{self._where()}: convolutions run {CONV_FORMATS} filters, "
                                 f"not {weight.NAME}")
            if weight.NAME == "bsr":
                r, c = weight.params
                if c != 1 or (self.out_channels // self.groups) % r:
                    raise ValueError(
                        f"{self._where()}: conv blocks must be r x 1 with r dividing the "
                        f"{self.out_channels // self.groups} output channels per group, got "
                        f"{r}x{c}")
        super()._set_weight(weight)

    def _check_kernels(self, names: tuple[str, ...]) -> None:
        rows = {k["name"]: k for k in ops.list_kernels() if k["family"] == "spconv"}
        if len(names) > 1:
            raise ValueError(f"{self._where()}: kernels takes one convolution kernel, got "
                             f"{names}")
        for n in names:
            if n not in rows:
                raise ValueError(f"{self._where()}: {n!r} is not a convolution kernel (known: "
                                 f"{sorted(rows)})")
            row = rows[n]
            r = self.weight.params[0] if self.weight.NAME == "bsr" else 1
            if row["format"] != self.weight.NAME or row["nr"] not in (0, r):
                raise ValueError(f"{self._where()}: kernel {n!r} runs {row['format']} filters"
                                 f"{' of ' + str(row['nr']) + '-row blocks' if row['nr'] else ''}"
                                 f", not this {self.weight.NAME} filter")
            if not row["supported"]:
                raise ValueError(f"{self._where()}: kernel {n!r} needs {row['isa']}, which "
                                 "this CPU does not support")

    # --- persistence: the 4-D filter shape beside the packed [O, C/groups * kh * kw] one ---
    _FILTER_KEY = "filter_shape"

    def _filter_shape(self) -> list[int]:
        return [self.out_channels, self.in_channels // self.groups, *self.kernel_size]

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + self._FILTER_KEY] = torch.tensor(self._filter_shape())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        key = prefix + self._FILTER_KEY
        if key in state_dict:
            got = state_dict[key]
            if not is_small_cpu_int64(got, (4,)):
                raise ValueError(f"{self._where()}: state_dict's {self._FILTER_KEY} must be a "
                                 f"dense CPU int64 tensor of 4 entries, got {describe_tensor(got)}")
            if got.tolist() != self._filter_shape():
                raise ValueError(f"{self._where()}: state_dict holds a filter of shape "
                                 f"{got.tolist()}, not {self._filter_shape()}")
        elif strict:
            missing_keys.append(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        unexpected_keys[:] = [k for k in unexpected_keys if k != key]

    # --- construction ---
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, format: str = "csr", params: tuple[int, ...] = (),
                   name: str = "", kernels: tuple[str, ...] = ()) -> SparseConv2d:
        """Packs an ``nn.Conv2d`` (plain, or carrying ``torch.nn.utils.prune`` masks): the zeros
        already in its weight are dropped; with a prune mask, the masked entries are."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"SparseConv2d.from_dense {name!r}: expected nn.Conv2d, got "
                            f"{type(conv).__name__}")
        if format not in CONV_FORMATS:
            raise ValueError(f"SparseConv2d.from_dense {name!r}: convolutions run "
                             f"{CONV_FORMATS} filters, not {format!r}")
        weight = effective_weight(conv)
        if weight.device.type != "cpu":
            raise ValueError(f"SparseConv2d.from_dense {name!r}: the layer is on "
                             f"{weight.device}; sparseprune kernels run on CPU (call .cpu())")
        flat = weight.detach().to(torch.float32).reshape(conv.out_channels, -1)
        packed = FORMATS[format].from_dense(flat, params=params, name=name or "weight")
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode, weight=packed, name=name, kernels=kernels)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias.detach().to(torch.float32))
        return layer

    def to_dense(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the exact same filter and bias."""
        out = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                        self.padding, self.dilation, self.groups, self.bias is not None,
                        self.padding_mode)
        with torch.no_grad():
            out.weight.copy_(self.weight.to_dense().reshape(out.weight.shape))
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    # --- forward ---
    def _conv_args(self) -> tuple[int, ...]:
        """(kh, kw, stride_h, stride_w, dil_h, dil_w, groups, pad_top, pad_left, pad_bottom,
        pad_right) of the zero padding the kernel applies (0 when padding_mode pads first)."""
        pads = (0, 0, 0, 0) if self.padding_mode != "zeros" else self._pads
        return (*self.kernel_size, *self.stride, *self.dilation, self.groups, *pads)

    def _pre_pad(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros" or not any(self._pads):
            return x
        top, left, bottom, right = self._pads
        return F.pad(x, (left, right, top, bottom), mode=self.padding_mode)

    def _plan_for(self, c: int, h: int, w: int) -> object:
        cached = self.__dict__.get("_conv_plans")
        if cached is None or cached[0] is not self.weight or cached[1] != self.kernels:
            cached = self.__dict__["_conv_plans"] = (self.weight, self.kernels, {})
        plans = cached[2]
        plan = plans.get((c, h, w))
        if plan is None:
            try:
                plan = ops.make_conv_plan(self.weight.native, (c, h, w, *self._conv_args()),
                                          self.kernels[0] if self.kernels else None)
            except ValueError as e:
                raise ValueError(f"{self._where()}: input [{c}, {h}, {w}]: {e}") from None
            if len(plans) >= _MAX_PLANS:
                plans.pop(next(iter(plans)))
            plans[(c, h, w)] = plan
        return plan

    def _dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        kh, kw = self.kernel_size
        return self.weight.to_dense().reshape(self.out_channels, self.in_channels // self.groups,
                                              kh, kw).to(dtype)

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        """What ``nn.Conv2d`` computes, on x as given (its dtype and memory format)."""
        b = self.bias
        w = self._dense_weight(x.dtype)
        b = None if b is None else b.to(x.dtype)
        if self.padding_mode != "zeros":
            return F.conv2d(self._pre_pad(x), w, b, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        where = self._where()
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{where}: expected a tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{where}: expected a floating point input, got {x.dtype}")
        if not x.is_cpu:
            raise RuntimeError(f"{where}: input is on {x.device}; sparseprune kernels run on "
                               "CPU only (move the input with .cpu())")
        if x.dim() not in (3, 4) or x.shape[-3] != self.in_channels:
            raise ValueError(f"{where}: expected input [N, {self.in_channels}, H, W] or "
                             f"[{self.in_channels}, H, W], got {tuple(x.shape)}")
        if x.dim() == 3:
            return self.forward(x.unsqueeze(0)).squeeze(0)
        if (x.requires_grad and torch.is_grad_enabled()) or x.shape[0] == 0 or \
                ops.is_functorch_wrapped(x):
            return self._dense_forward(x)
        x32 = x.to(torch.float32)
        xp = self._pre_pad(x32)
        # The memory format F.conv2d gives its output: torch suggests it from the strides (a
        # channels_last slice counts too).
        channels_last = (xp.shape[1] > 1 and not xp.is_contiguous()
                         and _suggest_memory_format(xp) == torch.channels_last)
        xc = xp.contiguous()
        if ops.is_tracing():
            w = self.weight
            y = ops.conv2d(xc, w.FORMAT_ID, w.shape, w.params, self._traced_tensors(),
                           self._bias(), self._conv_args())
        else:
            plan = self._plan_for(*xc.shape[1:])
            y, nonfinite = ops.conv2d_numpy(plan, xc.numpy(), self._bias_numpy())
            if nonfinite:
                # Dense torch spreads NaN / Inf through the pruned zeros too (0 * Inf = NaN):
                # such calls run densely, on the input as given, for torch's exact result.
                with torch.autocast("cpu", enabled=False):  # float32, as the kernel computes
                    return self._dense_forward(x32).to(x.dtype)
        y = y.to(x.dtype)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y

    def extra_repr(self) -> str:
        w = self.weight
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", sparsity={w.sparsity:.3f}, format={w.NAME}, nbytes={w.nbytes}"
