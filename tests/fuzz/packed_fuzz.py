"""Bounded mutation fuzzer of the paths that read packed sparse weights.

    python -m tests.fuzz.packed_fuzz --path eager --cases 2000 --seed 0
    python -m tests.fuzz.packed_fuzz --path file --seed 0 --case 1234   # replay one case

Paths (tests/fuzz/paths.py, tests/fuzz/export_path.py): ``eager`` (a mutated ``state_dict()``
loaded into a fresh layer), ``file`` (a mutated ``sparseprune.save`` file given to
``sparseprune.load``), ``export`` (an exported, saved and reloaded program whose constants are
mutated in place) and ``cli`` (mutated state_dict files given to ``sparseprune inspect`` and
``convert``), each over every format that applies. A case must end in a refusal (ValueError;
the CLI: exit code 2 and a message) or a correct result; anything else is counted as ``wrong``
or ``error`` and listed in the summary.

Deterministic: the layers come from ``--seed``, case ``i`` from its own generator seeded with
(seed, path, i), so ``--case i`` replays it alone (with the traceback of an unexpected
exception). Bounded: small layers, one process, a watchdog that ends a case running past
``--case-timeout`` seconds with the stacks of all threads (exit status 1), and an address-space
limit so a runaway allocation fails instead of swapping. Files go to a temporary directory.

Before each case one line ``case i: <format> <mutation kind>: <description>`` goes to stderr,
so after a crash the last line names the case. At the end one JSON line goes to stdout: path,
seed, cases, wall_s, outcome counts overall / per format / per mutation kind, the failures
grouped by what went wrong, and the first failures in full. Exit status 0: every case ended
as expected; 1: some did not (see the summary); other: a crash (negative: killed by a signal).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import random
import re
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict

import torch

from .mutations import ALL_BUFFERS

OUTCOMES = ("refused", "refused_keys", "loaded", "wrong", "error")
FAILURES = ("wrong", "error")
PATHS = ("eager", "file", "export", "cli")
ADDRESS_SPACE_LIMIT = 8 << 30  # the export path peaks near 1 GiB


def _limit_memory() -> None:
    """Caps the address space (Linux), so an allocation a mutation tricks the library into
    fails at once rather than exhausting the machine."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not Linux
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = ADDRESS_SPACE_LIMIT if hard == resource.RLIM_INFINITY else min(hard,
                                                                           ADDRESS_SPACE_LIMIT)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _make_path(name: str, seed: int, tmp: str):
    from .paths import CliPath, EagerPath, FilePath

    if name == "export":
        from .export_path import ExportPath

        return ExportPath(seed, tmp)
    return {"eager": EagerPath, "file": FilePath, "cli": CliPath}[name](seed, tmp)


def case_rng(seed: int, path: str, index: int) -> tuple[random.Random, torch.Generator]:
    """The generators of one case: independent of every other case, so it replays alone."""
    rng = random.Random(f"{seed}:{path}:{index}")
    gen = torch.Generator().manual_seed(rng.getrandbits(63))
    torch.manual_seed(rng.getrandbits(63))
    return rng, gen


def _group(detail: str) -> str:
    """A failure's detail with what varies between alike failures blurred (files, layer names
    and shapes, buffer names, types, numbers), so each distinct problem is one group."""
    text = re.sub(r"/\S+\.pt2?", "<file>", detail)
    text = re.sub(r"Sparse(Linear|Conv2d)( '[^']*')? \[[\dx]+\]", "<layer>", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "<q>", text)
    text = re.sub(rf"\b({'|'.join(ALL_BUFFERS)})\b", "<buffer>", text)
    text = re.sub(r"\bgot (int|float|str|list|NoneType|tuple)\b", "got <type>", text)
    return re.sub(r"(?<![A-Za-z_])-?\d+(\.\d+)?(e[-+]?\d+)?", "N", text)[:160]


def _vm_peak_mb() -> float | None:
    """This process's peak address space in MiB (Linux), to show the run stayed bounded."""
    try:
        with open("/proc/self/status") as f:
            line = next(ln for ln in f if ln.startswith("VmPeak:"))
    except (OSError, StopIteration):
        return None
    return round(int(line.split()[1]) / 1024, 1)


def run(path: str, cases: int, seed: int, only: int | None = None,
        case_timeout: float = 20.0) -> dict:
    """Runs the cases (or only case ``only``) and returns the summary dict."""
    from .paths import LAST_ERROR

    per_format: dict[str, Counter] = defaultdict(Counter)
    per_kind: dict[str, Counter] = defaultdict(Counter)
    groups: dict[str, dict] = {}
    failures = []
    t0 = time.perf_counter()
    indices = range(cases) if only is None else [only]
    with tempfile.TemporaryDirectory(prefix="sparseprune-fuzz-") as tmp:
        torch.manual_seed(seed)  # what the setup draws without a generator (module inits)
        target = _make_path(path, seed, tmp)
        setup_s = time.perf_counter() - t0
        for i in indices:
            faulthandler.dump_traceback_later(case_timeout, exit=True)
            rng, gen = case_rng(seed, path, i)
            LAST_ERROR.clear()
            try:
                label, kind, desc, run_case = target.prepare(rng, gen)
            except Exception as err:  # a harness bug: still one accounted-for case
                label, kind, desc, run_case = "harness", "prepare", repr(err), None
            print(f"case {i}: {label} {kind}: {desc}", file=sys.stderr, flush=True)
            try:
                outcome, detail = run_case() if run_case else ("error", desc)
            except Exception as err:
                LAST_ERROR[:] = [err]
                outcome, detail = "error", f"harness: {type(err).__name__}: {err}"
            finally:
                if hasattr(target, "cleanup"):
                    target.cleanup()
            per_format[label][outcome] += 1
            per_kind[kind][outcome] += 1
            if only is not None:
                print(f"case {i}: {outcome} {detail}", file=sys.stderr)
                for err in LAST_ERROR:
                    traceback.print_exception(err, file=sys.stderr)
            if outcome in FAILURES:
                key = f"{outcome} | {kind} | {_group(detail)}"
                entry = groups.setdefault(key, {"count": 0, "first_case": i, "formats": []})
                entry["count"] += 1
                if label not in entry["formats"]:
                    entry["formats"].append(label)
                if len(failures) < 20:
                    failures.append({"case": i, "format": label, "kind": kind, "mutation": desc,
                                     "outcome": outcome, "detail": detail})
        faulthandler.cancel_dump_traceback_later()
    totals = Counter()
    for counts in per_format.values():
        totals.update(counts)
    return {
        "path": path, "seed": seed, "cases": len(indices),
        "wall_s": round(time.perf_counter() - t0, 2), "setup_s": round(setup_s, 2),
        "vm_peak_mb": _vm_peak_mb(),
        "outcomes": {k: totals[k] for k in OUTCOMES},
        "per_format": {f: {k: c[k] for k in OUTCOMES} for f, c in sorted(per_format.items())},
        "per_kind": {f: {k: c[k] for k in OUTCOMES if c[k]} for f, c in sorted(per_kind.items())},
        "failures": sum(totals[k] for k in FAILURES),
        "failure_groups": dict(sorted(groups.items(), key=lambda kv: -kv[1]["count"])),
        "first_failures": failures,
        "replay": f"python -m tests.fuzz.packed_fuzz --path {path} --seed {seed} --case N",
    }


def default_cases() -> int:
    return int(os.environ.get("SPARSEPRUNE_FUZZ_CASES", "2000"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.packed_fuzz",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", choices=PATHS, required=True)
    parser.add_argument("--cases", type=int, default=None,
                        help="cases to run (default: $SPARSEPRUNE_FUZZ_CASES or 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", type=int, default=None, help="replay only this case")
    parser.add_argument("--case-timeout", type=float, default=20.0,
                        help="seconds one case may take before the run is ended (default 20; "
                        "a case takes milliseconds, the first one up to ~2 s of imports)")
    args = parser.parse_args(argv)
    cases = default_cases() if args.cases is None else args.cases
    if cases < 0 or (args.case is not None and args.case < 0):
        parser.error("--cases and --case must be >= 0")
    warnings.simplefilter("ignore")  # torch's warnings about odd tensors would drown stderr
    faulthandler.enable()
    _limit_memory()
    torch.set_num_threads(1)
    summary = run(args.path, cases, args.seed, args.case, args.case_timeout)
    print(json.dumps(summary), flush=True)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
