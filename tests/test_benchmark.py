"""The benchmark harness (not a timing test): every pattern builds, every method of a case
computes the same y, and ``sparseprune bench`` refuses bad arguments with exit 2."""

import os

import pytest
import torch

from sparseprune import benchmark
from sparseprune.cli import main


@pytest.mark.parametrize("pattern", ["unstructured", "2:4", "8x1", "4x4"])
def test_every_method_computes_the_same_output(pattern):
    case = benchmark.Case(64, 96, 0.8, 5, pattern=pattern)
    ws, b, x = benchmark.case_inputs(case)
    expected = torch.nn.functional.linear(x, ws[0])
    with torch.inference_mode():
        for name, factory in benchmark.METHODS.items():
            try:
                fn, nbytes = factory(ws, b, x)
            except ValueError:
                continue  # not applicable to the pattern (torch bsr, nm on blocks, ...)
            y = fn()
            y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y)
            y = y.reshape(expected.shape)
            with_bias = name.startswith(benchmark.OURS) or name == benchmark.BASELINE
            ref = expected + b if with_bias else expected
            torch.testing.assert_close(y.float(), ref, rtol=1e-4, atol=1e-4, msg=name)
            assert nbytes > 0


def test_pattern_masks_have_their_structure():
    nm = benchmark.Case(32, 64, 0.0, 1, pattern="2:4").mask(torch.rand(32, 64))
    assert bool((nm.reshape(32, 16, 4).sum(-1) == 2).all())
    blocks = benchmark.Case(32, 64, 0.75, 1, pattern="8x1").mask(torch.rand(32, 64))
    per_block = blocks.reshape(4, 8, 64).sum(1)
    assert bool(((per_block == 0) | (per_block == 8)).all())


@pytest.mark.parametrize("args", [["--rounds", "0"], ["--threads", "0"], ["--methods", "nope"],
                                  ["--patterns", "3:2"], ["--sparsity", "1.5"]])
def test_bench_refuses_bad_arguments(args, capsys):
    assert main(["bench", "--shapes", "16x16", "--batch", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparseprune bench:") and "Traceback" not in err


def test_report_appends_a_section_and_a_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from sparseprune.bench_report import write_report

    cases = [benchmark.Case(32, 32, s, b) for s in (0.5, 0.9) for b in (1, 4)]
    results = benchmark.run_cases(cases, min_time=0.002, rounds=1, progress=False)
    report = tmp_path / "RESULTS.md"
    report.write_text("# old\n")
    png = write_report(results, report, "sparseprune bench --test")
    text = report.read_text()
    assert text.startswith("# old\n") and "`sparseprune bench --test`" in text
    assert "| 32x32 | unstructured | 0.9 | 4 |" in text
    assert png and os.path.basename(png).startswith("RESULTS-speedup-")
    assert os.path.getsize(png) > 1000 and os.path.basename(png) in text
