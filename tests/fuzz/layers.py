"""The valid packed layers the fuzzers start from, and the oracles that judge a loaded one.

Every format and every layer kind the library packs has one small configuration here (small, so
a case costs well under a millisecond): ``SparseLinear`` 10x13 as CSR, SELL, 2:4 (the last group
of 4 inputs is short), BSR 4x1 (the last block row is short) and BSR 1x4 (the last block column
is short), and ``SparseConv2d`` as CSR (3x3, groups 2, padding 1) and BSR 4x1 (3x2, stride 2x1).

A loaded layer is judged twice: :func:`reference_dense` rebuilds the dense weight from the
buffers it was loaded from with an independent, pure-Python decoder that also checks every
invariant of the format (so a layer that accepted invalid data, or read valid data differently,
shows up), and :func:`check_forward` compares the layer's output on a random input with dense
torch on the layer's own ``to_dense()`` weight.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from sparseprune import SparseConv2d, SparseLinear

# label -> (format, params); SparseLinear 10x13 for all of them.
LINEAR = {"csr": ("csr", ()), "sell": ("sell", ()), "nm2:4": ("nm", (2, 4)),
          "bsr4x1": ("bsr", (4, 1)), "bsr1x4": ("bsr", (1, 4))}
# label -> (format, params, nn.Conv2d arguments)
CONV = {"conv-csr": ("csr", (), dict(in_channels=4, out_channels=8, kernel_size=3, padding=1,
                                     groups=2)),
        "conv-bsr4x1": ("bsr", (4, 1), dict(in_channels=4, out_channels=8, kernel_size=(3, 2),
                                            stride=(2, 1), padding=(1, 0)))}
LABELS = (*LINEAR, *CONV)
LINEAR_SHAPE = (10, 13)
CONV_INPUT_HW = (9, 8)


class Invalid(Exception):
    """The reference decoder found buffers that break the format's invariants."""


def sparse_mask(gen: torch.Generator, rows: int, cols: int, fmt: str,
                params: tuple[int, ...]) -> torch.Tensor:
    """A keep-mask that fits ``fmt``: ~40 % unstructured, at most n of every m (some groups
    fewer, so padding slots exist), or half the r x c blocks; row 1 is always empty."""
    keep = torch.rand(rows, cols, generator=gen) < 0.4
    if fmt == "nm":
        n, m = params
        groups = -(-cols // m)
        score = torch.zeros(rows, groups * m)
        score[:, :cols] = torch.rand(rows, cols, generator=gen) + 1
        top = score.reshape(rows, groups, m).topk(n, dim=-1).indices
        keep = torch.zeros(rows, groups, m, dtype=torch.bool).scatter_(-1, top, True)
        keep = keep.reshape(rows, groups * m)[:, :cols]
        keep &= torch.rand(rows, cols, generator=gen) < 0.8
    elif fmt == "bsr":
        r, c = params
        blocks = torch.rand(-(-rows // r), -(-cols // c), generator=gen) < 0.5
        keep = blocks.repeat_interleave(r, 0).repeat_interleave(c, 1)[:rows, :cols]
        keep &= torch.rand(rows, cols, generator=gen) < 0.75
    keep[1] = False
    return keep


def make_layer(label: str, gen: torch.Generator) -> SparseLinear | SparseConv2d:
    """The valid packed layer of ``label`` (eval mode), with random weights and bias."""
    if label in LINEAR:
        fmt, params = LINEAR[label]
        rows, cols = LINEAR_SHAPE
        dense = nn.Linear(cols, rows)
        make = SparseLinear.from_dense
    else:
        fmt, params, args = CONV[label]
        dense = nn.Conv2d(**args)
        make = SparseConv2d.from_dense
    with torch.no_grad():
        w = torch.randn(dense.weight.shape, generator=gen)
        flat = w.reshape(w.shape[0], -1)
        flat *= sparse_mask(gen, *flat.shape, fmt, params)
        dense.weight.copy_(w)
        dense.bias.copy_(torch.randn(dense.bias.shape, generator=gen))
    return make(dense, format=fmt, params=params).eval()


def fresh_like(layer: nn.Module) -> SparseLinear | SparseConv2d:
    """An empty layer of the same configuration (what a state_dict is loaded into)."""
    if isinstance(layer, SparseLinear):
        return SparseLinear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    return SparseConv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                        layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                        layer.padding_mode)


def make_input(layer: nn.Module, gen: torch.Generator) -> torch.Tensor:
    """A random input for ``layer``: [3, in_features], or [2, C, 9, 8] for a convolution."""
    if isinstance(layer, SparseLinear):
        return torch.randn(3, layer.in_features, generator=gen)
    return torch.randn(2, layer.in_channels, *CONV_INPUT_HW, generator=gen)


def _outcome(fn) -> object:
    try:
        return fn()
    except Exception as err:  # compared by type with the other side's outcome
        return err


def check_forward(layer: nn.Module, gen: torch.Generator) -> str | None:
    """None when ``layer(x)`` equals dense torch on ``layer.to_dense()`` (1e-4; NaN where NaN),
    or, when dense torch raises, the layer raises the same exception type; else what differs."""
    x = make_input(layer, gen)
    dense = layer.to_dense()
    with torch.no_grad():
        if isinstance(layer, SparseLinear):
            ref = _outcome(lambda: F.linear(x, dense.weight, layer.bias))
        elif layer.padding_mode != "zeros":
            ref = _outcome(lambda: dense(x))  # nn.Conv2d pads x itself, then runs unpadded
        else:
            ref = _outcome(lambda: conv_reference(x, dense.weight, layer.bias, layer))
        got = _outcome(lambda: layer(x))
    if isinstance(ref, Exception) or isinstance(got, Exception):
        if type(ref) is type(got):
            return None
        return f"forward: layer gave {_short(got)}, dense torch {_short(ref)}"
    try:
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4, equal_nan=True)
    except AssertionError as err:
        return "forward differs from dense: " + " ".join(str(err).split())[:300]
    return None


def conv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   geometry: nn.Module) -> torch.Tensor:
    """The zero-padded convolution of ``geometry`` (a conv layer's kernel size, stride, padding,
    dilation, groups): ``F.conv2d`` for a finite filter.

    With a NaN / Inf tap, torch's own padded convolution depends on the algorithm it picks
    (oneDNN skips the padding and gives a finite border, the im2col path multiplies it:
    Inf * 0 = NaN; a Winograd transform would spread the NaN over whole tiles), so such a filter
    is applied tap by tap instead, as elementwise float64 products and sums over explicitly
    zero-padded input: the IEEE result, which the sparse kernels must give."""
    if bool(torch.isfinite(weight).all()):
        return F.conv2d(x, weight, bias, geometry.stride, geometry.padding, geometry.dilation,
                        geometry.groups)
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel_size, geometry.stride, geometry.dilation
    if geometry.padding == "valid":
        pads = (0, 0, 0, 0)
    elif geometry.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = geometry.padding
        pads = (pw, pw, ph, ph)
    xp = F.pad(x.double(), pads)
    oh = (xp.shape[2] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - dw * (kw - 1) - 1) // sw + 1
    groups, out = geometry.groups, weight.shape[0]
    cin = weight.shape[1]
    y = torch.zeros(x.shape[0], out, oh, ow, dtype=torch.float64)
    for g in range(groups):
        o, c = slice(g * out // groups, (g + 1) * out // groups), slice(g * cin, (g + 1) * cin)
        for i in range(kh):
            for j in range(kw):
                tap = xp[:, c, i * dh:i * dh + sh * (oh - 1) + 1:sh,
                         j * dw:j * dw + sw * (ow - 1) + 1:sw]  # [N, C/g, oh, ow]
                w = weight[o, :, i, j].double()  # [O/g, C/g]
                y[:, o] += (tap[:, None] * w[None, :, :, None, None]).sum(2)
    if bias is not None:
        y += bias.double()[None, :, None, None]
    return y.float()


def same_dense(got: torch.Tensor, want: torch.Tensor) -> str | None:
    """None when two dense weights are bit-equal (NaN where NaN, -0.0 == 0.0)."""
    try:
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    except AssertionError as err:
        return " ".join(str(err).split())[:300]
    return None


def _short(x: object) -> str:
    if isinstance(x, Exception):
        return f"{type(x).__name__}({str(x).splitlines()[0][:120] if str(x) else ''})"
    return f"a {tuple(x.shape)} result" if isinstance(x, torch.Tensor) else repr(x)


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise Invalid(what)


def _ints(t: torch.Tensor) -> list[int]:
    return [int(v) for v in t.to(torch.int64).tolist()]


def reference_dense(fmt: str, shape: tuple[int, int], params: tuple[int, ...],
                    tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The dense [rows, cols] float32 weight the canonical buffers describe, decoded entry by
    entry in Python; raises :class:`Invalid` naming the first broken invariant."""
    rows, cols = shape
    _need(rows * cols <= 1 << 16, f"shape {shape} is far beyond the fuzzed layers")
    for name, t in tensors.items():
        _need(isinstance(t, torch.Tensor) and t.dim() == 1 and t.layout == torch.strided
              and t.device.type == "cpu" and t.numel() <= 1 << 16, f"{name} is not a small "
              "1-D dense CPU tensor")
    dense = torch.zeros(rows, cols, dtype=torch.float32)
    if fmt in ("csr", "sell"):
        ptr, col = _ints(tensors["row_ptr"]), _ints(tensors["col_idx"])
        val = tensors["values"].to(torch.float32)
        _need(tensors["col_idx"].dtype == (torch.uint16 if cols <= 1 << 16 else torch.int32),
              "col_idx dtype")
        _need(len(ptr) == rows + 1 and ptr[0] == 0 and ptr[-1] == len(col) == len(val),
              f"row_ptr ends {ptr[:1]}..{ptr[-1:]} for {len(col)} columns")
        for r in range(rows):
            _need(ptr[r] <= ptr[r + 1], f"row_ptr decreases at row {r}")
            cs = col[ptr[r]:ptr[r + 1]]
            _need(all(0 <= c < cols for c in cs) and all(a < b for a, b in pairwise(cs)),
                  f"row {r} columns {cs} not sorted, unique and < {cols}")
            for j, c in enumerate(cs, ptr[r]):
                dense[r, c] = val[j]
    elif fmt == "nm":
        n, m = params
        groups = -(-cols // m)
        pos, val = _ints(tensors["pos"]), tensors["values"]
        _need(len(pos) == len(val) == rows * groups * n, "pos / values length")
        for s in range(0, len(pos), n):
            r, g = divmod(s // n, groups)
            ps = pos[s:s + n]
            _need(all(0 <= p < m for p in ps) and all(a < b for a, b in pairwise(ps)),
                  f"row {r} group {g} positions {ps}")
            for j, p in enumerate(ps, s):
                c = g * m + p
                if c < cols:
                    dense[r, c] = val[j]
                else:
                    _need(bool(val[j] == 0), f"row {r}: a slot past the last column holds "
                          f"{float(val[j])}")
    elif fmt == "bsr":
        br_, bc_ = params
        brows, bcols = -(-rows // br_), -(-cols // bc_)
        ptr, bcol, val = (_ints(tensors["block_row_ptr"]), _ints(tensors["block_col"]),
                          tensors["values"])
        _need(tensors["block_col"].dtype == torch.int32, "block_col dtype")
        _need(len(ptr) == brows + 1 and ptr[0] == 0 and ptr[-1] == len(bcol)
              and len(val) == len(bcol) * br_ * bc_, "block_row_ptr / values length")
        for i in range(brows):
            _need(ptr[i] <= ptr[i + 1], f"block_row_ptr decreases at {i}")
            bs = bcol[ptr[i]:ptr[i + 1]]
            _need(all(0 <= b < bcols for b in bs) and all(a < b for a, b in pairwise(bs)),
                  f"block row {i} columns {bs}")
            for j, b in enumerate(bs, ptr[i]):
                block = val[j * br_ * bc_:(j + 1) * br_ * bc_].reshape(br_, bc_)
                for a in range(br_):
                    for e in range(bc_):
                        r, c = i * br_ + a, b * bc_ + e
                        if r < rows and c < cols:
                            dense[r, c] = block[a, e]
                        else:
                            _need(bool(block[a, e] == 0), "an edge block entry outside the "
                                  f"matrix holds {float(block[a, e])}")
    else:
        raise Invalid(f"unknown format {fmt!r}")
    return dense
