"""The README's Workflow example runs as written."""

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "README.md"


def test_workflow_example_runs(tmp_path, monkeypatch, capsys):
    section = DOC.read_text().split("\n## Workflow\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)  # the example writes history.json / .png
    namespace: dict = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "baseline" in out and "rate@90%" in out
    assert (tmp_path / "history.json").exists() and (tmp_path / "history.png").exists()
    assert namespace["history"].final.sparsity > 0.5
    assert set(namespace["result"].gap()) == {0.9}
    small, rounds = namespace["small"], namespace["rounds"]
    assert [m.out_features for m in small if hasattr(m, "out_features")] == [64, 64, 4]
    assert rounds.final.accuracy >= rounds.baseline - 3.0  # the example's tolerance
