"""Panel (spmm) kernels' output tiles: common/store_tile.h's 4x4 transposed writes, the SSE
pack_panel and plan_items' padded leftovers, on tails the named edge cases do not sweep.

Every spmm row runs on every batch 1..70 (nvalid tails of every panel width, panels padded
past nvalid) and odd output counts (1, 2, 3, 5, 129, 131: fewer than 4 rows, SELL tiles ending
mid row block, BSR groups past w.rows), with and without bias and with ldy > rows. Outputs land
in a sentinel-filled array one row taller and wider than needed, so a store outside
y[:batch, :rows] (into the ldy padding or past the last batch row) fails as well as a wrong
value. Results are compared with a float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparseprune import _C, ops
from sparseprune.formats import FORMATS
from sparseprune.pruning.patterns import NM, Block

from .linear_case import kernels_of

_SENTINEL = np.float32(-7.25e6)
_ROWS = (1, 2, 3, 5, 129, 131)
_BATCHES = range(1, 71)


def _weight(fmt: str, n: int, k: int, g: torch.Generator, sparsity: float = 0.6,
            block: tuple[int, int] = (4, 1)):
    w = torch.randn(n, k, generator=g)
    params: tuple[int, ...] = ()
    if fmt == "nm":
        w *= NM(2, 4, on_indivisible="pad").mask(torch.rand(n, k, generator=g))
        params = (2, 4)
    elif fmt == "bsr":
        w *= Block(*block, on_indivisible="pad").mask(torch.rand(n, k, generator=g), sparsity)
        params = block
    else:
        w *= torch.rand(n, k, generator=g) >= sparsity
    return w.numpy(), FORMATS[fmt].from_dense(w, params=params).native


def _run_and_check(native, plan, x: np.ndarray, w: np.ndarray, b: np.ndarray | None, pad: int,
                   label: str, threads: int = 1) -> None:
    batch, rows = x.shape[0], w.shape[0]
    big = np.full((batch + 1, rows + pad), _SENTINEL, dtype=np.float32)
    _C.linear(native, x, b, big[:batch, :rows], threads, plan)
    ref = x.astype(np.float64) @ w.astype(np.float64).T
    scale = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T
    if b is not None:
        ref += b
        scale += np.abs(b)
    bound = 1e-5 * max(1, x.shape[1]) ** 0.5 * scale + 1e-6
    y = big[:batch, :rows]
    bad = ~(np.abs(y - ref) <= bound)
    if bad.any():
        r, c = (int(i) for i in np.argwhere(bad)[0])
        raise AssertionError(f"{label}: y[{r}, {c}] = {y[r, c]:.6g}, expected {ref[r, c]:.6g}; "
                             f"{int(bad.sum())} bad entries")
    assert (big[:batch, rows:] == _SENTINEL).all(), f"{label}: wrote into the ldy padding"
    assert (big[batch] == _SENTINEL).all(), f"{label}: wrote past the last batch row"


def _plan(names: list[str], fmt: str):
    return ops.make_plan(FORMATS[fmt].FORMAT_ID, names)


def _supported(family: str, fmt: str | None = None) -> list[dict]:
    return [k for k in kernels_of(family, fmt) if k["supported"]]


@pytest.mark.parametrize("kernel", [k["name"] for k in kernels_of("spmm")])
def test_tile_tails_every_batch_and_row_count(kernel):
    info = {k["name"]: k for k in ops.list_kernels()}[kernel]
    if not info["supported"]:
        pytest.skip(f"{kernel} needs {info['isa']}, which this CPU lacks")
    fmt = info["format"]
    plan = _plan([kernel], fmt)
    g = torch.Generator().manual_seed(11)
    for rows in _ROWS:
        w, native = _weight(fmt, rows, 67, g)
        for batch in _BATCHES:
            x = torch.randn(batch, 67, generator=g).numpy()
            b = torch.randn(rows, generator=g).numpy()
            for bias, pad in ((b, 0), (None, 3)):
                _run_and_check(native, plan, x, w, bias, pad,
                               f"{kernel} rows={rows} batch={batch} bias={bias is not None}")


@pytest.mark.parametrize("block", [(2, 3), (16, 1), (4, 4)])
def test_bsr_groups_past_rows(block):
    # Block rows that overhang w.rows (rows not a multiple of r) on the fixed and runtime shapes.
    g = torch.Generator().manual_seed(12)
    for k in _supported("spmm", "bsr"):
        plan = _plan([k["name"]], "bsr")
        for rows in (1, 3, 5, 131):
            w, native = _weight("bsr", rows, 67, g, block=block)
            for batch in (1, 3, 4, 5, 9, 15, 16, 17, 33):
                x = torch.randn(batch, 67, generator=g).numpy()
                _run_and_check(native, plan, x, w, torch.randn(rows, generator=g).numpy(), 1,
                               f"{k['name']} {block} rows={rows} batch={batch}")


@pytest.mark.parametrize("fmt", ["csr", "sell", "bsr", "nm"])
@pytest.mark.parametrize("with_spmv", [False, True])
def test_multi_panel_plans_cover_every_batch_row(fmt, with_spmv):
    # Several panel widths in one plan: full panels, leftovers padded into a wider panel
    # (plan_items' kMaxPanelPad rule), narrowest-panel leftovers and spmv rows. A batch row lost
    # or computed twice by the plan shows up as a wrong value or an untouched sentinel.
    rows_by_isa: dict[str, list[str]] = {}
    for k in _supported("spmm", fmt):
        rows_by_isa.setdefault(k["isa"], []).append(k["name"])
    spmv = [k["name"] for k in _supported("spmv", fmt)][:1] if with_spmv else []
    combos = [[k["name"] for k in _supported("spmm", fmt)], *rows_by_isa.values()]
    g = torch.Generator().manual_seed(13)
    for combo in combos:
        plan = _plan(combo + spmv, fmt)
        w, native = _weight(fmt, 131, 300, g)  # 300 columns: two SELL column blocks
        for batch in _BATCHES:
            x = torch.randn(batch, 300, generator=g).numpy()
            _run_and_check(native, plan, x, w, torch.randn(131, generator=g).numpy(), 2,
                           f"{combo + spmv} batch={batch}")


def test_sell_offsets_at_column_block_edges():
    # Dense and near-dense SELL tiles reach offset 255 and long chunks (the AVX2 8-row kernel's
    # two-step loop with its 64-bit offset load); K around multiples of kSellColBlock = 256.
    g = torch.Generator().manual_seed(14)
    for k in _supported("spmm", "sell"):
        plan = _plan([k["name"]], "sell")
        for cols in (1, 255, 256, 257, 513):
            for sparsity in (0.0, 0.9):
                w, native = _weight("sell", 130, cols, g, sparsity=sparsity)
                for batch in (1, 7, 8, 9, 31, 33):
                    x = torch.randn(batch, cols, generator=g).numpy()
                    _run_and_check(native, plan, x, w, torch.randn(130, generator=g).numpy(), 1,
                                   f"{k['name']} cols={cols} sparsity={sparsity} batch={batch}")


def test_strided_input_rows():
    # pack_panel's SSE transpose with a row stride that is not a multiple of 4 floats.
    g = torch.Generator().manual_seed(15)
    for k in _supported("spmm"):
        fmt = k["format"]
        plan = _plan([k["name"]], fmt)
        w, native = _weight(fmt, 37, 67, g)
        for batch in (3, 5, 13, 21):
            x = torch.randn(batch, 70, generator=g).numpy()[:, :67]
            _run_and_check(native, plan, x, w, None, 0, f"{k['name']} strided batch={batch}")


def test_thread_chunks_split_tiles():
    # Work chunks start at rows that are not multiples of the CSR kernels' 16-row tile (and
    # split SELL / BSR / N:M row blocks across threads).
    g = torch.Generator().manual_seed(16)
    for k in _supported("spmm"):
        fmt = k["format"]
        plan = _plan([k["name"]], fmt)
        for rows in (131, 301):
            w, native = _weight(fmt, rows, 300, g, sparsity=0.3)
            for batch in (5, 33, 70):
                x = torch.randn(batch, 300, generator=g).numpy()
                _run_and_check(native, plan, x, w, torch.randn(rows, generator=g).numpy(), 1,
                               f"{k['name']} rows={rows} batch={batch} threads=3", threads=3)
