"""SparseLinear: construction, forward semantics, errors and state_dict round trips."""

import io

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from sparseprune import SparseLinear

from ..conftest import assert_close_linear


def _pruned_linear(k=96, n=80, sparsity=0.9, bias=True):
    lin = nn.Linear(k, n, bias=bias)
    with torch.no_grad():
        lin.weight.mul_(torch.rand(n, k) >= sparsity)
    return lin


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(), (5,), (2, 3), (0,), (4, 0, 2)])
def test_forward_matches_linear_on_any_leading_dims(bias, lead):
    lin = _pruned_linear(bias=bias)
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(*lead, 96)
    y = sp(x)
    assert y.shape == (*lead, 80)
    assert_close_linear(y.reshape(-1, 80), x.reshape(-1, 96), lin.weight.detach(),
                        None if lin.bias is None else lin.bias.detach())


def test_prune_mask_is_honoured():
    lin = nn.Linear(50, 40)
    prune.l1_unstructured(lin, "weight", amount=0.8)
    sp = SparseLinear.from_dense(lin)
    assert sp.weight.nnz == int(lin.weight_mask.sum())
    x = torch.randn(7, 50)
    assert_close_linear(sp(x), x, lin.weight.detach(), lin.bias.detach())


def test_to_dense_returns_an_equal_linear():
    lin = _pruned_linear()
    back = SparseLinear.from_dense(lin).to_dense()
    assert isinstance(back, nn.Linear)
    assert torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)


def test_non_contiguous_input():
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(96, 6).T  # [6, 96], not contiguous
    assert not x.is_contiguous()
    assert_close_linear(sp(x), x, lin.weight.detach(), lin.bias.detach())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_compute_in_float32(dtype):
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(4, 96).to(dtype)
    y = sp(x)
    assert y.dtype == dtype
    # The float32 result of the rounded input, rounded once to the input's dtype.
    x32 = x.float()
    assert_close_linear(y.float() if dtype == torch.float64 else sp(x32), x32,
                        lin.weight.detach(), lin.bias.detach())
    assert torch.equal(y, sp(x32).to(dtype))


@pytest.mark.parametrize("batch", [3, 5, 20])  # SpMV, CSR panels, SELL-C panels
def test_nan_and_inf_propagate_like_torch(batch):
    lin = nn.Linear(4, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]]))
        lin.bias.zero_()
    sp = SparseLinear.from_dense(lin)
    x = torch.tensor([[float("nan"), 1.0, 1.0, 2.0],
                      [1.0, float("inf"), 1.0, 2.0],
                      [1.0, 3.0, 1.0, 2.0]]).repeat(batch, 1)[:batch]
    y = sp(x)
    ref = lin(x).detach()
    assert torch.equal(torch.isnan(y), torch.isnan(ref))
    assert torch.isnan(y[0]).all() and torch.isnan(y[1]).any()
    assert torch.equal(y[2], ref[2])
    assert torch.equal(y[~torch.isnan(ref)], ref[~torch.isnan(ref)])


def test_bad_inputs_get_clear_errors():
    sp = SparseLinear.from_dense(_pruned_linear(), name="encoder.fc")
    with pytest.raises(ValueError, match=r"'encoder.fc' \[80x96\].*\(3, 95\).*96"):
        sp(torch.randn(3, 95))
    with pytest.raises(TypeError, match="floating point input"):
        sp(torch.ones(3, 96, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="CPU only"):
        sp(torch.empty(3, 96, device="meta"))
    with pytest.raises(ValueError, match="does not end in"):
        sp(torch.tensor(1.0))
    with pytest.raises(TypeError, match="expected nn.Linear"):
        SparseLinear.from_dense(nn.Conv2d(3, 3, 1))


def test_requires_grad_falls_back_to_a_correct_dense_path():
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(5, 96, requires_grad=True)
    sp(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    lin(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5)


def test_state_dict_round_trip_through_a_file():
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    buf = io.BytesIO()
    torch.save(sp.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = SparseLinear(96, 80)
    fresh.load_state_dict(state)
    x = torch.randn(9, 96)
    assert torch.equal(fresh(x), sp(x))
    assert fresh.weight.nnz == sp.weight.nnz


@pytest.mark.parametrize("fmt", ["csr", "sell"])
def test_state_dict_stores_only_packed_data(fmt):
    sp = SparseLinear.from_dense(_pruned_linear(), format=fmt)
    assert set(sp.state_dict()) == {"row_ptr", "col_idx", "values", "format_header", "bias"}
    fresh = SparseLinear(96, 80)
    fresh.load_state_dict(sp.state_dict())
    assert fresh.format == fmt


def test_corrupt_state_dict_is_rejected_before_any_kernel_runs():
    sp = SparseLinear.from_dense(_pruned_linear())
    state = sp.state_dict()
    state["col_idx"] = state["col_idx"].clone()
    state["col_idx"][0] = 5000
    fresh = SparseLinear(96, 80)
    with pytest.raises(ValueError, match="out of range"):
        fresh.load_state_dict(state)
    state = sp.state_dict()
    with pytest.raises(ValueError, match=r"holds a \[80x96\] weight"):
        SparseLinear(96, 81).load_state_dict(state)
    state["format_header"] = state["format_header"].clone()
    state["format_header"][0] = 7
    with pytest.raises(ValueError, match="not a sparseprune packed weight"):
        SparseLinear(96, 80).load_state_dict(state)
    state = sp.state_dict()
    state["format_header"] = state["format_header"].clone()
    state["format_header"][1] = 99
    with pytest.raises(ValueError, match="unknown packed format id 99"):
        SparseLinear(96, 80).load_state_dict(state)


def test_huge_expanded_buffer_is_refused_before_any_copy():
    sp = SparseLinear.from_dense(_pruned_linear())
    state = sp.state_dict()
    state["values"] = torch.zeros(1).expand(2**28)  # stride 0: claims 1 GiB, holds 4 bytes
    with pytest.raises(ValueError, match="values claims 268435456 entries.*expanded view"):
        SparseLinear(96, 80).load_state_dict(state)


@pytest.mark.parametrize("fmt", ["csr", "sell"])
def test_extra_repr_shows_shape_sparsity_format_and_bytes(fmt):
    sp = SparseLinear.from_dense(_pruned_linear(sparsity=0.75), format=fmt)
    text = repr(sp)
    assert "in_features=96, out_features=80" in text
    assert f"format={fmt}" in text and "sparsity=0.7" in text
    assert f"nbytes={sp.weight.nbytes}" in text


def test_default_construction_is_all_zero_weight():
    sp = SparseLinear(5, 4)
    assert sp.weight.nnz == 0
    assert torch.equal(sp(torch.randn(2, 5)), torch.zeros(2, 4))


@pytest.mark.parametrize("fmt", ["csr", "sell"])
def test_torch_export_traces_through_the_custom_op(fmt):
    sp = SparseLinear.from_dense(_pruned_linear(), format=fmt).eval()
    x = torch.randn(4, 96)
    exported = torch.export.export(sp, (x,))
    assert "sparseprune.linear" in str(exported.graph)
    # The exported graph may run other kernel rows than eager (same math, other summation
    # order), so compare within fp32 tolerance, not bitwise.
    assert_close_linear(exported.module()(x), x, sp.weight.to_dense(), sp.bias)


@pytest.mark.parametrize("prepared", [False, True])
def test_exported_program_validates_its_constants_once(prepared, monkeypatch):
    """An exported program hands the op its packed constants each call (fresh copies when the
    module was not prepared): they are validated and packed once, not per call; an in-place
    edit of a constant is validated again (and refused when invalid)."""
    import sparseprune
    from sparseprune import ops

    sp = SparseLinear.from_dense(_pruned_linear(), format="csr").eval()
    if prepared:
        sparseprune.prepare_for_compile(sp)
    x = torch.randn(3, 96)
    module = torch.export.export(sp, (x,)).module()
    built = []
    real = ops.make_weight
    monkeypatch.setattr(ops, "make_weight", lambda *a: built.append(a) or real(*a))
    for _ in range(4):
        assert_close_linear(module(x), x, sp.weight.to_dense(), sp.bias)
    assert len(built) <= 1, len(built)
    # The program's constants are plain tensor attributes: edit col_idx (uint16) in place.
    col_idx = [v for v in vars(module).values()
               if isinstance(v, torch.Tensor) and v.dtype == torch.uint16]
    assert len(col_idx) == 1
    col_idx[0].fill_(60000)  # beyond in_features: must be refused, not read
    with pytest.raises(ValueError, match="out of range"):
        module(x)


def test_one_layout_per_layer_and_bytes_reported():
    lin = _pruned_linear(k=1024, n=512, sparsity=0.9)
    for fmt in ("csr", "sell"):
        sp = SparseLinear.from_dense(lin, format=fmt)
        sp(torch.randn(32, 1024))
        sp(torch.randn(1, 1024))
        # Only the native layout is held: no tensor copies beside it, no second layout.
        assert list(sp._buffers) == ["bias"]
        # SELL (~5 B per nonzero) meets the 15 % budget; CSR (6 B) sits right at it.
        budget = 0.15 if fmt == "sell" else 0.155
        assert sp.weight.nbytes <= budget * 512 * 1024 * 4, sp.weight.nbytes


def test_partial_packed_state_dict_is_refused_even_non_strict():
    sp = SparseLinear.from_dense(_pruned_linear())
    state = sp.state_dict()
    del state["format_header"]
    state["row_ptr"] = state["row_ptr"].clone()
    state["row_ptr"][5] = 10**9
    fresh = SparseLinear.from_dense(_pruned_linear())
    before = fresh.weight
    with pytest.raises(ValueError, match="load as a whole"):
        fresh.load_state_dict(state, strict=False)
    assert fresh.weight is before


@pytest.mark.parametrize("batch", [2, 6, 16])
def test_edits_of_state_dict_tensors_never_reach_the_layer(batch):
    lin = _pruned_linear(k=300, n=200, sparsity=0.8)
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(batch, 300)
    y = sp(x)
    state = sp.state_dict()
    with torch.no_grad():
        state["values"].mul_(2.0)
        state["col_idx"][0] = 60000  # out of range: would be a wild read if a kernel saw it
        sp.weight.tensors()["values"].mul_(3.0)
    assert torch.equal(sp(x), y)
    assert_close_linear(y, x, lin.weight.detach(), lin.bias.detach())


def test_shape_attributes_are_fixed():
    sp = SparseLinear.from_dense(_pruned_linear())
    with pytest.raises(AttributeError, match="fixed by the packed weight"):
        sp.in_features = 10
    assert sp(torch.randn(3, 96)).shape == (3, 80)


@pytest.mark.parametrize("fmt", ["csr", "sell"])
def test_deepcopy_pickle_and_torch_save_after_every_batch_path(fmt):
    import copy
    import pickle

    sp = SparseLinear.from_dense(_pruned_linear(k=300, n=200), format=fmt)
    xs = [torch.randn(b, 300) for b in (1, 5, 16, 40)]
    ys = [sp(x) for x in xs]
    buf = io.BytesIO()
    torch.save(sp, buf)
    buf.seek(0)
    for other in (copy.deepcopy(sp), pickle.loads(pickle.dumps(sp)),
                  torch.load(buf, weights_only=False)):
        for x, y in zip(xs, ys, strict=True):
            assert torch.equal(other(x), y)


@pytest.mark.parametrize("cast", ["half", "double", "bfloat16"])
def test_dtype_casts_keep_the_packed_weight_float32(cast):
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    bias = sp.bias.clone()
    getattr(sp, cast)()
    assert sp.bias.dtype == torch.float32 and torch.equal(sp.bias, bias)
    x = torch.randn(4, 96)
    assert_close_linear(sp(x), x, lin.weight.detach(), lin.bias.detach())


def test_moving_to_another_device_is_refused_at_the_call():
    sp = SparseLinear.from_dense(_pruned_linear())
    with pytest.raises(RuntimeError, match="CPU only"):
        sp.to("meta")


def test_share_memory_keeps_results_right():
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(20, 96)
    before = sp(x)
    sp.share_memory()  # moves every buffer to new (shared) storage
    assert torch.equal(sp(x), before)


def test_modules_built_under_inference_mode_run():
    lin = _pruned_linear()
    x = torch.randn(20, 96)
    with torch.inference_mode():
        sp = SparseLinear.from_dense(lin)
        y = sp(x)
    assert_close_linear(y, x, lin.weight.detach(), lin.bias.detach())
    assert_close_linear(sp(x), x, lin.weight.detach(), lin.bias.detach())


def test_bias_edits_and_replacements_reach_the_kernel():
    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin)
    x = torch.randn(3, 96)
    sp(x)
    with torch.no_grad():
        sp.bias.add_(1.0)  # in place
        lin.bias.add_(1.0)
    assert_close_linear(sp(x), x, lin.weight.detach(), lin.bias.detach())
    sp.bias = torch.full((80,), 2.0, dtype=torch.float64)  # replaced, other dtype
    assert_close_linear(sp(x), x, lin.weight.detach(), torch.full((80,), 2.0))
    sp.bias = torch.zeros(5)
    with pytest.raises(ValueError, match="bias must be a 1-D float32 array of length 80"):
        sp(x)


@pytest.mark.parametrize("fmt", ["csr", "sell"])
def test_jit_trace_records_the_custom_op_not_a_constant(fmt):
    import warnings

    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin, format=fmt).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about shape checks
        traced = torch.jit.trace(sp, (torch.randn(4, 96),))
    assert "sparseprune::linear" in str(traced.graph)
    for batch in (4, 9):
        x = torch.randn(batch, 96)
        assert_close_linear(traced(x), x, lin.weight.detach(), lin.bias.detach())


@pytest.mark.parametrize("fmt", ["csr", "sell"])
def test_export_twice_then_compile_fullgraph(fmt):
    import sparseprune

    lin = _pruned_linear()
    sp = SparseLinear.from_dense(lin, format=fmt).eval()
    x = torch.randn(5, 96)
    for _ in range(2):  # the second export must not find fake tensors left by the first
        exported = torch.export.export(sp, (x,))
        assert_close_linear(exported.module()(x), x, lin.weight.detach(), lin.bias.detach())
    torch._dynamo.reset()
    compiled = torch.compile(sparseprune.prepare_for_compile(sp), fullgraph=True)
    y = compiled(x)
    assert type(y) is torch.Tensor
    assert_close_linear(y, x, lin.weight.detach(), lin.bias.detach())


def test_forged_pickle_state_is_refused():
    sp = SparseLinear.from_dense(_pruned_linear(), format="csr")
    state = sp.weight.__getstate__()
    forged = dict(state, shape=(80, 95))
    fresh = object.__new__(type(sp.weight))
    with pytest.raises(ValueError, match="does not match its native data"):
        fresh.__setstate__(forged)


def test_negated_view_buffers_load():
    sp = SparseLinear.from_dense(_pruned_linear())
    state = sp.state_dict()
    state["values"] = torch._neg_view(-state["values"])
    fresh = SparseLinear(96, 80)
    fresh.load_state_dict(state)
    x = torch.randn(3, 96)
    assert torch.equal(fresh(x), sp(x))
