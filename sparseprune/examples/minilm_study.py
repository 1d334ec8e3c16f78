"""The MiniLM study: prune all-MiniLM-L6-v2 one-shot, recover it by distillation, run it sparse.

For each method (criterion × pattern × sparsity) the 36 encoder Linears are pruned on the
calibration split (one sentence per batch: no padding in the SparseGPT Hessians), distilled
toward the dense model's embeddings on the training split with the masks fixed, made permanent
(``remove``), converted with the engine's measured per-layer choice, and scored on the held-out
split (which neither calibration nor distillation sees):

* quality: cosine to the dense embedding, Spearman correlation of all pairwise similarities
  against dense, paraphrase margin (:mod:`.metrics`), before and after recovery;
* speed: end-to-end embedding latency, dense model vs converted model, in one interleaved run
  per (batch, threads) so only the ratio is read; one sentence and 32 sentences; the model is
  converted at each thread count it is timed at (convert measures at the current one);
* size: bytes of the 36 encoder Linears' weights, packed vs dense;
* exactness: the converted model's embeddings against the pruned dense model's (max abs).

Attention matmuls, embeddings and LayerNorms stay dense (they are not Linear layers).
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .. import convert
from .._timing import calls_for, interleaved
from ..pruning import prune, remove
from ..pruning.schedules import Cubic
from ..workflow import distill
from .metrics import embedding_metrics, paraphrase_margin
from .minilm import MiniLM, MiniLMTokenizer, encode, load_minilm
from .text import PARAPHRASES, docstring_sentences, splits

__all__ = ["METHODS", "Method", "StudyConfig", "StudyRow", "parse_method", "run_study",
           "study_table"]

PRUNED = ["encoder"]  # the 36 encoder Linears (LayerNorms under it are skipped and reported)


@dataclass(frozen=True)
class Method:
    """One pruning recipe: ``criterion`` with ``pattern`` at ``sparsity`` (None for N:M), in
    ``stages`` prune-then-distill rounds (targets on a cubic schedule; 1 = one-shot)."""

    criterion: str
    pattern: str = "unstructured"
    sparsity: float | None = None
    stages: int = 1

    @property
    def label(self) -> str:
        what = self.pattern if self.sparsity is None else f"{self.sparsity:.0%}"
        return f"{self.criterion} {what}" + (f" ({self.stages} stages)" if self.stages > 1
                                              else "")


def parse_method(spec: str) -> Method:
    """``"sparsegpt-70"`` -> SparseGPT at 70 %, ``"wanda-2:4"`` -> Wanda with 2:4,
    ``"sparsegpt-90x3"`` -> SparseGPT to 90 % in 3 prune-and-distill stages."""
    criterion, sep, rest = spec.strip().lower().partition("-")
    if not sep or not rest:
        raise ValueError(f"method {spec!r}: expected criterion-sparsity (sparsegpt-70) or "
                         "criterion-N:M (wanda-2:4)")
    what, x, stage_text = rest.rpartition("x")
    stages = 1
    if x and what:  # "90x3"; a bare "x" is not a stage count
        if not stage_text.isdigit() or int(stage_text) < 1:
            raise ValueError(f"method {spec!r}: stages {stage_text!r} must be an int >= 1")
        rest, stages = what, int(stage_text)
    if ":" in rest:
        if stages > 1:
            raise ValueError(f"method {spec!r}: stages apply to unstructured sparsity only")
        return Method(criterion, rest, None)
    try:
        percent = float(rest)
    except ValueError:
        raise ValueError(f"method {spec!r}: {rest!r} is neither a percentage nor N:M") from None
    if not 0 < percent < 100:
        raise ValueError(f"method {spec!r}: sparsity {percent:g} % is outside (0, 100)")
    return Method(criterion, "unstructured", percent / 100, stages)


METHODS = ("magnitude-50", "wanda-50", "sparsegpt-50", "wanda-2:4", "sparsegpt-2:4",
           "sparsegpt-70", "sparsegpt-90")


@dataclass(frozen=True)
class StudyConfig:
    """What :func:`run_study` runs.

    Attributes:
        methods: :func:`parse_method` strings.
        calibration / heldout: split sizes (sentences).
        distill_epochs: passes over the training data per method (0: no recovery), split
            evenly over a staged method's stages.
        distill_lr / distill_batch: AdamW peak learning rate (cosine decay) and sentences
            per step.
        hidden_weight: weight of the per-layer hidden-state MSE (all 6 encoder layers) next to
            the embedding's cosine loss; 0 matches the embedding only.
        augment: add as many sentence pairs joined into one text as there are training
            sentences (new contexts for the same words: the help texts hold ~1,600 training
            sentences only).
        docstrings: also train on :func:`~.text.docstring_sentences` (~11,000 sentences from
            the standard library's docstrings; held-out and calibration sets unchanged). An
            epoch is then ~7x longer: set ``distill_epochs`` accordingly.
        distill_seconds: wall-time cap on each method's distillation (None: none).
        threads / batch_sizes: the latency grid (sentences per call).
        timing_s: seconds per timed round (7 interleaved rounds per cell).
        seed: split and shuffling seed.
    """

    methods: tuple[str, ...] = METHODS
    calibration: int = 128
    heldout: int = 256
    distill_epochs: float = 3.0
    distill_lr: float = 3e-4
    distill_batch: int = 16
    hidden_weight: float = 1.0
    augment: bool = True
    docstrings: bool = False
    distill_seconds: float | None = None
    threads: tuple[int, ...] = (1, 2)
    batch_sizes: tuple[int, ...] = (1, 32)
    timing_s: float = 0.3
    seed: int = 0


#: Seconds, not minutes: for tests and ``--quick`` (numbers are not meaningful).
QUICK = StudyConfig(methods=("wanda-50", "sparsegpt-2:4"), calibration=8, heldout=48,
                    distill_epochs=0.02, threads=(1,), batch_sizes=(1,), timing_s=0.02)


@dataclass
class StudyRow:
    """One method's outcome (``latency``: "b{batch}-t{threads}" -> dense/sparse ratio).

    The model is converted once per thread count (``formats_by_threads``: "t{threads}" ->
    format -> layers); ``formats``, ``layers``, ``packed_bytes`` and ``max_abs_diff`` describe
    the conversion at the first thread count of the config. ``oneshot`` is the quality right
    after pruning (a staged method: after its last stage's pruning, before its recovery)."""

    method: str
    sparsity: float
    oneshot: dict[str, float]
    recovered: dict[str, float]
    margin: float
    latency: dict[str, float] = field(default_factory=dict)
    packed_bytes: int = 0
    dense_bytes: int = 0
    converted: int = 0
    formats: dict[str, int] = field(default_factory=dict)
    formats_by_threads: dict[str, dict[str, int]] = field(default_factory=dict)
    max_abs_diff: float = 0.0
    layers: list[dict] = field(default_factory=list)
    prune_s: float = 0.0
    distill_s: float = 0.0
    distill_steps: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


def _batches(tokenizer: MiniLMTokenizer, sentences: Sequence[str], size: int,
             seed: int) -> list[dict[str, Tensor]]:
    """Length-sorted batches (little padding), in a seeded random order."""
    ordered = sorted(sentences, key=len)
    out = [tokenizer(ordered[i:i + size]) for i in range(0, len(ordered), size)]
    random.Random(seed).shuffle(out)
    return out


def _encoder_linear_bytes(model: nn.Module) -> int:
    return sum(m.weight.numel() * m.weight.element_size() for n, m in model.named_modules()
               if n.startswith("encoder.") and isinstance(m, nn.Linear))


def _latency(dense: nn.Module, sparse: nn.Module, inputs: dict[str, Tensor], threads: int,
             timing_s: float) -> float:
    """dense time / sparse time on ``inputs`` at ``threads``, interleaved rounds, median."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            def run_sparse() -> object:
                return sparse(**inputs)

            def run_dense() -> object:
                return dense(**inputs)

            calls = calls_for(run_dense, timing_s)
            return interleaved(run_sparse, run_dense, calls)[2]
    finally:
        torch.set_num_threads(saved)


def _one_method(method: Method, dense: MiniLM, tokenizer: MiniLMTokenizer, data: dict,
                config: StudyConfig, progress: bool) -> StudyRow:
    student = copy.deepcopy(dense)
    for p in student.parameters():
        p.requires_grad_(True)  # the teacher is frozen; its copy is trained
    # Stage targets on a cubic schedule (Zhu & Gupta): one stage is one-shot pruning. Each
    # stage prunes the distilled model further (masks are ANDed, SparseGPT recalibrates on the
    # current weights) and gets an equal share of the distillation steps.
    targets = ([method.sparsity] if method.sparsity is None or method.stages == 1 else
               [Cubic(method.sparsity, method.stages).sparsity_at(i)
                for i in range(1, method.stages + 1)])
    total = (max(1, round(config.distill_epochs * len(data["train"])))
             if config.distill_epochs > 0 else 0)
    hidden = ([f"encoder.layer.{i}" for i in range(len(dense.encoder.layer))]
              if config.hidden_weight else [])
    prune_s, steps, distill_s = 0.0, 0, 0.0
    for stage, target in enumerate(targets):
        t0 = time.perf_counter()
        report = prune(student, target, pattern=method.pattern,
                       criterion=method.criterion, include=PRUNED, protect=None,
                       calibration=(data["calibration"] if method.criterion != "magnitude"
                                    else None))
        prune_s += time.perf_counter() - t0
        if stage == len(targets) - 1:  # staged methods: after the last prune, before its recovery
            oneshot = embedding_metrics(data["reference"],
                                        encode(student, tokenizer, data["heldout"]))
        share = total // len(targets) + (stage < total % len(targets))
        if share > 0:
            # Eval mode: no dropout, the student matches the teacher it is compared with.
            seconds = (None if config.distill_seconds is None
                       else config.distill_seconds / len(targets))
            result = distill(student, dense, data["train"], steps=share, lr=config.distill_lr,
                             warmup_steps=min(20, share // 10), decay="cosine",
                             match_modules=hidden, hidden_weight=config.hidden_weight,
                             train_mode=False, max_seconds=seconds,
                             progress=progress, seed=config.seed + stage)
            steps, distill_s = steps + result.steps, distill_s + result.seconds
    remove(student)
    student.eval()
    masked = encode(student, tokenizer, data["heldout"])
    recovered = embedding_metrics(data["reference"], masked)
    a, b = (encode(student, tokenizer, list(side)) for side in zip(*PARAPHRASES, strict=True))
    margin = paraphrase_margin(a, b)
    example = data["timing"][1]
    rows = {b: int(x["attention_mask"].sum()) for b, x in data["timing"].items()}
    row = StudyRow(method=method.label, sparsity=report.total_sparsity, oneshot=oneshot,
                   recovered=recovered, margin=margin, prune_s=prune_s, distill_s=distill_s,
                   distill_steps=steps, dense_bytes=_encoder_linear_bytes(dense))
    # Converted once per thread count: convert measures each layer's formats at the thread
    # count it runs under, and the ranking changes with it (on 2 vCPUs, MiniLM's 384-wide
    # layers at one sentence: SELL 1.5-1.9x over dense at 1 thread, 1.0-1.7x at 2, where CSR
    # or dense can win); a model converted at 2 threads and timed at 1 ran ~15 % slower.
    saved = torch.get_num_threads()
    for ti, threads in enumerate(config.threads):
        torch.set_num_threads(threads)
        try:
            sparse, conv = convert(student, example_inputs=(example["input_ids"],
                                                            example["attention_mask"]),
                                   batch_sizes=sorted(set(rows.values())))
        finally:
            torch.set_num_threads(saved)
        sparse.eval()
        counts: dict[str, int] = {}
        for layer in conv.layers:
            if layer.format is not None:
                counts[layer.format] = counts.get(layer.format, 0) + 1
        row.formats_by_threads[f"t{threads}"] = counts
        if ti == 0:  # the table's format, bytes and exactness columns: the first thread count
            row.max_abs_diff = float((encode(sparse, tokenizer, data["heldout"])
                                      - masked).abs().max())
            for layer in conv.layers:
                row.layers.append({"name": layer.name, "format": layer.format or "dense",
                                   "sparsity": round(layer.sparsity, 4),
                                   "speedup": layer.speedup, "how": layer.how or layer.reason,
                                   "measured": [list(m) for m in layer.measured]})
            row.converted = sum(counts.values())
            row.formats = dict(counts)
            row.packed_bytes = sum(r.nbytes if r.format else r.dense_bytes
                                   for r in conv.layers)
        for batch, inputs in data["timing"].items():
            row.latency[f"b{batch}-t{threads}"] = _latency(dense, sparse, inputs, threads,
                                                           config.timing_s)
    return row


def run_study(config: StudyConfig = StudyConfig(), *, progress: bool = True,
              model: tuple[MiniLM, MiniLMTokenizer] | None = None) -> list[StudyRow]:
    """Run every method of ``config``; returns one :class:`StudyRow` each.

    Args:
        config: the grid and budgets.
        progress: tqdm bars for sequential pruning and distillation.
        model: an already loaded ``(model, tokenizer)`` (default: :func:`load_minilm`).
    """
    methods = [parse_method(m) for m in config.methods]
    dense, tokenizer = model if model is not None else load_minilm()
    dense.eval()
    for p in dense.parameters():
        p.requires_grad_(False)  # the teacher; students are deep copies made trainable below
    split = splits(n_calibration=config.calibration, n_heldout=config.heldout, seed=config.seed)
    heldout = split.heldout
    train = list(split.train)
    if config.augment:
        partners = random.Random(config.seed + 1).sample(train, len(train))
        train += [f"{a} {b}" for a, b in zip(split.train, partners, strict=True)]
    if config.docstrings:
        train += docstring_sentences()
    timing_sentences = sorted(heldout, key=len)
    median = timing_sentences[len(timing_sentences) // 2]
    data = {
        "calibration": [tokenizer([s]) for s in split.calibration],
        "train": _batches(tokenizer, train, config.distill_batch, config.seed),
        "heldout": heldout,
        "reference": encode(dense, tokenizer, heldout),
        "timing": {b: tokenizer([median] if b == 1 else heldout[:b])
                   for b in config.batch_sizes},
    }
    a, b = (encode(dense, tokenizer, list(side)) for side in zip(*PARAPHRASES, strict=True))
    perfect = {"cosine": 1.0, "spearman": 1.0}
    size = _encoder_linear_bytes(dense)
    rows = [StudyRow(method="dense", sparsity=0.0, oneshot=perfect, recovered=perfect,
                     margin=paraphrase_margin(a, b), packed_bytes=size, dense_bytes=size,
                     latency={f"b{bs}-t{t}": 1.0 for bs in config.batch_sizes
                              for t in config.threads})]
    for method in methods:
        rows.append(_one_method(method, dense, tokenizer, data, config, progress))
    return rows


def study_table(rows: Sequence[StudyRow]) -> str:
    """A Markdown table: quality before/after recovery, speedups, bytes."""
    cells = sorted({k for r in rows for k in r.latency},
                   key=lambda k: (int(k.split("-")[0][1:]), int(k.split("-")[1][1:])))
    head = ["method", "sparsity", "cosine (one-shot → recovered)", "Spearman", "margin",
            *[f"speedup {k.replace('-', ' ')}" for k in cells], "encoder bytes", "formats"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        by_threads = r.formats_by_threads or {"": r.formats}
        fmts = "; ".join(
            (f"{t}: " if len(by_threads) > 1 else "")
            + (", ".join(f"{n} {f}" for f, n in sorted(c.items())) or "all dense")
            for t, c in by_threads.items())
        lines.append("| " + " | ".join([
            r.method, f"{r.sparsity:.2f}",
            f"{r.oneshot['cosine']:.3f} → {r.recovered['cosine']:.3f}",
            f"{r.oneshot['spearman']:.3f} → {r.recovered['spearman']:.3f}",
            f"{r.margin:.3f}",
            *[f"{r.latency[k]:.2f}×" if k in r.latency else "-" for k in cells],
            f"{r.packed_bytes / max(r.dense_bytes, 1):.0%}", fmts]) + " |")
    return "\n".join(lines)


def plot_study(rows: Sequence[StudyRow], path: str, cell: str = "b1-t1") -> bool:
    """Quality (recovered cosine) against speedup at ``cell``; False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10")
    for i, r in enumerate(rows):
        x = r.latency.get(cell)
        if x is None:
            continue
        color = colors(i % 10)
        # One-shot (cross) to recovered (dot) at the same speed: what distillation bought.
        if r.method != "dense":
            ax.plot([x, x], [r.oneshot["cosine"], r.recovered["cosine"]], color=color,
                    alpha=0.5, lw=1)
            ax.scatter([x], [r.oneshot["cosine"]], s=18, marker="x", color=color)
        ax.scatter([x], [r.recovered["cosine"]], s=36, color=color, label=r.method)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_xlabel(f"end-to-end speedup vs dense ({cell.replace('-', ', ')})")
    ax.set_ylabel("cosine to the dense embedding (held out)")
    ax.set_title("all-MiniLM-L6-v2: one-shot (x) and after distillation (dot)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def run_study_command(config: StudyConfig, out: str, progress: bool = True) -> int:
    """``sparseprune demo --model minilm``: run, print the table, write results.{md,json,png}."""
    import json
    from pathlib import Path

    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = run_study(config, progress=progress)
    table = study_table(rows)
    note = (f"all-MiniLM-L6-v2, held-out sentences: {config.heldout}; calibration "
            f"{config.calibration}; distillation {config.distill_epochs:g} epochs (lr "
            f"{config.distill_lr:g}, hidden weight {config.hidden_weight:g}, augment "
            f"{config.augment}, docstrings {config.docstrings}); "
            f"{torch.get_num_threads()} threads available; {time.perf_counter() - t0:.0f} s")
    print(table + "\n\n" + note)
    (outdir / "minilm_results.md").write_text(table + "\n\n" + note + "\n")
    (outdir / "minilm_results.json").write_text(json.dumps(
        {"config": asdict(config), "rows": [r.as_dict() for r in rows]}, indent=1))
    plotted = plot_study(rows, str(outdir / "minilm_quality_vs_speed.png"))
    print(f"wrote {outdir}/minilm_results.md, .json" + (", minilm_quality_vs_speed.png"
                                                       if plotted else ""))
    return 0
