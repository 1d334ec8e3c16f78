"""The conv benchmark harness (not a timing test): every method computes dense torch's output,
the shape files parse, a tiny run and the end-to-end ResNet-18 give full tables, and
``sparseprune bench --conv`` refuses bad arguments with exit 2."""

import pytest
import torch
import torch.nn.functional as F

from sparseprune import bench_conv
from sparseprune.cli import main


@pytest.mark.parametrize("spec", ["8 12 9 9 3 3 2 1 1", "12 12 9 9 3 3 1 1 12",
                                  "8 16 7 7 1 1 1 0 1", "8 16 8 8 1 1 2 0 2",
                                  "6 8 11 10 3 3 1 0 2"])
def test_every_method_computes_dense_torchs_output(spec):
    s = bench_conv.parse_shape(spec)
    w, b, x = bench_conv.case_inputs(bench_conv.ConvCase(s, 0.8, 3))
    assert round(float((w == 0).float().mean()), 2) == 0.8
    ref = F.conv2d(x, w, b, s.stride, s.pad, 1, s.groups)
    assert ref.shape[2:] == s.out_hw
    with torch.inference_mode():
        for name, factory in bench_conv.METHODS.items():
            torch.testing.assert_close(factory(w, b, x, s)(), ref, rtol=1e-4, atol=1e-4,
                                       msg=name)


@pytest.mark.parametrize("model", bench_conv.MODELS)
def test_shape_files_parse(model):
    shapes = bench_conv.model_shapes(model)
    assert len(shapes) == len(set(shapes)) >= 10
    assert shapes[0].c == 3 and all(s.h in (7, 14, 28, 56, 112, 224) for s in shapes)
    if model == "mobilenetv2":
        assert any(s.groups == s.c > 1 and s.kh == 3 for s in shapes)  # depthwise


def test_bad_shapes_are_refused():
    for spec in ("1 2 3", "a b c d e f", "4 6 8 8 3 3 1 1 4", "2 4 2 2 5 5 1 0 1",
                 "2 4 8 8 3 3 0 0 1"):
        with pytest.raises(ValueError):
            bench_conv.parse_shape(spec)
    with pytest.raises(ValueError, match="unknown model"):
        bench_conv.model_shapes("vgg")


def test_tiny_run_gives_every_row():
    case = bench_conv.ConvCase(bench_conv.parse_shape("16 16 8 8 3 3 1 1 1"), 0.9, 2)
    results = bench_conv.run_cases([case], min_time=0.002, rounds=1, progress=False)
    assert [r.method for r in results] == list(bench_conv.METHODS)
    dense = results[0]
    assert dense.method == bench_conv.BASELINE and dense.ratio == 1.0
    assert all(r.seconds > 0 and r.ratio > 0 and r.gflops > 0 for r in results)
    table = bench_conv.format_table(results)
    assert "| 16x16@8x8-k3x3-s1-p1 | 0.9 | 2 | 1 | sparseprune |" in table
    with pytest.raises(ValueError, match="unknown method"):
        bench_conv.run_case(case, ["nope"])


def test_block_cases_mask_whole_r_by_1_blocks_and_run_bsr(capsys):
    case = bench_conv.ConvCase(bench_conv.parse_shape("16 16 8 8 3 3 1 1 1"), 0.75, 1, block=8)
    w, _, _ = bench_conv.case_inputs(case)
    blocks = (w.reshape(2, 8, -1) != 0)
    assert bool((blocks.all(1) == blocks.any(1)).all())  # every block kept or pruned whole
    assert abs(float((w == 0).float().mean()) - 0.75) < 0.01
    assert bench_conv._block_rows(w) == 8
    assert main(["bench", "--conv", "--conv-shape", "16,16,6,6,3,3,1,1,1", "--patterns",
                 "unstructured,8x1", "--sparsity", "0.9", "--batch", "1", "--rounds", "1",
                 "--min-time", "0.002", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| 16x16@6x6-k3x3-s1-p1 8x1 blocks | 0.9 | 1 | 1 | sparseprune |" in out
    assert "| 16x16@6x6-k3x3-s1-p1 | 0.9 | 1 | 1 | sparseprune |" in out


def test_end_to_end_resnet18_is_converted():
    model = bench_conv.resnet18(0.9, image_size=32)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's count
    assert float((model.conv1.weight == 0).float().mean()) == 0.0
    assert round(float((model.layer3[0].conv2.weight == 0).float().mean()), 2) == 0.9
    x = torch.randn(1, 3, 32, 32)  # run_e2e's batch: its convert() reuses the choices
    dense, sparse, how = bench_conv._converted(model, x)
    assert "convs sparse" in how or "from_dense" in how
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in sparse.modules())
    with torch.no_grad():
        torch.testing.assert_close(sparse(x), model(x), rtol=1e-3, atol=1e-3)
    rows = bench_conv.run_e2e(0.9, 1, image_size=32, min_time=0.01, rounds=1)
    assert [r.method for r in rows] == [bench_conv.BASELINE, bench_conv.OURS]
    assert rows[1].note and rows[1].gflops > 0 and rows[0].ratio == 1.0


def test_cli_conv_runs(capsys):
    assert main(["bench", "--conv", "--conv-shape", "8,8,6,6,3,3,1,1,1", "--sparsity", "0.9",
                 "--batch", "1", "--rounds", "1", "--min-time", "0.002", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| 8x8@6x6-k3x3-s1-p1 | 0.9 | 1 | 1 | im2col + torch CSR |" in out


@pytest.mark.parametrize("args,message", [
    (["--rounds", "0"], "--rounds"), (["--threads", "0"], "--threads"),
    (["--sparsity", "1.5"], "sparsity"), (["--batch", "0"], "--batch"),
    (["--model", "vgg"], "unknown model"), (["--conv-shape", "1,2,3"], "bad conv shape"),
    (["--methods", "nope"], "unknown --methods"), (["--e2e-size", "8"], "--e2e-size"),
    (["--shapes", "16x16"], "Linear bench"), (["--report", "x.md"], "Linear bench"),
    (["--patterns", "2:4"], "r x 1 blocks")])
def test_cli_conv_refuses_bad_arguments(args, message, capsys):
    assert main(["bench", "--conv", *args]) == 2  # refused before anything runs
    err = capsys.readouterr().err
    assert err.startswith("sparseprune bench:") and message in err and "Traceback" not in err


def test_conv_options_need_conv(capsys):
    assert main(["bench", "--e2e"]) == 2
    assert "--e2e needs --conv" in capsys.readouterr().err
