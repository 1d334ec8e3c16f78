"""``sparseprune demo``: the whole pipeline on offline data, in one table.

Data: scikit-learn's 8x8 digits and MNIST-1D (generated locally by the ``mnist1d`` package).
Models: a digits MLP 64-1024-1024-10 (wide enough that kernel time matters), a digits CNN, and an
MNIST-1D MLP 40-256-256-10 for the lottery ticket. Methods, each fine-tuned the same way:

* dense baseline;
* one-shot 90 % global magnitude pruning + fine-tuning;
* iterative, 20 % of the remaining weights per round to 90 %, at the same fine-tuning budget;
* per-layer scopes at 90 %: uniform (every layer 90 %) and rates from a sensitivity analysis,
  beside the global one-shot row;
* structured channel pruning (a smaller dense model);
* lottery ticket (rewind to θ0, retrain) vs the same masks with random re-initialization.

For each: accuracy, nonzero parameters, packed size in bytes (state_dict after ``convert``) and
latency at batch 1 and 64 after ``convert`` (1 thread), vs the dense model. Seeds are fixed;
``--seeds 3`` reports mean ± std. Everything is written to an output folder named at the end.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ._modules import deepcopy_model
from ._timing import interleaved, time_calls
from .convert import convert
from .pruning import remove

__all__ = ["DemoConfig", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Budgets of one demo run (epochs are passes over the training set)."""

    base_epochs: int = 20          # dense training, digits
    ft_epochs: int = 22            # fine-tuning budget after pruning (one-shot: all after)
    iter_round_epochs: int = 1     # iterative: per round (11 rounds); the rest after the last
    lth_epochs: int = 30           # MNIST-1D MLP training (and each lottery round)
    lth_levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    sens_rates: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)
    cnn: bool = True
    timing_calls: int = 30


QUICK = DemoConfig(base_epochs=10, ft_epochs=11, iter_round_epochs=0, lth_epochs=12,
                   lth_levels=(0.9, 0.95), sens_rates=(0.5, 0.8, 0.9, 0.95, 0.98), cnn=False,
                   timing_calls=10)


def _mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, 10))


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 16, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _deploy(model: nn.Module, inputs: int, calls: int, reference: nn.Module) -> dict:
    """Make masks permanent, convert, and measure size and latency (1 thread) against the
    unpruned dense ``reference`` architecture, timed interleaved.

    convert() measures every layer at batch 1 and 64 and keeps it dense unless a packed format
    is faster at both, so no row is slower than dense by choice; a model with no layer converted
    is the reference itself, so its ratio is 1.00 by construction rather than timing noise."""
    dense = remove(deepcopy_model(model)).eval()
    sparse, report = convert(dense, example_inputs=(torch.randn(1, inputs),),
                             batch_sizes=(1, 64))
    sparse.eval()
    out = {"nonzero_params": sum(int(torch.count_nonzero(p)) for p in dense.parameters()),
           "params": sum(p.numel() for p in dense.parameters()),
           "bytes": _state_bytes(sparse), "converted": len(report.converted)}
    reference = reference.eval()
    out["formats"] = sorted({r.format for r in report.converted})
    # Per layer: (name, sparsity, format or why it stayed dense), for results.json.
    out["layers"] = [(r.name, round(r.sparsity, 3), r.format or r.reason) for r in report.layers]
    # Nothing converted and the same architecture: the reference itself (ratio 1.00 by
    # construction); a physically smaller model (structured rows) is timed against it.
    same = out["params"] == sum(p.numel() for p in reference.parameters())
    with torch.inference_mode():
        for batch in (1, 64):
            x = torch.randn(batch, inputs)
            if not report.converted and same:
                t = time_calls(lambda x=x: reference(x), calls)
                out[f"ms_b{batch}"], out[f"x_b{batch}"] = 1e3 * t, 1.0
                continue
            t, _, ratio = interleaved(lambda x=x: sparse(x), lambda x=x: reference(x), calls)
            out[f"ms_b{batch}"] = 1e3 * t
            out[f"x_b{batch}"] = ratio
    return out


@dataclass
class _Row:
    model: str
    method: str
    accs: list[float] = field(default_factory=list)
    deploy: dict = field(default_factory=dict)
    note: str = ""


def _fmt_acc(accs: list[float]) -> str:
    if len(accs) == 1:
        return f"{accs[0]:.2f}"
    return f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"


def _table(rows: list[_Row]) -> str:
    head = ["model", "method", "accuracy (%)", "nonzero params", "packed bytes", "formats",
            "b1 ms", "b1 vs dense", "b64 ms", "b64 vs dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        d = r.deploy
        cells = [r.model, r.method + (f" ({r.note})" if r.note else ""), _fmt_acc(r.accs),
                 f"{d['nonzero_params']:,}", f"{d['bytes']:,}",
                 ", ".join(d.get("formats", ())) or "dense",
                 f"{d['ms_b1']:.3f}", f"{d['x_b1']:.2f}x",
                 f"{d['ms_b64']:.3f}", f"{d['x_b64']:.2f}x"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


def run_demo(quick: bool = False, out: str | os.PathLike = "sparseprune-demo-out",
             seeds: int = 1, progress: bool = True) -> int:
    """Run the demo; returns 0. See the module docstring for what it does."""
    from .structured import plan
    from .workflow import (
        FineTuneConfig,
        FineTuner,
        evaluate,
        find_lottery_ticket,
        iterative_prune,
        plot_histories,
        sensitivity,
    )
    from .workflow import data as datasets

    cfg = QUICK if quick else DemoConfig()
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 threads on a busy 2-core box can be far slower than 1
    t_start = time.perf_counter()
    rows: dict[tuple[str, str], _Row] = {}
    histories: dict[str, list] = {}
    extras: dict[str, list] = {"sensitivity": [], "lottery": [], "layer_rates": []}

    refs: dict[str, nn.Module] = {}  # per model: the unpruned architecture latency is against

    def row(model: str, method: str, acc: float, net: nn.Module | None, inputs: int,
            note: str = "") -> None:
        r = rows.setdefault((model, method), _Row(model, method, note=note))
        r.accs.append(acc)
        if net is not None and not r.deploy:
            r.deploy = _deploy(net, inputs, cfg.timing_calls, refs[model])

    def say(text: str) -> None:
        if progress:
            print(f"[{time.perf_counter() - t_start:5.1f} s] {text}", flush=True)

    try:
        for seed in range(seeds):
            digits = datasets.digits(seed=seed)
            tuner = FineTuner(digits.loader("train", 128, shuffle=True, seed=seed),
                              digits.loader("test", 1024), FineTuneConfig(lr=1e-3))
            val = digits.loader("val", 1024)
            ft = dict(epochs=0, final_epochs=cfg.ft_epochs, lr_scale=0.1, tolerance=None,
                      progress=progress)

            # ---- digits MLP 64-1024-1024-10 ------------------------------------------------
            name = "digits MLP 64-1024-1024-10"
            _seed_everything(seed)
            dense = _mlp(64, 1024)
            say(f"seed {seed}: {name}: training the dense baseline ({cfg.base_epochs} epochs)")
            tuner.train(dense, cfg.base_epochs)
            refs.setdefault(name, deepcopy_model(dense))
            row(name, "dense", tuner.evaluate(dense), dense, 64)

            m = deepcopy_model(dense)
            h_one = iterative_prune(m, [0.9], tuner.train, tuner.evaluate,
                                    method="one-shot 90% (global)", **ft)
            row(name, "one-shot 90 % + FT", h_one.final.accuracy, m, 64,
                f"global, last layer x0.5, {cfg.ft_epochs} ep")

            m = deepcopy_model(dense)
            per = cfg.iter_round_epochs
            rounds, last = iterative_budget(cfg.ft_epochs, per)
            h_it = iterative_prune(m, 0.9, tuner.train, tuner.evaluate, rate=0.2, epochs=per,
                                   final_epochs=last, lr_scale=0.1,
                                   tolerance=None, method="iterative 20%/round", progress=progress)
            row(name, "iterative 20 %/round to 90 % + FT", h_it.final.accuracy, m, 64,
                f"{rounds} rounds, {per} ep each + {last} ep at the end")

            m = deepcopy_model(dense)
            h_uni = iterative_prune(m, [0.9], tuner.train, tuner.evaluate, scope="layer",
                                    protect=None, method="uniform 90% per layer", **ft)
            row(name, "uniform per-layer 90 % + FT", h_uni.final.accuracy, m, 64)

            say(f"seed {seed}: {name}: sensitivity analysis on {len(digits.y_val)} held-out "
                "images")
            sens = sensitivity(dense, lambda net, val=val: evaluate(net, val),
                               rates=cfg.sens_rates)
            rates = sens.layer_rates(0.9)
            extras["sensitivity"].append(sens.to_dict())
            extras["layer_rates"].append(rates)
            if seed == 0:
                say("\n" + sens.table(0.9))
                sens.plot(outdir / "sensitivity_digits_mlp.png",
                          title=f"{name}: one layer pruned alone")
            m = deepcopy_model(dense)
            h_sens = iterative_prune(m, [0.9], tuner.train, tuner.evaluate, layer_sparsity=rates,
                                     method="sensitivity rates (90% total)", **ft)
            row(name, "sensitivity per-layer rates, 90 % + FT", h_sens.final.accuracy, m, 64,
                ", ".join(f"{k}: {v:.0%}" for k, v in rates.items()))

            small = plan(dense, digits.x_train[:2], amount=0.75).apply()
            tuner.train(small, cfg.ft_epochs, lr_scale=0.1)
            row(name, "structured: 75 % of hidden units removed + FT", tuner.evaluate(small),
                small, 64)
            histories.setdefault("digits_mlp", []).append([h_one, h_it, h_uni, h_sens])

            # ---- digits CNN -----------------------------------------------------------------
            if cfg.cnn:
                name = "digits CNN (2 conv + 2 FC)"
                _seed_everything(seed)
                dense = _cnn()
                say(f"seed {seed}: {name}: dense + one-shot + iterative + structured")
                tuner.train(dense, cfg.base_epochs)
                refs.setdefault(name, deepcopy_model(dense))
                row(name, "dense", tuner.evaluate(dense), dense, 64)
                m = deepcopy_model(dense)
                h = iterative_prune(m, [0.9], tuner.train, tuner.evaluate,
                                    method="one-shot 90%", **ft)
                row(name, "one-shot 90 % + FT", h.final.accuracy, m, 64,
                    "global; first conv dense, last layer x0.5")
                # Global scope leaves the conv near 50 % (its weights are larger), where dense
                # convolution wins; per layer, the conv is 90 % sparse too and runs packed.
                m = deepcopy_model(dense)
                h = iterative_prune(m, [0.9], tuner.train, tuner.evaluate, scope="layer",
                                    method="one-shot 90% per layer", **ft)
                row(name, "one-shot per-layer 90 % + FT", h.final.accuracy, m, 64,
                    "every layer 90 %; first conv dense, last layer x0.5")
                m = deepcopy_model(dense)
                h = iterative_prune(m, 0.9, tuner.train, tuner.evaluate, rate=0.2, epochs=per,
                                    final_epochs=last, lr_scale=0.1,
                                    tolerance=None, method="iterative", progress=progress)
                row(name, "iterative 20 %/round to 90 % + FT", h.final.accuracy, m, 64)
                small = plan(dense, digits.x_train[:2], amount=0.5).apply()
                tuner.train(small, cfg.ft_epochs, lr_scale=0.1)
                row(name, "structured: 50 % of channels removed + FT", tuner.evaluate(small),
                    small, 64)

            # ---- MNIST-1D MLP: lottery ticket ---------------------------------------------
            name = "MNIST-1D MLP 40-256-256-10"
            m1 = datasets.mnist1d(seed=seed)
            tuner1 = FineTuner(m1.loader("train", 64, shuffle=True, seed=seed),
                               m1.loader("test", 1024), FineTuneConfig(lr=1e-3))
            _seed_everything(seed)
            net = _mlp(40, 256)
            refs.setdefault(name, _mlp(40, 256))
            say(f"seed {seed}: {name}: lottery ticket, levels {list(cfg.lth_levels)}, "
                f"{cfg.lth_epochs} epochs per round")
            deployed: dict[float, dict] = {}

            def measure_ticket(r, net, deployed=deployed, ref=refs[name]):
                for level in (0.9, 0.95):
                    if abs(r.target - level) < 1e-9:
                        deployed[level] = _deploy(net, 40, cfg.timing_calls, ref)

            lt = find_lottery_ticket(net, list(cfg.lth_levels), tuner1.train, tuner1.evaluate,
                                     epochs=cfg.lth_epochs, control=[0.9, 0.95],
                                     seed=1000 + seed, progress=progress,
                                     on_round=measure_ticket if seed == 0 else None)
            extras["lottery"].append(lt.to_dict())
            _seed_everything(seed)
            row(name, "dense", lt.ticket.rounds[0].accuracy, _mlp(40, 256), 40)
            for hist, label in ((lt.ticket, "lottery ticket {:.0%} (rewind θ0)"),
                                (lt.control, "same mask, random re-init {:.0%}")):
                for r in hist.rounds[1:]:
                    if any(abs(r.target - lv) < 1e-9 for lv in (0.9, 0.95)):
                        method = label.format(r.target)
                        twin = deployed.get(0.9 if r.target < 0.925 else 0.95, {})
                        rows.setdefault((name, method), _Row(name, method, deploy=twin))
                        rows[(name, method)].accs.append(r.accuracy)
            histories.setdefault("lottery", []).append([lt.ticket, lt.control])

        table = _table(list(rows.values()))
        h0 = histories["digits_mlp"][0]
        plot_histories(h0, outdir / "digits_mlp_accuracy_vs_sparsity.png",
                       title="digits MLP 64-1024-1024-10, seed 0")
        lt0 = histories["lottery"][0]
        plot_histories(lt0, outdir / "lottery_mnist1d.png",
                       title="MNIST-1D MLP: lottery ticket vs random re-init, seed 0")
        elapsed = time.perf_counter() - t_start
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        summary = _acceptance(rows)
        md = [f"# sparseprune demo ({'quick' if quick else 'default'}, {seeds} seed(s))", "",
              f"Machine: {machine}; 1 thread for training and latency; {elapsed:.0f} s.", "",
              table, "", "## Findings", "", *[f"- {s}" for s in summary], ""]
        (outdir / "results.md").write_text("\n".join(md))
        (outdir / "results.json").write_text(json.dumps({
            "config": cfg.__dict__, "seeds": seeds, "machine": machine, "seconds": elapsed,
            "rows": [{"model": r.model, "method": r.method, "note": r.note,
                      "accuracy": r.accs, **r.deploy} for r in rows.values()],
            "findings": summary,
            "histories": {k: [[h.to_dict() for h in hs] for hs in v]
                          for k, v in histories.items()},
            **extras}, indent=1))
        print()
        print(table)
        print()
        for s in summary:
            print(f"- {s}")
        print(f"\n{elapsed:.0f} s. Wrote results.md, results.json and plots to "
              f"{outdir.resolve()}")
    finally:
        torch.set_num_threads(threads)
    return 0


def iterative_budget(ft_epochs: int, per_round: int, final: float = 0.9,
                     rate: float = 0.2) -> tuple[int, int]:
    """``(rounds, final_epochs)`` of the demo's iterative run: the rounds of
    ``Geometric.from_rate(final, rate)`` at ``per_round`` epochs each, the rest of the
    ``ft_epochs`` budget after the last round (0 when the rounds alone use it up)."""
    from .pruning import Geometric

    rounds = Geometric.from_rate(final, rate).steps
    return rounds, max(0, ft_epochs - per_round * rounds)


def _acceptance(rows: dict[tuple[str, str], _Row]) -> list[str]:
    """Plain-language comparisons (mean ± std over seeds when there are several)."""

    def acc(model: str, method: str) -> list[float]:
        return rows[(model, method)].accs if (model, method) in rows else []

    def diff(a: list[float], b: list[float]) -> str:
        d = [x - y for x, y in zip(a, b, strict=True)]
        if len(d) == 1:
            return f"{d[0]:+.2f} pt"
        return f"{statistics.mean(d):+.2f} ± {statistics.stdev(d):.2f} pt (n={len(d)})"

    out = []
    mlp = "digits MLP 64-1024-1024-10"
    dense = acc(mlp, "dense")
    one = acc(mlp, "one-shot 90 % + FT")
    it = acc(mlp, "iterative 20 %/round to 90 % + FT")
    uni = acc(mlp, "uniform per-layer 90 % + FT")
    sens = acc(mlp, "sensitivity per-layer rates, 90 % + FT")
    if dense and one:
        out.append(f"(a) digits MLP, one-shot 90 % global + fine-tuning vs dense: "
                   f"{diff(one, dense)}")
    if one and it:
        out.append(f"(c) iterative vs one-shot at the same fine-tuning budget: {diff(it, one)}")
    if sens and uni:
        out.append(f"(d) sensitivity rates vs uniform per-layer (both 90 % of the MLP's weights): "
                   f"{diff(sens, uni)}; global (one-shot row) vs uniform: {diff(one, uni)}")
    m1 = "MNIST-1D MLP 40-256-256-10"
    for s in (90, 95):
        t = acc(m1, f"lottery ticket {s}% (rewind θ0)")
        c = acc(m1, f"same mask, random re-init {s}%")
        if t and c:
            out.append(f"(b) lottery ticket vs random re-init at {s} %: {diff(t, c)}; "
                       f"ticket vs dense: {diff(t, acc(m1, 'dense'))}")
    return out
