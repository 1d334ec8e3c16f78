"""sparseprune against DeepSparse 1.8.0 on one 4-layer MLP (issue #10's peer row).

The model: 4 x ``nn.Linear(4096, 4096)`` with ReLU between, magnitude-pruned to 90 % per layer
with ``sparseprune.prune`` (no layer protected), then run three ways on the same weights:
torch dense (the masked model with the zeros in), ``sparseprune.convert(model,
example_inputs=x)`` and DeepSparse's engine on an ONNX file of the same weights.

DeepSparse was deprecated in 2025 and needs its own venv (it pins ``numpy<2`` and an old
``onnx``)::

    python3 -m venv /work/dsvenv
    /work/dsvenv/bin/pip install deepsparse==1.8.0 "numpy<2" onnx==1.14.1
    PYTHONPATH=. python bench/deepsparse_mlp.py --ds-python /work/dsvenv/bin/python

This script plays both parts: run by the project's Python it builds, prunes and times torch and
sparseprune, writes the weights to a scratch ``.npz``, and starts itself under ``--ds-python``
with ``--worker``, which writes the ONNX graph (Gemm + Relu, opset 13) with ``onnx.helper``,
compiles it for the batch and core count and times it. Rounds interleave the three so that a
noisy neighbour hits all of them alike; the table gives the median per method, ms per call.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

WIDTH = 4096
LAYERS = 4


def _time_calls(fn, min_time: float) -> float:
    """Best per-call seconds over 5 batches of calls, each lasting about min_time / 5.

    Not ``sparseprune._timing``: the DeepSparse worker runs in a venv without torch or
    sparseprune, and all three methods must be timed the same way."""
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    n = max(1, int(min_time / 5 / once))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best


def worker(args: argparse.Namespace) -> None:
    """DeepSparse side (its own venv): ONNX from the weights, compile, time; prints JSON."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    arrays = np.load(args.weights)
    nodes, inits = [], []
    prev = "x"
    for i in range(LAYERS):
        w, b = arrays[f"w{i}"], arrays[f"b{i}"]
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        out = f"g{i}" if i < LAYERS - 1 else "y"
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out], transB=1))
        if i < LAYERS - 1:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            prev = f"r{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [args.batch, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [args.batch, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path = os.path.join(os.path.dirname(args.weights), f"mlp_b{args.batch}.onnx")
    onnx.save(model, path)

    from deepsparse import compile_model

    engine = compile_model(path, batch_size=args.batch, num_cores=args.threads)
    x = np.random.default_rng(0).standard_normal((args.batch, WIDTH), dtype=np.float32)
    y = engine.run([x])[0]
    seconds = _time_calls(lambda: engine.run([x]), args.min_time)
    print(json.dumps({"seconds": seconds, "checksum": float(np.abs(y).sum())}))


def build_model():
    import torch
    from torch import nn

    import sparseprune

    torch.manual_seed(0)
    layers = []
    for i in range(LAYERS):
        layers.append(nn.Linear(WIDTH, WIDTH))
        if i < LAYERS - 1:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).eval()
    sparseprune.prune(model, 0.9, protect=None)
    sparseprune.remove(model)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ds-python", default="/work/dsvenv/bin/python",
                        help="the Python of a venv with deepsparse 1.8.0")
    parser.add_argument("--batch", default="1,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.batch, args.threads = int(args.batch), int(args.threads)
        worker(args)
        return

    import copy

    import numpy as np
    import torch

    import sparseprune

    if not os.path.exists(args.ds_python):
        print(f"no DeepSparse venv at {args.ds_python} (see this script's docstring); "
              "timing torch and sparseprune only")
    dense = build_model()
    scratch = tempfile.mkdtemp(prefix="sparseprune-ds-")
    weights = os.path.join(scratch, "mlp.npz")
    lins = [m for m in dense if isinstance(m, torch.nn.Linear)]
    np.savez(weights, **{f"w{i}": m.weight.detach().numpy() for i, m in enumerate(lins)},
             **{f"b{i}": m.bias.detach().numpy() for i, m in enumerate(lins)})
    batches = [int(b) for b in args.batch.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    rows = []
    for b in batches:
        x = torch.randn(b, WIDTH)
        for t in threads:
            torch.set_num_threads(t)
            sparse, report = sparseprune.convert(copy.deepcopy(dense), example_inputs=x)
            print(report, file=sys.stderr)
            with torch.no_grad():
                err = (sparse(x) - dense(x)).abs().max().item()
            times = {"torch dense": [], "sparseprune": [], "DeepSparse 1.8.0": []}
            for _ in range(args.rounds):
                with torch.no_grad():
                    for name, model in (("torch dense", dense), ("sparseprune", sparse)):
                        times[name].append(_time_calls(lambda m=model, x=x: m(x), args.min_time))
                if os.path.exists(args.ds_python):
                    out = subprocess.run(
                        [args.ds_python, os.path.abspath(__file__), "--worker", "--weights",
                         weights, "--batch", str(b), "--threads", str(t), "--min-time",
                         str(args.min_time)], capture_output=True, text=True, check=True)
                    times["DeepSparse 1.8.0"].append(json.loads(out.stdout.splitlines()[-1])
                                                     ["seconds"])
            med = {k: statistics.median(v) for k, v in times.items() if v}
            rows.append((b, t, med, err))
            print(f"batch {b}, {t} thread(s): " + ", ".join(
                f"{k} {v * 1e3:.2f} ms" for k, v in med.items()) + f" (max |diff| {err:.1e})",
                file=sys.stderr)
    print("| batch | threads | torch dense (ms) | DeepSparse (ms) | sparseprune (ms) | "
          "sparseprune vs dense | sparseprune vs DeepSparse |")
    print("|---|---|---|---|---|---|---|")
    for b, t, med, _ in rows:
        ds = med.get("DeepSparse 1.8.0")
        ds_ms = f"{ds * 1e3:.2f}" if ds else "n/a"
        vs_ds = f"{ds / med['sparseprune']:.2f}x" if ds else "n/a"
        print(f"| {b} | {t} | {med['torch dense'] * 1e3:.2f} | {ds_ms} | "
              f"{med['sparseprune'] * 1e3:.2f} | {med['torch dense'] / med['sparseprune']:.2f}x | "
              f"{vs_ds} |")

if __name__ == "__main__":
    main()
