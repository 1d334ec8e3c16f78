"""SparseConv2d: the nn.Conv2d contract (every padding kind, stride, dilation, groups; prune
masks; memory formats; dtypes; NaN / Inf; autograd), persistence, kernel choice, errors and
the traced paths (torch.export, torch.compile, torch.jit.trace)."""

from __future__ import annotations

import copy
import io
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from torch import nn

from sparseprune import ops
from sparseprune.formats import FORMATS
from sparseprune.nn.conv import CONV_FORMATS, SparseConv2d

SCALAR_ROW = "spconv_csr_f32_16px_scalar"


def _conv(c=4, o=6, k=3, sparsity=0.5, seed=0, **kw) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(c, o, k, **kw)
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) >= sparsity)
    return conv


def _plain_copy(conv: nn.Conv2d, dtype=torch.float64, absolute=False) -> nn.Conv2d:
    """A plain nn.Conv2d (no prune hooks) with conv's effective weight, in dtype."""
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None,
                    conv.padding_mode).to(dtype)
    with torch.no_grad():
        w = conv.weight.detach()
        out.weight.copy_(w.abs() if absolute else w)
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach().abs() if absolute else conv.bias.detach())
    return out


def assert_close_conv(y: torch.Tensor, x: torch.Tensor, conv: nn.Conv2d, label="") -> None:
    """|y - conv(x)| <= 1e-5 sqrt(taps) (|W| * |x| + |b|) + 1e-6, in float64; same shape."""
    with torch.no_grad():
        ref = _plain_copy(conv)(x.double())
        scale = _plain_copy(conv, absolute=True)(x.double().abs())
    taps = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]
    assert y.shape == ref.shape, (label, y.shape, ref.shape)
    bound = 1e-5 * taps**0.5 * scale + 1e-6
    bad = ~((y.double() - ref).abs() <= bound)
    if bad.any():
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise AssertionError(f"{label}: y{list(i)} = {y[i].item():.6g}, expected "
                             f"{ref[i].item():.6g} (bound {bound[i].item():.2e}); "
                             f"{int(bad.sum())} of {bad.numel()} bad")


# (in, out, kernel, keyword arguments of nn.Conv2d), input H x W.
CONFIGS = {
    "3x3": (4, 6, 3, {}, (9, 8)),
    "3x3_pad1": (4, 6, 3, {"padding": 1}, (9, 8)),
    "3x3_no_bias": (4, 6, 3, {"padding": 1, "bias": False}, (7, 7)),
    "1x1": (8, 5, 1, {}, (6, 7)),
    "1x1_stride2": (8, 5, 1, {"stride": 2}, (7, 7)),
    "5x5_pad2_stride2": (3, 4, 5, {"padding": 2, "stride": 2}, (11, 12)),
    "7x7_pad3_stride2": (3, 8, 7, {"padding": 3, "stride": 2}, (15, 13)),
    "1x3": (4, 6, (1, 3), {"padding": (0, 1)}, (5, 9)),
    "3x1_stride_per_axis": (4, 6, (3, 1), {"padding": (1, 0), "stride": (2, 1)}, (9, 5)),
    "asym_pad": (4, 6, 3, {"padding": (0, 2)}, (8, 6)),
    "dilation2": (4, 6, 3, {"padding": 2, "dilation": 2}, (9, 9)),
    "dilation_per_axis": (4, 6, (3, 3), {"dilation": (1, 2), "stride": (1, 2)}, (9, 11)),
    "same_odd": (4, 6, 3, {"padding": "same"}, (7, 9)),
    "same_even": (4, 6, 4, {"padding": "same"}, (7, 9)),
    "same_even_rect": (4, 6, (2, 5), {"padding": "same"}, (6, 7)),
    "same_even_dilated": (4, 6, 2, {"padding": "same", "dilation": 3}, (8, 8)),
    "valid": (4, 6, 3, {"padding": "valid"}, (7, 9)),
    "reflect": (4, 6, 3, {"padding": 1, "padding_mode": "reflect"}, (7, 8)),
    "reflect_same_even": (4, 6, 4, {"padding": "same", "padding_mode": "reflect"}, (7, 8)),
    "replicate_stride2": (4, 6, 3, {"padding": 2, "padding_mode": "replicate", "stride": 2},
                          (9, 8)),
    "circular": (4, 6, 3, {"padding": (1, 2), "padding_mode": "circular"}, (7, 8)),
    "circular_same_dilated": (4, 6, 3, {"padding": "same", "padding_mode": "circular",
                                        "dilation": 2}, (9, 9)),
    "groups2": (4, 6, 3, {"padding": 1, "groups": 2}, (7, 7)),
    "depthwise": (6, 6, 3, {"padding": 1, "groups": 6}, (8, 9)),
    "depthwise_x2_reflect": (4, 8, 5, {"padding": 2, "groups": 4, "padding_mode": "reflect"},
                             (9, 9)),
    "h1": (3, 4, (1, 3), {"padding": (0, 1)}, (1, 6)),
    "w1": (3, 4, (3, 1), {"padding": (1, 0)}, (6, 1)),
    "h1w1_pad1": (3, 4, 3, {"padding": 1}, (1, 1)),
}


def _make(name, sparsity=0.5, seed=0):
    c, o, k, kw, hw = CONFIGS[name]
    return _conv(c, o, k, sparsity=sparsity, seed=seed, **kw), hw


@pytest.mark.parametrize("mask", ["none", "l1_unstructured", "ln_structured"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_from_dense_matches_conv2d(name, mask):
    conv, (h, w) = _make(name)
    if mask == "l1_unstructured":
        prune.l1_unstructured(conv, "weight", amount=0.7)
    elif mask == "ln_structured":  # whole output channels: rows with no taps
        prune.ln_structured(conv, "weight", amount=0.5, n=2, dim=0)
    sp = SparseConv2d.from_dense(conv)
    if mask != "none":
        assert sp.weight.nnz == int((conv.weight_mask * (conv.weight_orig != 0)).sum())
    for batch in (1, 3):
        x = torch.randn(batch, conv.in_channels, h, w)
        y = sp(x)
        assert y.dtype == torch.float32 and y.is_contiguous()
        with torch.no_grad():
            assert y.shape == conv(x).shape
        assert_close_conv(y, x, conv, label=f"{name} {mask} batch {batch}")


@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
def test_sparsities_including_an_all_zero_filter(sparsity):
    conv, (h, w) = _make("reflect", sparsity=sparsity)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 4, h, w)
    assert_close_conv(sp(x), x, conv)
    if sparsity == 1.0:
        assert torch.equal(sp(x), conv.bias.detach().view(1, -1, 1, 1).expand(2, 6, h, w))


@pytest.mark.parametrize("name", ["3x3_pad1", "same_even", "reflect", "depthwise"])
def test_unbatched_3d_input(name):
    conv, (h, w) = _make(name)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(conv.in_channels, h, w)
    y = sp(x)
    with torch.no_grad():
        assert y.shape == conv(x).shape
    assert_close_conv(y.unsqueeze(0), x.unsqueeze(0), conv)


@pytest.mark.parametrize("name", ["3x3_pad1", "reflect", "circular", "same_even"])
def test_batch_zero(name):
    conv, (h, w) = _make(name)
    sp = SparseConv2d.from_dense(conv)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(0, conv.in_channels, h, w, dtype=dtype)
        y = sp(x)
        with torch.no_grad():
            ref = _plain_copy(conv, dtype)(x)
        assert y.shape == ref.shape and y.dtype == dtype


def _formats_equal(y: torch.Tensor, ref: torch.Tensor) -> bool:
    same_flags = all(y.is_contiguous(memory_format=f) == ref.is_contiguous(memory_format=f)
                     for f in (torch.contiguous_format, torch.channels_last))
    # Strides of size-1 dims mean nothing; where no dim is size 1 they must match exactly.
    return same_flags and (1 in ref.shape or y.stride() == ref.stride())


_CL = torch.randn(2, 4, 7, 9).contiguous(memory_format=torch.channels_last)
CL_INPUTS = {
    "channels_last": lambda: _CL,
    "channels_last_batch1": lambda: _CL[:1],
    "channels_last_batch_step": lambda: _CL[::2],
    "channels_last_w_slice": lambda: _CL[..., 1:8],
    "channels_last_float64": lambda: _CL.double(),
    "channels_last_float64_slice": lambda: _CL.double()[..., 1:8],
    "channels_last_float16": lambda: _CL.half(),
    "contiguous": lambda: _CL.contiguous(),
    "permuted_slice": lambda: torch.randn(2, 7, 9, 4).permute(0, 3, 1, 2)[:, :, ::2],
    "channels_last_1x1_image": lambda: torch.randn(2, 4, 1, 1).contiguous(
        memory_format=torch.channels_last),
}


@pytest.mark.parametrize("name", ["3x3_pad1", "1x1", "reflect", "same_even", "groups2"])
@pytest.mark.parametrize("inp", list(CL_INPUTS))
def test_output_memory_format_is_conv2d_s(inp, name):
    _, o, k, kw, _ = CONFIGS[name]
    conv = _conv(4, o, k, **kw)  # every input here has 4 channels
    sp = SparseConv2d.from_dense(conv)
    x = CL_INPUTS[inp]()
    if name == "reflect" and x.shape[-1] == 1:
        pytest.skip("reflect padding needs an input larger than the padding (torch too)")
    y = sp(x)
    with torch.no_grad():
        ref = _plain_copy(conv, x.dtype)(x)
    assert y.dtype == x.dtype
    assert _formats_equal(y, ref), (f"{inp} input strides {x.stride()}: output strides "
                                    f"{y.stride()}, nn.Conv2d gives {ref.stride()}")
    if x.dtype != torch.float16:
        assert_close_conv(y.double(), x.double(), conv)


def test_one_channel_input_and_output_in_channels_last():
    for c, o in ((1, 6), (4, 1)):
        conv = _conv(c, o, 3, padding=1)
        sp = SparseConv2d.from_dense(conv)
        x = torch.randn(2, c, 7, 9).contiguous(memory_format=torch.channels_last)
        y = sp(x)
        with torch.no_grad():
            assert _formats_equal(y, conv(x)), (c, o, y.stride(), conv(x).stride())
        assert_close_conv(y, x, conv)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["3x3_pad1", "reflect", "depthwise"])
def test_other_float_dtypes_compute_in_float32(dtype, name):
    conv, (h, w) = _make(name)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(2, conv.in_channels, h, w).to(dtype)
    y = sp(x)
    assert y.dtype == dtype and y.shape == (2, conv.out_channels, *sp(x.float()).shape[2:])
    # The float32 result of the rounded input, rounded once to the input's dtype.
    assert torch.equal(y, sp(x.float()).to(dtype))
    assert_close_conv(sp(x.float()), x.float(), conv)


@pytest.mark.parametrize("name", ["3x3_pad1", "1x1", "reflect", "same_even", "stride"])
def test_non_contiguous_inputs(name):
    conv, (h, w) = _make("5x5_pad2_stride2" if name == "stride" else name)
    sp = SparseConv2d.from_dense(conv)
    c = conv.in_channels
    views = [torch.randn(2, c, h, w + 3)[..., 1:w + 1],          # a W slice
             torch.randn(2, c + 2, h, w)[:, 1:c + 1],            # a channel slice
             torch.randn(4, c, h, w)[::2],                       # every other image
             torch.randn(2, c, w, h).transpose(2, 3),            # H and W swapped
             torch.randn(1, c, h, w).expand(3, c, h, w)]         # stride 0 batch
    for x in views:
        assert not x.is_contiguous()
        assert_close_conv(sp(x), x, conv, label=f"{name} strides {x.stride()}")


@pytest.mark.parametrize("name", ["3x3_pad1", "1x1", "reflect", "circular", "same_even",
                                  "depthwise", "5x5_pad2_stride2", "dilation2"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_inf_match_dense_torch_exactly(name, layout):
    conv, (h, w) = _make(name, sparsity=0.7)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(3, conv.in_channels, h, w)
    x[0, 0, h // 2, w // 2] = float("nan")
    x[1, -1, 0, w - 1] = float("inf")
    x[2, 0, h - 1, 0] = float("-inf")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    y = sp(x)
    with torch.no_grad():
        ref = _plain_copy(conv, torch.float32)(x)
    assert torch.isnan(ref).any()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    keep = ~torch.isnan(ref)
    assert torch.equal(y[keep], ref[keep])  # same Inf, same finite values (dense torch ran)
    # A finite batch right after is sparse again and correct.
    xf = torch.randn(2, conv.in_channels, h, w)
    assert_close_conv(sp(xf), xf, conv)


@pytest.mark.parametrize("name", ["3x3_pad1", "same_even", "reflect", "circular",
                                  "depthwise_x2_reflect", "dilation_per_axis", "no_bias"])
def test_requires_grad_input_gets_conv2d_s_gradient(name):
    conv, (h, w) = _make("3x3_no_bias" if name == "no_bias" else name)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(2, conv.in_channels, h, w, requires_grad=True)
    y = sp(x)
    assert y.requires_grad
    g = torch.randn_like(y)
    (y * g).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    (conv(x2) * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert_close_conv(y.detach(), x.detach(), conv)
    # Under no_grad the same input runs the sparse kernel.
    with torch.no_grad():
        assert_close_conv(sp(x), x.detach(), conv)


@pytest.mark.parametrize("name", ["3x3_pad1", "same_even", "circular", "depthwise", "valid",
                                  "3x3_no_bias"])
def test_to_dense_round_trip_is_exact(name):
    conv, (h, w) = _make(name)
    prune.l1_unstructured(conv, "weight", amount=0.6)
    sp = SparseConv2d.from_dense(conv)
    back = sp.to_dense()
    assert type(back) is nn.Conv2d
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                 "groups", "padding_mode"):
        assert getattr(back, attr) == getattr(conv, attr), attr
    assert torch.equal(back.weight, conv.weight.detach())
    assert (back.bias is None) == (conv.bias is None)
    if conv.bias is not None:
        assert torch.equal(back.bias, conv.bias)
    x = torch.randn(2, conv.in_channels, h, w)
    with torch.no_grad():
        assert torch.equal(back(x), _plain_copy(conv, torch.float32)(x))
    again = SparseConv2d.from_dense(back)
    for key, t in sp.state_dict().items():
        assert torch.equal(again.state_dict()[key], t), key
    assert torch.equal(again(x), sp(x))


def _round_trip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", ["3x3_pad1", "3x3_no_bias", "same_even", "depthwise",
                                  "reflect"])
def test_state_dict_round_trip_through_a_file(name):
    c, o, k, kw, (h, w) = CONFIGS[name]
    conv = _conv(c, o, k, **kw)
    sp = SparseConv2d.from_dense(conv)
    state = _round_trip(sp.state_dict())
    assert set(state) == {"row_ptr", "col_idx", "values", "format_header", "filter_shape"} | (
        {"bias"} if conv.bias is not None else set())
    fresh = SparseConv2d(c, o, k, **kw)
    fresh.load_state_dict(state)
    assert fresh.weight.nnz == sp.weight.nnz
    x = torch.randn(3, c, h, w)
    assert torch.equal(fresh(x), sp(x))
    # Inside a model: prefixed keys.
    model = nn.Sequential(nn.Identity(), sp)
    fresh_model = nn.Sequential(nn.Identity(), SparseConv2d(c, o, k, **kw))
    fresh_model.load_state_dict(_round_trip(model.state_dict()))
    assert torch.equal(fresh_model(x), sp(x))


def test_state_dict_shape_mismatch_raises():
    sp = SparseConv2d.from_dense(_conv(4, 6, 3, padding=1))
    state = sp.state_dict()
    for other in (SparseConv2d(4, 7, 3, padding=1), SparseConv2d(5, 6, 3, padding=1),
                  SparseConv2d(4, 6, 5, padding=1), SparseConv2d(4, 6, (3, 1))):
        before = other.weight
        with pytest.raises(ValueError, match=r"holds a (\[6x36\] weight|filter of shape)"):
            other.load_state_dict(state)
        assert other.weight is before


def test_state_dict_of_another_kernel_shape_with_the_same_width_is_refused():
    # [6, 4, 3, 3] and [6, 4, 1, 9] flatten to the same [6, 36]: nn.Conv2d refuses this load
    # (size mismatch for weight); a SparseConv2d must not silently run a 3x3 filter as 1x9.
    with pytest.raises(RuntimeError, match="size mismatch"):
        nn.Conv2d(4, 6, (1, 9)).load_state_dict(nn.Conv2d(4, 6, 3).state_dict())
    sp = SparseConv2d.from_dense(_conv(4, 6, 3))
    other = SparseConv2d(4, 6, (1, 9))
    with pytest.raises(ValueError):
        other.load_state_dict(sp.state_dict())


def test_deepcopy_pickle_and_torch_save_after_several_sizes():
    conv, _ = _make("reflect")
    sp = SparseConv2d.from_dense(conv, kernels=(SCALAR_ROW,))
    xs = [torch.randn(b, 4, h, h + 1) for b, h in ((1, 5), (3, 8), (2, 13))]
    ys = [sp(x) for x in xs]
    buf = io.BytesIO()
    torch.save(sp, buf)
    buf.seek(0)
    for other in (copy.deepcopy(sp), pickle.loads(pickle.dumps(sp)),
                  torch.load(buf, weights_only=False)):
        assert other.kernels == (SCALAR_ROW,)
        assert other.padding_mode == "reflect" and other.kernel_size == (3, 3)
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(other(x), y)


@pytest.mark.parametrize("name", ["3x3_pad1", "1x1", "5x5_pad2_stride2", "depthwise"])
def test_forced_kernel_row_is_used_and_correct(name):
    conv, (h, w) = _make(name)
    info = {k["name"]: k for k in ops.list_kernels()}[SCALAR_ROW]
    assert info["family"] == "spconv" and info["supported"]
    sp = SparseConv2d.from_dense(conv, kernels=(SCALAR_ROW,))
    default = SparseConv2d.from_dense(conv)
    assert sp.kernels == (SCALAR_ROW,)
    x = torch.randn(2, conv.in_channels, h, w)
    y = sp(x)
    assert_close_conv(y, x, conv)
    assert_close_conv(default(x), x, conv)
    # Bitwise what that row gives when called by name.
    pt, pl, pb, pr = sp._pads
    spec = (conv.in_channels, h, w, *conv.kernel_size, *conv.stride, *conv.dilation,
            conv.groups, pt, pl, pb, pr)
    plan = ops.make_conv_plan(sp.weight.native, spec, SCALAR_ROW)
    want, _ = ops.conv2d_numpy(plan, x.numpy(), conv.bias.detach().numpy())
    assert torch.equal(y, want)
    # Set after construction too.
    default.kernels = (SCALAR_ROW,)
    assert torch.equal(default(x), y)
    default.kernels = ()
    assert_close_conv(default(x), x, conv)


def test_bad_kernel_choices_raise_value_error():
    conv = _conv()
    linear_rows = [k["name"] for k in ops.list_kernels() if k["family"] in ("spmm", "spmv")]
    csr_linear = next(k["name"] for k in ops.list_kernels()
                      if k["family"] == "spmm" and k["format"] == "csr")
    for name in {linear_rows[0], csr_linear}:
        with pytest.raises(ValueError, match=f"'{name}' is not a convolution kernel"):
            SparseConv2d.from_dense(conv, kernels=(name,))
    with pytest.raises(ValueError, match="is not a convolution kernel"):
        SparseConv2d.from_dense(conv, kernels=("nope",))
    with pytest.raises(ValueError, match="takes one convolution kernel"):
        SparseConv2d.from_dense(conv, kernels=(SCALAR_ROW, SCALAR_ROW))
    sp = SparseConv2d.from_dense(conv)
    with pytest.raises(ValueError, match="is not a convolution kernel"):
        sp.kernels = (csr_linear,)
    assert sp.kernels == ()


def test_formats_the_kernels_do_not_run_raise_value_error():
    conv = _conv()
    flat = conv.weight.detach().reshape(6, -1)
    others = [f for f in FORMATS if f not in CONV_FORMATS]
    assert "sell" in others
    for fmt in others:
        params = {"nm": (2, 4), "bsr": (2, 2)}.get(fmt, ())
        if fmt == "nm":
            from sparseprune.pruning.patterns import NM

            flat_fmt = flat * NM(2, 4, on_indivisible="pad").mask(flat.abs())
        else:
            flat_fmt = flat
        packed = FORMATS[fmt].from_dense(flat_fmt, params=params)
        with pytest.raises(ValueError, match=f"filters, not {fmt}"):
            SparseConv2d(4, 6, 3, weight=packed)
        sp = SparseConv2d.from_dense(conv)
        with pytest.raises(ValueError, match=f"filters, not {fmt}"):
            sp.set_weight(packed)
        assert sp.format == "csr"
        with pytest.raises(ValueError, match=f"filters, not '{fmt}'"):
            SparseConv2d.from_dense(conv, format=fmt, params=params)


def test_input_size_changing_between_calls():
    conv, _ = _make("3x3_pad1")
    sp = SparseConv2d.from_dense(conv)
    sizes = [(5, 5), (9, 8), (1, 1), (16, 3), (5, 5), (7, 30), (2, 2), (9, 8), (1, 17)]
    for b, (h, w) in enumerate(sizes):
        x = torch.randn(1 + b % 3, 4, h, w)
        assert_close_conv(sp(x), x, conv, label=f"size {h}x{w}")
    valid = SparseConv2d.from_dense(_conv(4, 6, 5))
    with pytest.raises(ValueError, match=r"input \[4, 3, 9\].*smaller than the dilated kernel"):
        valid(torch.randn(1, 4, 3, 9))
    x = torch.randn(1, 4, 5, 9)
    assert valid(x).shape == (1, 6, 1, 5)


def test_bias_edits_and_replacements_take_effect():
    conv, (h, w) = _make("3x3_pad1")
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(2, 4, h, w)
    sp(x)  # the bias view is cached now
    with torch.no_grad():
        sp.bias.add_(1.5)
        conv.bias.add_(1.5)
    assert_close_conv(sp(x), x, conv)
    with torch.no_grad():
        sp.bias[2] = -7.0
        conv.bias[2] = -7.0
    assert_close_conv(sp(x), x, conv)
    sp.bias = torch.full((6,), 2.0, dtype=torch.float64)  # replaced, other dtype
    with torch.no_grad():
        conv.bias.fill_(2.0)
    assert_close_conv(sp(x), x, conv)


def test_torch_export_runs_and_matches():
    c1, _ = _make("3x3_pad1")
    c2 = _conv(6, 5, 3, padding=1, padding_mode="reflect", seed=1)
    model = nn.Sequential(SparseConv2d.from_dense(c1), nn.ReLU(),
                          SparseConv2d.from_dense(c2)).eval()
    dense = nn.Sequential(c1, nn.ReLU(), c2).eval()
    x = torch.randn(2, 4, 9, 8)
    exported = torch.export.export(model, (x,))
    assert "sparseprune.conv2d" in str(exported.graph)
    run = exported.module()
    for xi in (x, torch.randn(2, 4, 9, 8)):  # new values, same shape: not constant-folded
        with torch.no_grad():
            torch.testing.assert_close(run(xi), dense(xi), rtol=1e-5, atol=1e-5)


def test_torch_compile_matches():
    c1, _ = _make("same_even")
    c2 = _conv(6, 4, 1, seed=1)
    model = nn.Sequential(SparseConv2d.from_dense(c1), nn.ReLU(),
                          SparseConv2d.from_dense(c2)).eval()
    dense = nn.Sequential(c1, nn.ReLU(), c2).eval()
    torch._dynamo.reset()
    compiled = torch.compile(model)
    for shape in ((2, 4, 7, 9), (2, 4, 7, 9), (1, 4, 11, 6)):
        x = torch.randn(shape)
        with torch.no_grad():
            y = compiled(x)
            assert type(y) is torch.Tensor
            torch.testing.assert_close(y, dense(x), rtol=1e-5, atol=1e-5)


def test_jit_trace_records_the_custom_op_not_a_constant():
    conv, (h, w) = _make("5x5_pad2_stride2")
    sp = SparseConv2d.from_dense(conv).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape checks
        traced = torch.jit.trace(sp, (torch.randn(2, 3, h, w),))
    assert "sparseprune::conv2d" in str(traced.graph)
    for x in (torch.randn(2, 3, h, w), torch.randn(4, 3, h, w)):
        assert_close_conv(traced(x), x, conv)


@pytest.mark.parametrize("path", ["jit_trace", "export"])
def test_traced_paths_spread_nan_and_inf_like_torch(path):
    # Dense torch spreads Inf through the pruned zeros (0 * Inf = NaN); eager SparseConv2d
    # matches that, and a traced graph of the same layer must too.
    conv = nn.Conv2d(2, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1))
    sp = SparseConv2d.from_dense(conv).eval()
    x = torch.ones(1, 2, 2, 2)
    x[0, 1, 0, 0] = float("inf")
    with torch.no_grad():
        ref = conv(x)
    assert torch.isnan(ref[0, 0, 0, 0])
    assert torch.equal(torch.isnan(sp(x)), torch.isnan(ref))
    if path == "jit_trace":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run = torch.jit.trace(sp, (torch.randn(1, 2, 2, 2),))
    else:
        run = torch.export.export(sp, (torch.randn(1, 2, 2, 2),)).module()
    y = run(x)
    assert torch.equal(torch.isnan(y), torch.isnan(ref)), (y, ref)
    keep = ~torch.isnan(ref)
    assert torch.equal(y[keep], ref[keep])


def test_bad_inputs_and_arguments_get_clear_errors():
    sp = SparseConv2d.from_dense(_conv(4, 6, 3), name="backbone.conv1")
    with pytest.raises(ValueError, match=r"'backbone.conv1' \[6x4x3x3\].*\[N, 4, H, W\].*"
                                         r"\(2, 5, 9, 9\)"):
        sp(torch.randn(2, 5, 9, 9))
    with pytest.raises(ValueError, match="expected input"):
        sp(torch.randn(4, 9))
    with pytest.raises(ValueError, match="expected input"):
        sp(torch.randn(1, 1, 4, 9, 9))
    with pytest.raises(TypeError, match="floating point input"):
        sp(torch.ones(1, 4, 9, 9, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="CPU only"):
        sp(torch.empty(1, 4, 9, 9, device="meta"))
    with pytest.raises(TypeError, match="expected nn.Conv2d"):
        SparseConv2d.from_dense(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        SparseConv2d(4, 6, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        SparseConv2d(4, 6, 3, padding_mode="mirror")
    with pytest.raises(ValueError, match="multiples of groups"):
        SparseConv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="kernel_size must be a positive int or a pair"):
        SparseConv2d(4, 6, 0)
    with pytest.raises(AttributeError, match="kernel_size is fixed"):
        sp.kernel_size = (5, 5)


def test_extra_repr_and_default_construction():
    sp = SparseConv2d.from_dense(_conv(4, 6, 3, padding=1, groups=2, padding_mode="reflect",
                                       dilation=2, sparsity=0.75))
    text = repr(sp)
    for part in ("4, 6, kernel_size=(3, 3)", "padding=(1, 1)", "dilation=(2, 2)", "groups=2",
                 "padding_mode='reflect'", "format=csr", f"nbytes={sp.weight.nbytes}"):
        assert part in text, (part, text)
    empty = SparseConv2d(3, 5, 3, padding=1, bias=False)
    assert empty.weight.nnz == 0 and empty.weight.shape == (5, 27)
    assert torch.equal(empty(torch.randn(2, 3, 4, 4)), torch.zeros(2, 5, 4, 4))


@pytest.mark.parametrize("cast", ["half", "double", "bfloat16"])
def test_dtype_casts_keep_the_packed_weight_float32(cast):
    conv, (h, w) = _make("3x3_pad1")
    sp = SparseConv2d.from_dense(conv)
    bias = sp.bias.clone()
    getattr(sp, cast)()
    assert sp.bias.dtype == torch.float32 and torch.equal(sp.bias, bias)
    x = torch.randn(2, 4, h, w)
    assert_close_conv(sp(x), x, conv)


def test_inference_mode_and_dense_reference_helpers_agree():
    # The float64 helper reference is F.conv2d itself (guards the tests' own reference).
    conv, (h, w) = _make("circular")
    x = torch.randn(1, 4, h, w)
    with torch.no_grad():
        padded = F.pad(x, (2, 2, 1, 1), mode="circular")
        direct = F.conv2d(padded, conv.weight, conv.bias)
        torch.testing.assert_close(_plain_copy(conv, torch.float32)(x), direct)
    with torch.inference_mode():
        sp = SparseConv2d.from_dense(conv)
        y = sp(x)
    assert_close_conv(y, x, conv)
