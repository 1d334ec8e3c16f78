"""Patterns: exact counts, N:M groups, whole blocks, channels, ties, parsing."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sparseprune.pruning.patterns import (
    NM,
    PATTERNS,
    Block,
    Channel,
    Unstructured,
    parse_pattern,
)

INF = float("-inf")


def _scores(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", [(7,), (10, 13), (8, 3, 3, 3), (4, 2, 5)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 0.9, 0.99])
def test_unstructured_prunes_exactly_round_s_times_n(shape, sparsity):
    scores = _scores(*shape)
    mask = Unstructured().mask(scores, sparsity)
    assert mask.shape == scores.shape and mask.dtype == torch.bool
    n = scores.numel()
    assert int((~mask).sum()) == round(sparsity * n)
    # The pruned ones are the lowest: every pruned score <= every kept score.
    if 0 < (~mask).sum() < n:
        assert scores[~mask].max() <= scores[mask].min()


def test_unstructured_ties_prune_lower_flat_index_first():
    mask = Unstructured().mask(torch.ones(3, 4), 0.5)
    assert mask.reshape(-1).tolist() == [False] * 6 + [True] * 6


def test_already_pruned_scores_go_first():
    scores = _scores(4, 5)
    scores[0, 0] = scores[3, 4] = INF  # already pruned, though others score lower after this
    mask = Unstructured().mask(scores, 0.1)
    assert (~mask).sum() == 2 and not mask[0, 0] and not mask[3, 4]


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 9), s=st.floats(0.0, 0.99))
def test_unstructured_count_property(rows, cols, s):
    scores = torch.randint(0, 3, (rows, cols)).float()  # many ties on purpose
    mask = Unstructured().mask(scores, s)
    assert int((~mask).sum()) == round(s * rows * cols)
    assert torch.equal(mask, Unstructured().mask(scores, s))  # deterministic


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (1, 2), (3, 8)])
@pytest.mark.parametrize("shape", [(6, 16), (4, 8, 2, 2)])  # Linear [O, I], Conv2d [O, C, kh, kw]
def test_nm_keeps_exactly_n_in_every_group_of_m_inputs(n, m, shape):
    scores = _scores(*shape)
    mask = NM(n, m).mask(scores)
    groups = mask.reshape(shape[0], -1, m)  # along the flattened input dim
    assert (groups.sum(-1) == n).all()
    # The kept ones are each group's top n.
    s_groups = scores.reshape(shape[0], -1, m)
    top = s_groups.topk(n, dim=-1).indices
    assert torch.equal(groups, torch.zeros_like(groups).scatter(-1, top, True))
    assert NM(n, m).fixed_sparsity == pytest.approx(1 - n / m)


def test_nm_groups_run_along_flattened_conv_input_axis():
    # [O=1, C=2, kh=1, kw=2] -> K = 4 in (c, kh, kw) order: one 2:4 group spanning both channels.
    scores = torch.tensor([[[[0.1, 0.9]], [[0.8, 0.2]]]])
    mask = NM(2, 4).mask(scores)
    assert mask.reshape(-1).tolist() == [False, True, True, False]


def test_nm_ties_and_already_pruned():
    mask = NM(2, 4).mask(torch.ones(1, 8))
    assert mask.reshape(-1).tolist() == [False, False, True, True] * 2
    scores = torch.tensor([[INF, 5.0, 1.0, 2.0]])
    assert NM(2, 4).mask(scores).reshape(-1).tolist() == [False, True, False, True]


@pytest.mark.parametrize("n,m", [(2, 2), (3, 2), (0, 4), (-1, 4)])
def test_nm_rejects_n_not_below_m(n, m):
    with pytest.raises(ValueError, match=rf"1 <= N < M, got {n}:{m}"):
        NM(n, m)


def test_nm_indivisible_error_pad_skip():
    scores = _scores(4, 10)
    with pytest.raises(ValueError, match=r"shape \(4, 10\).*input dim 10.*not divisible by 4"):
        NM(2, 4).mask(scores)
    padded = NM(2, 4, on_indivisible="pad").mask(scores)
    assert (padded[:, :8].reshape(4, 2, 4).sum(-1) == 2).all()
    assert (padded[:, 8:].sum(-1) == 2).all()  # tail group of 2 real weights keeps <= 2
    short = NM(2, 4, on_indivisible="pad").mask(_scores(2, 5))
    assert (short[:, 4:].sum(-1) == 1).all()  # tail of 1 real weight: kept (at most N)
    assert NM(2, 4, on_indivisible="skip").mask(scores).all()
    with pytest.raises(ValueError, match="on_indivisible"):
        NM(2, 4, on_indivisible="trim")  # type: ignore[arg-type]


def test_nm_sparsity_above_its_ratio_is_refused():
    with pytest.raises(ValueError, match=r"2:4 keeps 2 of every 4 .* sparsity=0.9"):
        NM(2, 4).mask(_scores(2, 8), 0.9)


def test_nm_gradual_steps_are_nested_and_end_on_the_nm_mask():
    scores = _scores(8, 16)
    final = NM(2, 4).mask(scores)
    previous = torch.ones_like(final)
    for s in (0.1, 0.25, 0.4, 0.5):
        mask = NM(2, 4).mask(scores, s)
        assert int((~mask).sum()) == round(s * scores.numel())
        assert not (mask & ~previous).any()  # nested: nothing revived
        assert (final <= mask).all()  # never prunes a weight the final N:M mask keeps
        previous = mask
    assert torch.equal(previous, final)


@pytest.mark.parametrize("r,c", [(4, 1), (8, 1), (4, 4), (1, 4), (2, 3)])
@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_block_masks_are_whole_blocks_with_exact_block_count(r, c, sparsity):
    shape = (16, 24)
    scores = _scores(*shape)
    mask = Block(r, c).mask(scores, sparsity)
    tiles = mask.reshape(16 // r, r, 24 // c, c).permute(0, 2, 1, 3).reshape(16 // r, 24 // c, -1)
    assert (tiles.all(-1) | ~tiles.any(-1)).all()  # each block all kept or all pruned
    n_blocks = (16 // r) * (24 // c)
    assert int((~tiles.all(-1)).sum()) == round(sparsity * n_blocks)


def test_block_scored_by_block_sum():
    # 2x2 blocks of a 4x4: block sums 4, 40, 0.4, 0.04 (row-major); prune 2 -> the last two.
    scores = torch.tensor([[1.0, 1, 10, 10], [1, 1, 10, 10],
                           [0.1, 0.1, 0.01, 0.01], [0.1, 0.1, 0.01, 0.01]])
    mask = Block(2, 2).mask(scores, 0.5)
    assert mask[:2].all() and not mask[2:].any()


def test_block_on_conv_weight_uses_flattened_view():
    scores = _scores(8, 4, 3, 3)  # [O, C*kh*kw] = [8, 36]
    mask = Block(4, 4, on_indivisible="error").mask(scores, 0.5)
    assert mask.shape == scores.shape
    view = mask.reshape(8, 36).reshape(2, 4, 9, 4).permute(0, 2, 1, 3).reshape(2, 9, 16)
    assert (view.all(-1) | ~view.any(-1)).all()


def test_block_indivisible_and_pad():
    with pytest.raises(ValueError, match=r"block8x1 does not tile shape \(10, 4\)"):
        Block(8, 1).mask(_scores(10, 4), 0.5)
    padded = Block(8, 1, on_indivisible="pad").mask(_scores(10, 4), 0.5)
    assert padded.shape == (10, 4)
    assert int((~padded[:8].all(0)).sum()) + int((~padded[8:].all(0)).sum()) == 4  # 4 of 8


def test_channel_prunes_whole_rows_by_sum():
    scores = torch.tensor([[3.0, 3.0], [0.1, 0.2], [5.0, 0.0], [0.0, 0.2]])
    mask = Channel().mask(scores, 0.5)
    assert mask.all(1).tolist() == [True, False, True, False]
    assert (mask.all(1) | ~mask.any(1)).all()
    cols = Channel(dim=1).mask(_scores(3, 5, 2), 0.4)
    assert (~cols.reshape(3, 5, 2).any(0).any(1)).sum() == 2


def test_partly_pruned_block_is_scored_by_its_survivors():
    scores = torch.tensor([[INF, 9.0, 1.0, 1.0]])  # block 1 (1x2) partly pruned but strong
    assert Block(1, 2).mask(scores, 0.5).tolist() == [[True, True, False, False]]


def test_patterns_reject_nan_and_bad_sparsity():
    bad = torch.tensor([[0.1, float("nan")]])
    for pattern in (Unstructured(), NM(1, 2), Block(1, 1), Channel()):
        with pytest.raises(ValueError, match="NaN"):
            pattern.mask(bad, 0.5)
    for s in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"\[0, 1\)"):
            Unstructured().mask(_scores(2, 2), s)
    with pytest.raises(TypeError):
        Unstructured().mask(_scores(2, 2), "0.5")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text,expected",
    [
        ("unstructured", Unstructured()),
        ("2:4", NM(2, 4)),
        ("1:8", NM(1, 8)),
        ("block8x1", Block(8, 1)),
        ("Block4x4", Block(4, 4)),
        ("channel", Channel(0)),
        ("channel1", Channel(1)),
    ],
)
def test_parse_pattern(text, expected):
    assert parse_pattern(text) == expected
    assert parse_pattern(str(expected)) == expected  # labels round-trip


def test_parse_pattern_errors_list_valid_forms():
    with pytest.raises(ValueError, match=r"unknown pattern '2of4'.*'N:M'.*'blockRxC'"):
        parse_pattern("2of4")
    with pytest.raises(ValueError, match="1 <= N < M"):
        parse_pattern("4:4")
    assert parse_pattern("2:4", on_indivisible="pad").on_indivisible == "pad"
    assert set(PATTERNS) == {"unstructured", "nm", "block", "channel"}


def test_global_units_round_trip():
    scores = _scores(8, 12)
    for pattern in (Unstructured(), Block(4, 1), Block(2, 3)):
        units = pattern.units(scores)
        keep = torch.tensor([i % 3 != 0 for i in range(units.numel())])
        mask = pattern.expand(keep, scores.shape)
        assert mask.shape == scores.shape and int(mask.sum()) * units.numel() == int(
            keep.sum()) * scores.numel()


@pytest.mark.parametrize("m", [2, 4, 8])
def test_nm_brute_force_small(m):
    # Every 0/1 mask from NM(1, m) on all permutations of distinct scores keeps the max.
    for perm in itertools.islice(itertools.permutations(range(m)), 24):
        scores = torch.tensor([list(perm)], dtype=torch.float32)
        assert NM(1, m).mask(scores).reshape(-1).tolist() == [p == m - 1 for p in perm]
