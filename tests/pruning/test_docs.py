"""The README's Pruning section runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def test_pruning_doc_examples_run(capsys):
    section = README.read_text().split("\n## Pruning\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # our own doc, run as written
    out = capsys.readouterr().out
    assert "total sparsity" in out and "model size:" in out
    report = namespace["report"]
    assert report.pool_sparsity == pytest.approx(0.9, abs=1e-3)
    assert report.protected == ["0", "8"]
    rows = namespace["rows"]
    assert [r["name"] for r in rows] == ["0", "2"] and rows[0]["sparsity"] >= 0.9
