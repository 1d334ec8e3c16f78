"""Bounded mutation fuzzing of every path that reads packed weights, each path in its own process
(tests/fuzz/packed_fuzz.py), so a crash or a hang is seen instead of killing the test run.

Paths: ``eager`` (``load_state_dict`` of a mutated state_dict), ``file`` (``sparseprune.load``
of a mutated ``sparseprune.save`` file), ``export`` (a saved and reloaded ``torch.export``
program whose packed constants are mutated in place) and ``cli`` (``sparseprune inspect`` /
``convert`` on mutated state_dict files), over every format: SparseLinear as csr, sell, 2:4,
bsr 4x1 and 1x4, SparseConv2d as csr and bsr 4x1. Every case must end in a refusal (ValueError,
or exit code 2 with a message) or a correct result.

``SPARSEPRUNE_FUZZ_CASES`` sets the cases per path (default 2000, what CI runs; each path takes
a few seconds on one core), ``SPARSEPRUNE_FUZZ_SEED`` the seed (default 0). A failing case is
replayed alone with ``python -m tests.fuzz.packed_fuzz --path PATH --seed SEED --case N``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = int(os.environ.get("SPARSEPRUNE_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("SPARSEPRUNE_FUZZ_SEED", "0"))
LABELS = ("csr", "sell", "nm2:4", "bsr4x1", "bsr1x4", "conv-csr", "conv-bsr4x1")
# Below this many cases a format may by chance see no refusal or no successful load.
MIN_CASES_FOR_COVERAGE = 200


def _fuzz(path: str, cases: int, seed: int, *extra: str) -> tuple[subprocess.CompletedProcess,
                                                                   dict | None]:
    """Runs the fuzzer in a fresh interpreter; (the process, its JSON summary or None)."""
    cmd = [sys.executable, "-m", "tests.fuzz.packed_fuzz", "--path", path, "--cases",
           str(cases), "--seed", str(seed), *extra]
    timeout = 120 + 0.1 * cases
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) \
            else exc.stderr or ""
        pytest.fail(f"fuzzer --path {path} --seed {seed} ran past {timeout:.0f} s (a hang?); "
                    f"last case: {_last_case(stderr)}; replay: {_replay(path, seed, stderr)}")
    lines = proc.stdout.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    return proc, summary


def _last_case(stderr: str) -> str:
    cases = [ln for ln in stderr.splitlines() if ln.startswith("case ")]
    return cases[-1] if cases else "(none started)"


def _replay(path: str, seed: int, stderr: str) -> str:
    last = _last_case(stderr)
    index = last.split(":")[0].removeprefix("case ") if last.startswith("case ") else "N"
    return f"python -m tests.fuzz.packed_fuzz --path {path} --seed {seed} --case {index}"


def _exit_reason(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


@pytest.mark.parametrize("path", ["eager", "file", "export", "cli"])
def test_fuzz_path(path):
    proc, summary = _fuzz(path, CASES, SEED)
    if proc.returncode not in (0, 1) or summary is None:
        tail = "\n".join(proc.stderr.splitlines()[-25:])
        pytest.fail(f"fuzzer --path {path} --seed {SEED} crashed ({_exit_reason(proc.returncode)})"
                    f" in {_last_case(proc.stderr)}\nreplay: {_replay(path, SEED, proc.stderr)}"
                    f"\nstderr tail:\n{tail}")
    per_format = summary["per_format"]
    assert summary["cases"] == CASES
    assert sum(sum(c.values()) for c in per_format.values()) == CASES, per_format
    if summary["failures"]:
        groups = "\n".join(f"  {v['count']:5d} x {k} (first: case {v['first_case']})"
                           for k, v in summary["failure_groups"].items())
        first = "\n".join(f"  case {f['case']}: {f['format']} {f['kind']}: {f['mutation']}\n"
                          f"    -> {f['outcome']}: {f['detail']}"
                          for f in summary["first_failures"][:10])
        pytest.fail(f"fuzzer --path {path} --seed {SEED}: {summary['failures']} of {CASES} cases "
                    f"ended neither in a refusal nor in a correct result "
                    f"({summary['outcomes']})\nby kind:\n{groups}\nfirst cases:\n{first}\n"
                    f"replay one: {summary['replay']}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    if CASES >= MIN_CASES_FOR_COVERAGE:  # not vacuous: every format both refuses and loads
        for label in LABELS:
            counts = per_format.get(label, {})
            assert counts.get("refused", 0) > 0 and counts.get("loaded", 0) > 0, (label, counts)


def test_fuzzer_replays_and_is_deterministic():
    """Two runs with one seed give the same cases and outcomes, and a case replayed alone
    (``--case``) is the same mutation: a reported failure can be reproduced from its seed."""
    proc, first = _fuzz("eager", 60, 7)
    proc2, second = _fuzz("eager", 60, 7)
    assert first is not None and second is not None
    assert first["per_format"] == second["per_format"]
    assert first["per_kind"] == second["per_kind"]
    assert proc.stderr.splitlines()[:60] == proc2.stderr.splitlines()[:60]
    replayed, alone = _fuzz("eager", 60, 7, "--case", "41")
    assert alone is not None and alone["cases"] == 1
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("case 41:"))
    assert replayed.stderr.splitlines()[0] == line
