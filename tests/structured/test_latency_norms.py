"""The latency table times every LayerNorm the plan may shrink as the surgery leaves it (a
``PrunedLayerNorm`` normalises the zero-padded full width, so it costs more than the unpruned
norm on a CPU): by kept fraction, levelled by the norm's time inside the model.

A deterministic clock stands in for the wall clock: a LayerNorm costs its input's elements, a
PrunedLayerNorm twice its full width's elements; everything else its MACs (as MacClock).
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from sparseprune.structured import plan
from sparseprune.structured.latency_norms import NORM_SHAPE, _norm_seconds
from sparseprune.structured.norms import PrunedLayerNorm

from .models import ViT, randomize_bn
from .test_latency import MacClock

UNIT = 1e-9  # seconds per normalised element (a MAC costs as much: MacClock)


class NormClock(MacClock):
    def layer(self, module, inputs) -> float:
        if isinstance(module, PrunedLayerNorm):
            x = inputs[0]
            return 2 * UNIT * (x.numel() // x.shape[module.channel_dim]) * module.full_width
        if isinstance(module, nn.LayerNorm):
            return UNIT * inputs[0].numel()
        return super().layer(module, inputs)


class CountingNormClock(NormClock):
    def __init__(self) -> None:
        super().__init__()
        self.norms = 0

    def layer(self, module, inputs) -> float:
        self.norms += isinstance(module, nn.LayerNorm)
        return super().layer(module, inputs)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSEPRUNE_CACHE_DIR", str(tmp_path))
    return tmp_path


def vit_plan(timer, norm=nn.LayerNorm):
    torch.manual_seed(0)
    model = randomize_bn(ViT(norm=norm)).eval()
    x = torch.randn(2, 3, 32, 32)
    return plan(model, x, latency=0.7, calibrate=0, timer=timer, progress=False), x


def test_shrunk_layer_norms_cost_what_the_surgery_leaves(cache):
    p, x = vit_plan(NormClock())
    table = p.latency_table
    norms = [n for n in p.graph.norms
             if isinstance(p.graph.model.get_submodule(n), nn.LayerNorm)]
    assert norms and len(table.norm_items) == len(norms)
    tokens = 2 * ((32 // 8) ** 2 + 1)
    full = UNIT * tokens * 64  # one unpruned norm over [2, 17, 64]
    for times, atoms, fractions in table.norm_items:
        assert times.shape == NORM_SHAPE and atoms.size == 64
        assert fractions == (16 / 64, 32 / 64, 63 / 64, 1.0)
        # full width: the norm's own time inside the model; shrunk: a PrunedLayerNorm
        np.testing.assert_allclose(times[:, 0], [2 * full] * 3 + [full], rtol=1e-9)
        # a step, not a line to the full width: one channel removed already costs the pad
        assert _norm_seconds(times[:, 0], fractions, 0.9) == pytest.approx(2 * full)
        assert _norm_seconds(times[:, 0], fractions, 1.0) == pytest.approx(full)
    ones = np.ones(table.costs.full().size)
    base = table.latency(ones)
    # shrinking only the embedding width (the norms' channels) makes the norms dearer,
    # while the layers reading and writing that width get cheaper
    width = np.unique(np.concatenate([a for _, a, _ in table.norm_items]))
    half = ones.copy()
    half[width[: width.size // 2]] = 0.0
    norm_half = sum(_norm_seconds(t[:, 0], f, half[a].mean()) for t, a, f in table.norm_items)
    assert norm_half == pytest.approx(2 * full * len(norms))
    assert table.latency(half) < base
    # the surgery's model agrees: its norms are PrunedLayerNorms wherever the width shrank
    small = p.apply()
    shrunk = [n for n in norms if p.keep_of(p.graph.norms[n]).mean() < 1]
    assert all(isinstance(small.get_submodule(n), PrunedLayerNorm) for n in shrunk)
    torch.testing.assert_close(small(x), p.masked_model()(x), atol=1e-5, rtol=1e-5)


def test_rms_norms_are_not_timed_as_norms(cache):
    p, _ = vit_plan(NormClock(), norm=nn.RMSNorm)
    assert p.latency_table.norm_items == []


def test_norm_tables_are_cached_and_bad_entries_measured_again(cache):
    vit_plan(NormClock())
    (path,) = cache.glob("latency-*.json")
    entries = json.loads(path.read_text())
    keys = [k for k in entries if "|norm|" in k]
    assert keys and all(np.array(entries[k]).shape == NORM_SHAPE for k in keys)
    clock = CountingNormClock()
    vit_plan(clock)
    reused = clock.norms
    entries[keys[0]] = [[1.0, 2.0, 3.0]]  # wrong shape: measured again, not used
    path.write_text(json.dumps(entries))
    clock = CountingNormClock()
    vit_plan(clock)
    # one norm's curve again: its full width at least once, each shrunk fraction PAIRS times
    assert clock.norms > reused
    assert np.array(json.loads(path.read_text())[keys[0]]).shape == NORM_SHAPE


def test_timing_a_norm_leaves_the_users_hooks_alone(cache):
    torch.manual_seed(0)
    model = randomize_bn(ViT()).eval()
    seen = []
    model.norm.register_forward_hook(lambda m, a, o: seen.append(tuple(a[0].shape)))
    x = torch.randn(2, 3, 32, 32)
    plan(model, x, latency=0.7, calibrate=0, timer=NormClock(), progress=False)
    # only the model's own forwards (trace, input shapes, the split), all at full width
    assert seen and set(seen) == {(2, 17, 64)}
