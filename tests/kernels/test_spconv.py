"""Every compiled direct sparse convolution (spconv) row against dense torch.

A case makes a conv filter [O, C/groups, kh, kw] with a sparsity, packs it flattened to
[O, C/groups * kh * kw] with the real packer of the row's format (CSR; BSR with r x 1 blocks,
r output channels sharing each kept tap), builds a ``ConvPlan`` for the row by name and runs
it at 1 and 2 threads; the float64 ``F.conv2d`` of the explicitly padded input is the
reference. Cases: named edge cases plus deterministic random configurations (kernel size,
stride, dilation, groups, symmetric and asymmetric padding, odd and unit input sizes, batch,
sparsity, empty rows, bias).
"""

from __future__ import annotations

import gc
import random
import subprocess
import sys
from dataclasses import dataclass, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sparseprune import _C, ops
from sparseprune.formats import FORMATS

from .family import check_table
from .linear_case import kernels_of

CSR = FORMATS["csr"]


@dataclass(frozen=True)
class ConvCase:
    """y = conv2d(pad(x), W) + b: x [n, c, h, w], W [o, c / groups, kh, kw].

    pads = (top, left, bottom, right) zero padding, given to the kernel through the spec.
    empty_rows zeroes every third output channel's filter (rows with no kept taps).
    block_rows = r > 1 keeps r x 1 blocks of the flattened filter (r consecutive output
    channels keep the same taps), as BSR conv filters need.
    """

    n: int
    c: int
    h: int
    w: int
    o: int
    k: tuple[int, int] = (3, 3)
    stride: tuple[int, int] = (1, 1)
    dil: tuple[int, int] = (1, 1)
    groups: int = 1
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    sparsity: float = 0.5
    bias: bool = True
    empty_rows: bool = False
    seed: int = 0
    block_rows: int = 1

    def with_blocks(self, r: int) -> ConvCase:
        """The case with r x 1 blocks: output channels per group rounded up to a multiple of r."""
        per = -(-(self.o // self.groups) // r) * r
        return replace(self, o=self.groups * per, block_rows=r)

    @property
    def spec(self) -> tuple[int, ...]:
        return (self.c, self.h, self.w, *self.k, *self.stride, *self.dil, self.groups,
                *self.pads)

    @property
    def taps(self) -> int:
        """Filter taps per output value (the reduction length)."""
        return self.c // self.groups * self.k[0] * self.k[1]

    def make(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        g = torch.Generator().manual_seed(self.seed)
        w = torch.randn(self.o, self.c // self.groups, *self.k, generator=g)
        r = self.block_rows
        if self.sparsity >= 1.0:
            w.zero_()
        else:
            keep = torch.rand(self.o // r, *w.shape[1:], generator=g) >= self.sparsity
            w *= keep.repeat_interleave(r, dim=0)
        if self.empty_rows:
            w[::3] = 0.0
        x = torch.randn(self.n, self.c, self.h, self.w, generator=g)
        b = torch.randn(self.o, generator=g) if self.bias else None
        return x, w, b

    def reference(self, x, w, b) -> tuple[torch.Tensor, torch.Tensor]:
        """(float64 result, float64 bound scale |x| * |W| + |b|)."""
        top, left, bottom, right = self.pads

        def conv(xx, ww, bb):
            xx = F.pad(xx.double(), (left, right, top, bottom))
            return F.conv2d(xx, ww.double(), None if bb is None else bb.double(),
                            self.stride, 0, self.dil, self.groups)

        return conv(x, w, b), conv(x.abs(), w.abs(), None if b is None else b.abs())

    def pack(self, w: torch.Tensor, fmt: str):
        flat = w.reshape(self.o, -1)
        if fmt == "bsr":
            return FORMATS["bsr"].from_dense(flat, params=(self.block_rows, 1))
        assert fmt == "csr" and self.block_rows == 1
        return CSR.from_dense(flat)

    def check(self, kernel: str, fmt: str = "csr") -> None:
        """Runs ``kernel`` ('' = the default choice for a ``fmt`` filter) at 1 and 2 threads
        against the reference."""
        if kernel:
            info = {k["name"]: k for k in ops.list_kernels()}[kernel]
            if not info["supported"]:
                pytest.skip(f"{kernel} needs {info['isa']}, which this CPU lacks")
            assert info["format"] == fmt
        x, w, b = self.make()
        packed = self.pack(w, fmt)
        plan = ops.make_conv_plan(packed.native, self.spec, kernel or None)
        if kernel:
            assert plan.kernel == kernel
        ref, scale = self.reference(x, w, b)
        assert (plan.out_h, plan.out_w) == tuple(ref.shape[2:]), self
        bound = 1e-5 * max(1, self.taps) ** 0.5 * scale + 1e-6
        label = f"{kernel or 'default ' + plan.kernel} on {self}"
        bias_np = None if b is None else b.numpy()
        results = []
        for threads in (1, 2):
            y = np.full((self.n, self.o, plan.out_h, plan.out_w), np.nan, dtype=np.float32)
            nonfinite = _C.conv2d(plan, x.numpy(), bias_np, y, threads)
            assert nonfinite is False, label
            yt = torch.from_numpy(y)
            err = (yt.double() - ref).abs()
            bad = ~(err <= bound)  # NaN (an unwritten output) counts as bad
            if bad.any():
                i = tuple(int(v) for v in bad.nonzero()[0])
                raise AssertionError(
                    f"{label} at {threads} threads: y[n={i[0]}, o={i[1]}, {i[2]}, {i[3]}] = "
                    f"{yt[i].item():.6g}, expected {ref[i].item():.6g} (bound "
                    f"{bound[i].item():.2e}); {int(bad.sum())} of {bad.numel()} bad")
            results.append(yt)
        # Threads split the output channels, never one output's sum: bitwise equal results.
        assert torch.equal(results[0], results[1]), label
        if self.sparsity >= 1.0:  # no kept taps at all: exactly the bias (or zeros)
            want = torch.zeros_like(results[0])
            if b is not None:
                want += b.view(1, -1, 1, 1)
            assert torch.equal(results[0], want), label
        if self.empty_rows:  # rows with no taps are exactly their bias
            rows = results[0][:, ::3]
            want = torch.zeros_like(rows) + (0 if b is None else b[::3].view(1, -1, 1, 1))
            assert torch.equal(rows, want), label


# Named edge cases every row must pass.
EDGE_CASES = {
    # reads x as is (256 pixels: whole tiles of every row's width)
    "direct_1x1": ConvCase(n=2, c=16, h=16, w=16, o=24, k=(1, 1)),
    "1x1_partial_tile": ConvCase(n=2, c=16, h=9, w=9, o=24, k=(1, 1)),  # copied: not direct
    "direct_1x1_h1w1": ConvCase(n=3, c=5, h=1, w=1, o=7, k=(1, 1), sparsity=0.0),
    "direct_1x1_long": ConvCase(n=1, c=3, h=1, w=300, o=5, k=(1, 1), sparsity=0.0),
    "1x1_stride2": ConvCase(n=1, c=6, h=9, w=8, o=5, k=(1, 1), stride=(2, 2)),
    "1x1_padded": ConvCase(n=1, c=4, h=5, w=6, o=3, k=(1, 1), pads=(1, 2, 0, 1)),
    "3x3_same": ConvCase(n=2, c=3, h=7, w=7, o=8, pads=(1, 1, 1, 1)),
    "3x3_valid_dense": ConvCase(n=1, c=4, h=6, w=9, o=5, sparsity=0.0),
    "5x5_stride2_pad2": ConvCase(n=1, c=3, h=11, w=13, o=4, k=(5, 5), stride=(2, 2),
                                 pads=(2, 2, 2, 2)),
    "7x7_stride2_pad3": ConvCase(n=1, c=3, h=17, w=15, o=8, k=(7, 7), stride=(2, 2),
                                 pads=(3, 3, 3, 3), sparsity=0.9),
    "1x3": ConvCase(n=1, c=4, h=5, w=7, o=6, k=(1, 3), pads=(0, 1, 0, 1)),
    "3x1": ConvCase(n=1, c=4, h=7, w=5, o=6, k=(3, 1), pads=(1, 0, 1, 0)),
    "h1": ConvCase(n=2, c=3, h=1, w=9, o=4, k=(1, 3), pads=(0, 1, 0, 1)),
    "w1": ConvCase(n=2, c=3, h=9, w=1, o=4, k=(3, 1), pads=(1, 0, 1, 0)),
    "h1w1_3x3_pad1": ConvCase(n=3, c=2, h=1, w=1, o=3, pads=(1, 1, 1, 1), sparsity=0.0),
    "kernel_fills_input": ConvCase(n=1, c=3, h=5, w=5, o=4, k=(5, 5), sparsity=0.0),
    "stride_per_axis": ConvCase(n=1, c=3, h=10, w=11, o=4, stride=(1, 3), pads=(1, 1, 1, 1)),
    "stride3_dil2_asym": ConvCase(n=2, c=3, h=13, w=12, o=5, stride=(3, 2), dil=(2, 1),
                                  pads=(0, 2, 1, 0)),
    "stride_gt_kernel": ConvCase(n=1, c=2, h=10, w=10, o=3, k=(1, 1), stride=(3, 3)),
    "stride_gt_input": ConvCase(n=1, c=2, h=2, w=2, o=3, k=(1, 1), stride=(3, 3)),
    "dilation2": ConvCase(n=1, c=3, h=9, w=9, o=4, dil=(2, 2), pads=(2, 2, 2, 2)),
    "dilation_per_axis": ConvCase(n=1, c=3, h=9, w=9, o=4, k=(3, 5), dil=(1, 2)),
    "pad_gt_kernel": ConvCase(n=1, c=2, h=3, w=4, o=3, k=(1, 1), pads=(3, 2, 1, 4)),
    "asym_pads_only_bottom_right": ConvCase(n=1, c=3, h=6, w=6, o=4, pads=(0, 0, 2, 2)),
    "asym_pads_only_top_left": ConvCase(n=1, c=3, h=6, w=6, o=4, pads=(2, 2, 0, 0)),
    "groups2": ConvCase(n=2, c=6, h=7, w=7, o=4, groups=2, pads=(1, 1, 1, 1)),
    "groups3_1x1": ConvCase(n=1, c=6, h=5, w=5, o=9, k=(1, 1), groups=3),
    "depthwise_3x3": ConvCase(n=2, c=8, h=9, w=9, o=8, groups=8, pads=(1, 1, 1, 1)),
    "depthwise_7x7_stride2": ConvCase(n=1, c=6, h=15, w=13, o=6, k=(7, 7), stride=(2, 2),
                                      groups=6, pads=(3, 3, 3, 3), sparsity=0.0),
    "depthwise_multiplier2": ConvCase(n=1, c=4, h=6, w=6, o=8, groups=4, pads=(1, 1, 1, 1)),
    "batch3": ConvCase(n=3, c=3, h=8, w=7, o=5, pads=(1, 1, 1, 1)),
    "sparsity0": ConvCase(n=1, c=4, h=8, w=8, o=6, sparsity=0.0),
    "sparsity09": ConvCase(n=1, c=8, h=8, w=8, o=6, sparsity=0.9),
    "all_zero_filter": ConvCase(n=2, c=4, h=6, w=5, o=6, sparsity=1.0, pads=(1, 1, 1, 1)),
    "all_zero_filter_no_bias": ConvCase(n=1, c=4, h=6, w=5, o=6, sparsity=1.0, bias=False),
    "all_zero_direct": ConvCase(n=1, c=4, h=6, w=5, o=6, k=(1, 1), sparsity=1.0),
    "empty_rows": ConvCase(n=2, c=5, h=9, w=8, o=9, empty_rows=True, pads=(1, 1, 1, 1)),
    "empty_rows_direct": ConvCase(n=1, c=5, h=9, w=8, o=9, k=(1, 1), empty_rows=True),
    "no_bias": ConvCase(n=1, c=3, h=8, w=8, o=4, bias=False, pads=(1, 1, 1, 1)),
    "one_output_channel": ConvCase(n=1, c=3, h=8, w=8, o=1, sparsity=0.0),
    # Many pixel tiles (every width) with a partial last one: 40 x 42 prepared pixels.
    "many_tiles": ConvCase(n=1, c=3, h=40, w=40, o=4, pads=(1, 1, 1, 1)),
    "pixels_eq_128": ConvCase(n=1, c=2, h=8, w=16, o=3, k=(1, 1)),
    "pixels_eq_129": ConvCase(n=1, c=2, h=3, w=43, o=3, k=(1, 1)),
    # Enough input channels, taps per row and image width for several channel blocks
    # (L1-sized slices) at every tile width, 16-pixel scalar tiles included.
    "channel_blocks": ConvCase(n=1, c=128, h=40, w=40, o=8, pads=(1, 1, 1, 1)),
    "channel_blocks_groups2": ConvCase(n=1, c=256, h=40, w=40, o=6, groups=2,
                                       pads=(1, 1, 1, 1), empty_rows=True),
    # Work enough for the driver to really split the output channels between threads.
    "threads_split": ConvCase(n=2, c=16, h=24, w=24, o=12, pads=(1, 1, 1, 1)),
    "threads_split_direct": ConvCase(n=3, c=64, h=16, w=16, o=16, k=(1, 1), sparsity=0.0),
    "threads_split_uneven_rows": ConvCase(n=2, c=16, h=20, w=21, o=7, pads=(1, 1, 1, 1),
                                          sparsity=0.0, empty_rows=True),
    # More than 65536 filter columns: int32 column indices.
    "int32_index": ConvCase(n=1, c=1400, h=7, w=7, o=2, k=(7, 7), pads=(3, 3, 3, 3),
                            sparsity=0.995),
}


def _random_cases(count: int, seed: int) -> dict[str, ConvCase]:
    """Deterministic random configurations, each small (a few hundred outputs)."""
    rng = random.Random(seed)
    out = {}
    for i in range(count):
        k = rng.choice([(1, 1), (3, 3), (5, 5), (7, 7), (1, 3), (3, 1), (1, 5), (5, 3), (2, 2),
                        (2, 3)])
        stride = rng.choice([(1, 1), (1, 1), (2, 2), (3, 3), (1, 2), (2, 1), (3, 1), (2, 3)])
        dil = rng.choice([(1, 1), (1, 1), (2, 2), (1, 2), (2, 1)])
        kind = rng.choice(["plain", "plain", "groups2", "depthwise"])
        if kind == "plain":
            groups, c = 1, rng.randint(1, 9)
            o = rng.randint(1, 10)
        elif kind == "groups2":
            groups, c = 2, 2 * rng.randint(1, 4)
            o = 2 * rng.randint(1, 5)
        else:
            c = rng.randint(1, 8)
            groups, o = c, c * rng.choice([1, 1, 2])
        if rng.random() < 0.5:
            p = rng.choice([0, 1, 2])
            pads = (p, p, p, p)
        else:
            pads = tuple(rng.randint(0, 3) for _ in range(4))
        sizes = [1, 1, 2, 3, 5, 7, 8, 9, 11, 13, 17]
        span_h, span_w = dil[0] * (k[0] - 1) + 1, dil[1] * (k[1] - 1) + 1
        h = max(rng.choice(sizes), span_h - pads[0] - pads[2])
        w = max(rng.choice(sizes), span_w - pads[1] - pads[3])
        case = ConvCase(n=rng.choice([1, 1, 3]), c=c, h=h, w=w, o=o, k=k, stride=stride,
                        dil=dil, groups=groups, pads=pads,
                        sparsity=rng.choice([0.0, 0.5, 0.5, 0.9, 1.0]),
                        bias=rng.random() < 0.7, empty_rows=rng.random() < 0.25,
                        seed=rng.randint(0, 2**16))
        out[f"rand{i}"] = case
    return out


RANDOM_CASES = _random_cases(24, seed=1234)
ALL_CASES = {**EDGE_CASES, **RANDOM_CASES}
# Block heights a BSR row that takes any r ("nr" 0) is tested with.
_ANY_R = (1, 3)


def _row_params() -> list:
    """(kernel, format, r) for every spconv row: CSR rows r = 1; BSR rows their r x 1 blocks."""
    out = []
    for k in kernels_of("spconv"):
        if k["format"] == "csr":
            out.append(pytest.param(k["name"], "csr", 1, id=k["name"]))
        else:
            for r in ([k["nr"]] if k["nr"] else _ANY_R):
                out.append(pytest.param(k["name"], k["format"], r, id=f"{k['name']}-r{r}"))
    return out


ROW_PARAMS = _row_params()


def test_table_has_scalar_and_simd_rows():
    check_table("spconv")
    assert "csr" in {k["format"] for k in kernels_of("spconv")}


def test_edge_cases_cover_what_they_claim():
    def plan(case):
        x, w, b = case.make()
        return ops.make_conv_plan(CSR.from_dense(w.reshape(case.o, -1)).native, case.spec)

    assert plan(EDGE_CASES["direct_1x1"]).direct
    assert not plan(EDGE_CASES["1x1_partial_tile"]).direct
    assert not plan(EDGE_CASES["1x1_stride2"]).direct
    assert not plan(EDGE_CASES["1x1_padded"]).direct
    assert plan(EDGE_CASES["channel_blocks"]).channel_blocks > 1
    assert plan(EDGE_CASES["channel_blocks_groups2"]).channel_blocks > 1
    _, w, _ = EDGE_CASES["int32_index"].make()
    assert CSR.from_dense(w.reshape(2, -1)).tensors()["col_idx"].dtype == torch.int32


@pytest.mark.parametrize("case", list(ALL_CASES))
@pytest.mark.parametrize(("kernel", "fmt", "r"), ROW_PARAMS)
def test_spconv_row(kernel, fmt, r, case):
    c = ALL_CASES[case]
    (c.with_blocks(r) if fmt == "bsr" else c).check(kernel, fmt)


@pytest.mark.parametrize("case", list(ALL_CASES))
@pytest.mark.parametrize(("fmt", "r"), [("csr", 1)] + [("bsr", r) for r in (4, 8, 16, 2)
                                                        if any(k["format"] == "bsr" for k in
                                                               kernels_of("spconv"))])
def test_spconv_default_choice(case, fmt, r):
    c = ALL_CASES[case]
    (c.with_blocks(r) if fmt == "bsr" else c).check("", fmt)


def test_default_choice_is_a_supported_row_of_the_best_isa():
    case = EDGE_CASES["3x3_same"]
    x, w, b = case.make()
    native = CSR.from_dense(w.reshape(case.o, -1)).native
    rows = {k["name"]: k for k in kernels_of("spconv", "csr")}
    best = next(k["isa"] for k in kernels_of("spconv", "csr") if k["supported"])
    active = ops.cpu_info()["active"]
    for h in (1, 7, 30):
        spec = (case.c, h, h, *case.spec[3:])
        plan = ops.make_conv_plan(native, spec)
        assert rows[plan.kernel]["supported"]
        if best in active:
            assert rows[plan.kernel]["isa"] == best
        assert plan.px == rows[plan.kernel]["mr"]


def test_plan_keeps_its_weight_alive():
    case = EDGE_CASES["3x3_same"]
    x, w, b = case.make()
    packed = CSR.from_dense(w.reshape(case.o, -1))
    plan = ops.make_conv_plan(packed.native, case.spec)
    y_before, _ = ops.conv2d_numpy(plan, x.numpy(), b.numpy())
    del packed
    gc.collect()
    assert plan.weight.rows == case.o
    y_after, _ = ops.conv2d_numpy(plan, x.numpy(), b.numpy())
    assert torch.equal(y_before, y_after)


def test_plan_reuse_across_batches_and_calls():
    case = EDGE_CASES["5x5_stride2_pad2"]
    x, w, b = case.make()
    plan = ops.make_conv_plan(CSR.from_dense(w.reshape(case.o, -1)).native, case.spec)
    for n in (1, 4, 2):
        xn = torch.randn(n, case.c, case.h, case.w)
        ref, scale = case.reference(xn, w, b)
        y, flag = ops.conv2d_numpy(plan, xn.numpy(), b.numpy())
        assert not flag
        assert ((y.double() - ref).abs() <= 1e-5 * case.taps**0.5 * scale + 1e-6).all()
    # Batch 0: an empty output, nothing run.
    y, flag = ops.conv2d_numpy(plan, np.zeros((0, case.c, case.h, case.w), np.float32),
                               b.numpy())
    assert y.shape == (0, case.o, plan.out_h, plan.out_w) and not flag


@pytest.mark.parametrize("threads", [3, 7, 64])
@pytest.mark.parametrize("case", ["threads_split", "threads_split_direct",
                                  "threads_split_uneven_rows", "stride3_dil2_asym"])
def test_more_threads_give_the_same_bits(case, threads):
    c = EDGE_CASES[case]
    x, w, b = c.make()
    plan = ops.make_conv_plan(CSR.from_dense(w.reshape(c.o, -1)).native, c.spec)
    ys = []
    for t in (1, threads):
        y = np.full((c.n, c.o, plan.out_h, plan.out_w), np.nan, np.float32)
        _C.conv2d(plan, x.numpy(), b.numpy(), y, t)
        ys.append(y)
    assert np.array_equal(ys[0], ys[1])


# ---- the non-finite flag ----

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [(0, 0, 0, 0), (2, 1, 4, 6), (1, 2, 6, 6)])
@pytest.mark.parametrize("direct", [False, True])
def test_nonfinite_input_is_flagged(value, where, direct):
    k = (1, 1) if direct else (3, 3)
    case = ConvCase(n=3, c=3, h=7, w=7, o=4, k=k, pads=(0, 0, 0, 0) if direct else (1,) * 4)
    x, w, b = case.make()
    # An all-zero filter too: the flag reports the input, not what the kernel read.
    for filt in (w, torch.zeros_like(w)):
        plan = ops.make_conv_plan(CSR.from_dense(filt.reshape(case.o, -1)).native, case.spec)
        y = np.empty((case.n, case.o, plan.out_h, plan.out_w), np.float32)
        assert _C.conv2d(plan, x.numpy(), b.numpy(), y, 1) is False
        xb = x.clone()
        xb[where] = value
        for threads in (1, 2):
            assert _C.conv2d(plan, xb.numpy(), b.numpy(), y, threads) is True


# ---- bad inputs ----

def _setup(**kw):
    case = ConvCase(**{"n": 2, "c": 4, "h": 6, "w": 7, "o": 6, "pads": (1, 1, 1, 1), **kw})
    x, w, b = case.make()
    packed = CSR.from_dense(w.reshape(case.o, -1))
    plan = ops.make_conv_plan(packed.native, case.spec)
    y = np.empty((case.n, case.o, plan.out_h, plan.out_w), np.float32)
    return case, packed, plan, x.numpy(), b.numpy(), y


def test_bad_arrays_raise_clear_errors():
    case, packed, plan, x, b, y = _setup()
    ok = _C.conv2d(plan, x, b, y, 1)
    assert ok is False
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4, 6, 7\], got dim 1 = 5"):
        _C.conv2d(plan, np.zeros((2, 5, 6, 7), np.float32), b, y, 1)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4, 6, 7\], got dim 2 = 5"):
        _C.conv2d(plan, np.zeros((2, 4, 5, 7), np.float32), b, y, 1)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 4, 6, 7\], got dim 3 = 8"):
        _C.conv2d(plan, np.zeros((2, 4, 6, 8), np.float32), b, y, 1)
    with pytest.raises(ValueError, match="x must be a 4-D float32 array"):
        _C.conv2d(plan, x[0], b, y, 1)
    with pytest.raises(ValueError, match="x must be a 4-D float32 array"):
        _C.conv2d(plan, x.astype(np.float64), b, y, 1)
    with pytest.raises(ValueError, match="x must be a 4-D float32 array"):
        _C.conv2d(plan, x.astype(np.float16), b, y, 1)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _C.conv2d(plan, np.asfortranarray(x), b, y, 1)
    wide = np.zeros((2, 4, 6, 14), np.float32)
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        _C.conv2d(plan, wide[..., ::2], b, y, 1)
    with pytest.raises(ValueError, match=r"y must have shape \[2, 6, 6, 7\], got dim 0 = 3"):
        _C.conv2d(plan, x, b, np.empty((3, 6, 6, 7), np.float32), 1)
    with pytest.raises(ValueError, match=r"y must have shape \[2, 6, 6, 7\], got dim 1 = 5"):
        _C.conv2d(plan, x, b, np.empty((2, 5, 6, 7), np.float32), 1)
    with pytest.raises(ValueError, match=r"y must have shape \[2, 6, 6, 7\], got dim 3 = 8"):
        _C.conv2d(plan, x, b, np.empty((2, 6, 6, 8), np.float32), 1)
    with pytest.raises(ValueError, match="y must be a 4-D float32 array"):
        _C.conv2d(plan, x, b, np.empty((2, 6, 6, 7), np.float64), 1)
    with pytest.raises(ValueError, match="y must be C-contiguous"):
        _C.conv2d(plan, x, b, np.empty((2, 6, 6, 14), np.float32)[..., ::2], 1)
    ro = np.empty_like(y)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="y must be writeable"):
        _C.conv2d(plan, x, b, ro, 1)
    for bad_bias in (np.zeros(5, np.float32), np.zeros(7, np.float32), np.zeros(6, np.float64),
                     np.zeros((6, 1), np.float32), np.zeros(12, np.float32)[::2]):
        with pytest.raises(ValueError, match="bias must be a contiguous 1-D float32 array of "
                                             "length 6"):
            _C.conv2d(plan, x, bad_bias, y, 1)
    for threads in (0, -1, 5000):
        with pytest.raises(ValueError, match=r"nthreads must be in \[1, 1024\], got "
                                             f"{threads}"):
            _C.conv2d(plan, x, b, y, threads)
    # Nothing above wrote y or broke the plan.
    y2 = np.empty_like(y)
    assert _C.conv2d(plan, x, b, y2, 2) is False
    assert np.array_equal(y, y2)


def test_bad_specs_raise_clear_errors():
    case, packed, plan, x, b, y = _setup()
    native = packed.native
    spec = case.spec
    with pytest.raises(ValueError, match="spec must be a 14-tuple"):
        ops.make_conv_plan(native, spec[:13])
    with pytest.raises(ValueError, match="spec must be a 14-tuple"):
        ops.make_conv_plan(native, (*spec, 0))
    with pytest.raises(ValueError, match="spec must be a 14-tuple"):
        _C.ConvPlan(native, (), None)
    with pytest.raises(ValueError, match="spec entries must be ints"):
        _C.ConvPlan(native, (*spec[:13], 1.0), None)
    for i in range(14):
        bad = list(spec)
        bad[i] = -1
        with pytest.raises(ValueError, match=r"spec entries must be in \[0, 2\*\*31\], got -1"):
            ops.make_conv_plan(native, bad)
    bad = list(spec)
    bad[1] = 2**40
    with pytest.raises(ValueError, match=r"spec entries must be in \[0, 2\*\*31\]"):
        ops.make_conv_plan(native, bad)
    for i in range(3):
        bad = list(spec)
        bad[i] = 0
        with pytest.raises(ValueError, match="input channels, height and width must be >= 1"):
            ops.make_conv_plan(native, bad)
    bad = list(spec)
    bad[10] = 5000
    with pytest.raises(ValueError, match=r"padding must be in \[0, 4096\]"):
        ops.make_conv_plan(native, bad)


# Run in a child process: a crash (e.g. SIGFPE from a division by a zero stride) must fail this
# test, not abort the whole session.
_ZERO_SIZES_CHILD = """
import sys
import torch
from sparseprune import ops
from sparseprune.formats import FORMATS
native = FORMATS["csr"].from_dense(torch.randn(6, 36)).native
spec = (4, 6, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1)
for kernel in ("spconv_csr_f32_16px_scalar", None):  # None: the default choice
    for i in (3, 4, 5, 6, 7, 8, 9):  # kh, kw, stride_h, stride_w, dil_h, dil_w, groups
        bad = list(spec)
        bad[i] = 0
        print(f"kernel {kernel}, spec index {i}", flush=True)
        try:
            ops.make_conv_plan(native, bad, kernel)
        except ValueError as e:
            assert "kernel size, stride, dilation and groups must be >= 1" in str(e), e
        else:
            raise AssertionError(f"spec {bad} with kernel {kernel} was accepted")
print("done")
"""


def test_zero_kernel_stride_dilation_groups_raise_not_crash():
    out = subprocess.run([sys.executable, "-c", _ZERO_SIZES_CHILD], capture_output=True,
                         text=True, timeout=120)
    last = out.stdout.strip().splitlines()[-1:] or ["(no output)"]
    assert out.returncode == 0 and last == ["done"], (
        f"make_conv_plan with a zero spec entry: exit status {out.returncode} at {last[0]!r}; "
        f"stderr: {out.stderr[-1000:]}")


def test_geometry_mismatches_raise_clear_errors():
    case, packed, plan, x, b, y = _setup()
    native = packed.native  # [6, 4 * 3 * 3]
    # The padded input smaller than the dilated kernel.
    with pytest.raises(ValueError, match=r"padded input \(2 x 7\) is smaller than the dilated "
                                         "kernel"):
        ops.make_conv_plan(native, (4, 2, 7, 3, 3, 1, 1, 1, 1, 1, 0, 0, 0, 0))
    with pytest.raises(ValueError, match=r"padded input \(7 x 6\) is smaller than the dilated "
                                         "kernel"):
        ops.make_conv_plan(native, (4, 5, 4, 3, 3, 1, 1, 1, 3, 1, 1, 1, 1, 1))
    # Out channels (6) not divisible by groups (4); in channels not divisible either.
    w4 = CSR.from_dense(torch.randn(6, 1 * 9)).native
    with pytest.raises(ValueError, match="out channels 6 must be divisible by groups 4"):
        ops.make_conv_plan(w4, (4, 6, 7, 3, 3, 1, 1, 1, 1, 4, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="in channels 3 and out channels 6 must be divisible "
                                         "by groups 2"):
        ops.make_conv_plan(CSR.from_dense(torch.randn(6, 9)).native,
                           (3, 6, 7, 3, 3, 1, 1, 1, 1, 2, 1, 1, 1, 1))
    # Filter columns not C / groups * kh * kw.
    with pytest.raises(ValueError, match=r"the filter has 36 columns per output channel, the "
                                         r"input needs 5 x 3 x 3 = 45"):
        ops.make_conv_plan(native, (5, 6, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"the filter has 36 columns per output channel, the "
                                         r"input needs 2 x 3 x 3 = 18"):
        ops.make_conv_plan(native, (4, 6, 7, 3, 3, 1, 1, 1, 1, 2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"the input needs 4 x 1 x 1 = 4"):
        ops.make_conv_plan(native, (4, 6, 7, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0))


def test_bad_weights_and_kernel_names_raise_clear_errors():
    case, packed, plan, x, b, y = _setup()
    spec = case.spec
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        ops.make_conv_plan(packed.native, spec, "nope")
    linear_rows = [k["name"] for k in ops.list_kernels() if k["family"] in ("spmm", "spmv")]
    assert linear_rows
    csr_linear = next(k["name"] for k in ops.list_kernels()
                      if k["family"] == "spmm" and k["format"] == "csr")
    for name in {csr_linear, linear_rows[0]}:
        with pytest.raises(ValueError, match=f"kernel '{name}' is not a convolution kernel"):
            ops.make_conv_plan(packed.native, spec, name)
    sell = FORMATS["sell"].from_dense(torch.randn(case.o, case.taps))
    with pytest.raises(ValueError, match="weight must be a CsrWeight"):
        ops.make_conv_plan(sell.native, spec)
    with pytest.raises(ValueError, match="weight must be a CsrWeight"):
        ops.make_conv_plan(object(), spec)


def test_bsr_filters_need_r_x_1_blocks_inside_one_group():
    if not kernels_of("spconv", "bsr"):
        pytest.skip("no BSR convolution rows in this build")
    bsr = FORMATS["bsr"]
    spec = (4, 6, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1)  # filter [8, 36]
    w = torch.randn(8, 36)
    with pytest.raises(ValueError, match="must be r x 1"):
        ops.make_conv_plan(bsr.from_dense(w, params=(2, 2)).native, spec)
    # 4-row blocks, 2 groups of 4 output channels: fine; 4 groups of 2: blocks would straddle.
    ops.make_conv_plan(bsr.from_dense(torch.randn(8, 18), params=(4, 1)).native,
                       (4, 6, 7, 3, 3, 1, 1, 1, 1, 2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="4-row blocks would straddle two groups: 2 output "
                                         "channels per group"):
        ops.make_conv_plan(bsr.from_dense(torch.randn(8, 9), params=(4, 1)).native,
                           (4, 6, 7, 3, 3, 1, 1, 1, 1, 4, 1, 1, 1, 1))
    native4 = bsr.from_dense(w, params=(4, 1)).native
    csr_row = kernels_of("spconv", "csr")[0]["name"]
    with pytest.raises(ValueError, match=f"kernel '{csr_row}' is not a convolution kernel for "
                                         "bsr weights"):
        ops.make_conv_plan(native4, spec, csr_row)
    bsr_row = kernels_of("spconv", "bsr")[0]["name"]
    with pytest.raises(ValueError, match=f"kernel '{bsr_row}' is not a convolution kernel for "
                                         "csr weights"):
        ops.make_conv_plan(CSR.from_dense(w).native, spec, bsr_row)
    for k in kernels_of("spconv", "bsr"):
        if k["nr"] not in (0, 4):
            with pytest.raises(ValueError, match=f"runs {k['nr']}-row blocks, not 4"):
                ops.make_conv_plan(native4, spec, k["name"])
