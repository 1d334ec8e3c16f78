"""bench/structured_zoo.py --local runs without torchvision and prints one exact row per family."""

import subprocess
import sys
from pathlib import Path

from .zoo_models import FAMILIES

ROOT = Path(__file__).resolve().parents[2]


def test_zoo_bench_local_rows_are_exact():
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "structured_zoo.py"), "--local",
                          "--no-tp"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    rows = [line.split("|") for line in out.stdout.splitlines() if line.startswith("| ")
            and not line.startswith("| model")]
    assert sorted(r[1].strip() for r in rows) == sorted(FAMILIES)
    for r in rows:
        assert r[2].strip() == "ok", r
        assert float(r[7].strip().rstrip("x")) > 1.5, r
