"""The README's "Use" and "Structured pruning" examples run as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_use_example_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("\n## Use\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2  # the Linear example, then the CNN one (in the same namespace)
    monkeypatch.chdir(tmp_path)  # the example saves sparse.pt
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "2 converted" in out and "kernels" in out
    assert namespace["y"].shape == (64, 10)
    assert (tmp_path / "sparse.pt").exists()
    cnn = {r.name: r for r in namespace["cnn_report"].layers}
    assert cnn["0"].format is None and cnn["3"].how == "measured"
    assert cnn["3"].format is None or cnn["3"].folded == "4"


def test_structured_example_runs(capsys):
    section = README.read_text().split("\n## Structured pruning\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "before:" in out and "after:" in out
    small, model = namespace["small"], namespace["model"]
    assert namespace["count_macs"](small, namespace["x"]) < 0.55 * namespace["count_macs"](
        model, namespace["x"])


def test_pruning_examples_run(capsys):
    section = README.read_text().split("\n## Pruning\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert "total sparsity" in capsys.readouterr().out
    model3 = namespace["model3"]
    groups = (model3[0].weight != 0).reshape(128, -1, 4).sum(-1)
    assert bool((groups == 2).all())


def test_ci_installs_the_examples_extra_as_pyproject_names_it():
    import pytest

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    root = README.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]["examples"]
    ci = (root / ".ci" / "run").read_text().replace("\\\n", " ")
    for requirement in extra:
        assert f'"{requirement}"' in ci, requirement
