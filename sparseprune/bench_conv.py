"""Conv-layer benchmark: ``SparseConv2d`` against dense torch conv2d and im2col + torch CSR.

Shared by ``sparseprune bench --conv`` (a table) and ``bench/test_bench_conv.py``
(pytest-benchmark). Every case times, on the same masked filter and input: torch dense
``F.conv2d`` (oneDNN; the baseline of every ratio), im2col + torch CSR (``F.unfold``, then the
CSR filter with int32 indices times the columns, one ``addmm`` per image, bias included) and
``SparseConv2d.from_dense`` (eager). Each method is timed in interleaved rounds with the dense
baseline (``_timing.interleaved``), so every ratio comes from one run on one machine.

Layer shapes come from ``bench/shapes/conv_<model>.txt`` (``C O H W kh kw stride pad groups``
rows). ``run_e2e`` times a whole ResNet-18 (built here, no torchvision) with every conv but the
first pruned, BatchNorm folded, dense against converted.
"""

from __future__ import annotations

import importlib
import inspect
import statistics
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ._timing import calls_for, interleaved, time_calls

__all__ = ["ConvShape", "ConvCase", "ConvResult", "METHODS", "MODELS", "parse_shape",
           "read_shapes", "model_shapes", "case_inputs", "run_case", "run_cases", "resnet18",
           "run_e2e", "format_table"]

BASELINE = "torch dense"
OURS = "sparseprune"
PEER = "im2col + torch CSR"
MODELS = ("resnet18", "resnet50", "mobilenetv2")
SHAPES_DIR = Path(__file__).resolve().parent.parent / "bench" / "shapes"


@dataclass(frozen=True)
class ConvShape:
    """One conv layer: input [C, H, W], O filters of kh x kw, square stride and padding."""

    c: int
    o: int
    h: int
    w: int
    kh: int
    kw: int
    stride: int = 1
    pad: int = 0
    groups: int = 1

    def __post_init__(self):
        v = asdict(self)
        if any(isinstance(x, bool) or not isinstance(x, int) or x < (k != "pad")
               for k, x in v.items()):
            raise ValueError(f"conv shape needs positive ints (pad >= 0), got {v}")
        if self.c % self.groups or self.o % self.groups:
            raise ValueError(f"C {self.c} and O {self.o} must be multiples of groups "
                             f"{self.groups}")
        if min(self.out_hw) < 1:
            raise ValueError(f"a {self.kh}x{self.kw} kernel does not fit a {self.h}x{self.w} "
                             f"input padded by {self.pad}")

    @property
    def out_hw(self) -> tuple[int, int]:
        return ((self.h + 2 * self.pad - self.kh) // self.stride + 1,
                (self.w + 2 * self.pad - self.kw) // self.stride + 1)

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.o, self.c // self.groups, self.kh, self.kw)

    @property
    def label(self) -> str:
        g = f"-g{self.groups}" if self.groups > 1 else ""
        return f"{self.c}x{self.o}@{self.h}x{self.w}-k{self.kh}x{self.kw}-s{self.stride}" \
               f"-p{self.pad}{g}"


def parse_shape(text: str) -> ConvShape:
    """``"C O H W kh kw stride pad groups"`` (spaces or commas; the last three optional)."""
    parts = text.replace(",", " ").split()
    vals = [int(v) for v in parts] if all(p.isdigit() for p in parts) else []
    if not 6 <= len(vals) <= 9:
        raise ValueError(f"bad conv shape {text!r}: expected 'C O H W kh kw [stride pad "
                         "groups]' integers, e.g. '64 64 56 56 3 3 1 1 1'")
    return ConvShape(*vals)


def read_shapes(path: str | Path) -> list[ConvShape]:
    """The distinct shapes of a shape file, in order (``#`` starts a comment)."""
    out: list[ConvShape] = []
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and (s := parse_shape(line)) not in out:
            out.append(s)
    return out


def model_shapes(model: str, shapes_dir: str | Path | None = None) -> list[ConvShape]:
    """The layer shapes of ``model`` (one of ``MODELS``) from ``conv_<model>.txt``."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose from {list(MODELS)}")
    path = Path(shapes_dir or SHAPES_DIR) / f"conv_{model}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no shape file {path} (the shape files live in a checkout's "
                                "bench/shapes)")
    return read_shapes(path)


@dataclass(frozen=True)
class ConvCase:
    """A layer shape with ``sparsity`` of its filter zero, at batch ``batch``."""

    shape: ConvShape
    sparsity: float
    batch: int
    threads: int = 1
    block: int = 1  # r > 1: r x 1 blocks (r output channels of one tap) pruned whole

    @property
    def label(self) -> str:
        blk = f"-{self.block}x1" if self.block > 1 else ""
        return f"{self.shape.label}{blk}-s{self.sparsity:g}-b{self.batch}-t{self.threads}"


@dataclass(frozen=True)
class ConvResult:
    shape: str  # ConvShape.label, or the model for end-to-end rows
    sparsity: float
    batch: int
    threads: int
    method: str
    seconds: float  # median time of one call
    ratio: float  # torch dense time / this time (median of per-round ratios)
    gflops: float  # effective: 2 * N * kept * OH * OW / time (dense: every weight counted)
    note: str = ""


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keeps the ``round((1 - sparsity) * numel)`` largest |w| (exact count)."""
    keep = round((1.0 - sparsity) * w.numel())
    mask = torch.zeros(w.numel(), dtype=torch.bool)
    if keep:
        mask[w.abs().flatten().topk(keep).indices] = True
    return mask.reshape(w.shape)


def block_mask(w: torch.Tensor, sparsity: float, r: int) -> torch.Tensor:
    """Keeps the largest-L1 r x 1 blocks of the [O, C/g * kh * kw] filter (exact count)."""
    o = w.shape[0]
    if o % r:
        raise ValueError(f"{r}x1 blocks need out channels divisible by {r}, got {o}")
    scores = w.reshape(o // r, r, -1).abs().sum(1)  # [O / r, taps]
    keep = magnitude_mask(scores, sparsity)
    return keep[:, None, :].expand(o // r, r, keep.shape[1]).reshape(w.shape)


def case_inputs(case: ConvCase, seed: int = 0):
    """(masked filter [O, C/g, kh, kw], bias [O], x [N, C, H, W])."""
    g = torch.Generator().manual_seed(seed)
    s = case.shape
    w = torch.randn(s.weight_shape, generator=g) * (s.c // s.groups * s.kh * s.kw) ** -0.5
    w *= (block_mask(w, case.sparsity, case.block) if case.block > 1
          else magnitude_mask(w, case.sparsity))
    b = torch.randn(s.o, generator=g)
    x = torch.randn(case.batch, s.c, s.h, s.w, generator=g)
    return w, b, x


def _csr_im2col_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """The filter as a CSR [O, C * kh * kw] over ``F.unfold``'s rows (block diagonal across
    groups, so one product covers them all), int32 indices."""
    o = w.shape[0]
    flat = w.reshape(o, -1)
    k = flat.shape[1]
    rows, cols = flat.nonzero(as_tuple=True)  # row-major: columns sorted within each row
    cols = cols + (rows // (o // groups)) * k
    crow = torch.zeros(o + 1, dtype=torch.int64)
    crow[1:] = torch.bincount(rows, minlength=o).cumsum(0)
    with warnings.catch_warnings():  # "CSR support is in beta": known, and noise in a table
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow.to(torch.int32), cols.to(torch.int32),
                                       flat[rows, cols % k].contiguous(), (o, k * groups),
                                       check_invariants=False)


# Each factory takes (filter, bias, x, shape) and returns a zero-argument callable: one forward.
Factory = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, ConvShape], Callable]


def _dense(w, b, x, s):
    return lambda: F.conv2d(x, w, b, s.stride, s.pad, 1, s.groups)


def _ours(w, b, x, s):
    from .nn import SparseConv2d

    conv = nn.Conv2d(s.c, s.o, (s.kh, s.kw), s.stride, s.pad, groups=s.groups)
    conv.weight.data.copy_(w)
    conv.bias.data.copy_(b)
    r = _block_rows(w)
    layer = (SparseConv2d.from_dense(conv, format="bsr", params=(r, 1)) if r > 1
             else SparseConv2d.from_dense(conv))
    return lambda: layer(x)


def _block_rows(w: torch.Tensor) -> int:
    """The largest r in (16, 8, 4) whose r x 1 blocks tile w's nonzeros exactly, else 1."""
    o = w.shape[0]
    flat = w.reshape(o, -1) != 0
    for r in (16, 8, 4):
        if o % r == 0 and flat.any():
            blocks = flat.reshape(o // r, r, -1)
            if bool((blocks.all(1) == blocks.any(1)).all()):
                return r
    return 1


def _im2col_csr(w, b, x, s):
    mat = _csr_im2col_weight(w, s.groups)
    bias = b[:, None]
    n, (oh, ow) = x.shape[0], s.out_hw

    def call():
        cols = F.unfold(x, (s.kh, s.kw), padding=s.pad, stride=s.stride)  # [N, C*kh*kw, L]
        y = torch.empty(n, s.o, oh * ow)
        for i in range(n):
            torch.addmm(bias, mat, cols[i], out=y[i])
        return y.view(n, s.o, oh, ow)

    return call


METHODS: dict[str, Factory] = {BASELINE: _dense, PEER: _im2col_csr, OURS: _ours}


def _time_vs(fns: dict[str, Callable], min_time: float, rounds: int
             ) -> dict[str, tuple[float, float]]:
    """{method: (median seconds, ratio vs dense)}: each method in interleaved rounds with the
    dense baseline (its own rounds); the dense time is the median over those rounds."""
    base = fns[BASELINE]
    out: dict[str, tuple[float, float]] = {}
    dense_times = []
    for m, fn in fns.items():
        if m == BASELINE:
            continue
        calls = calls_for(lambda fn=fn: (fn(), base()), min_time / rounds)
        t, t_ref, ratio = interleaved(fn, base, calls, rounds=rounds, warmup=2)
        out[m] = (t, ratio)
        dense_times.append(t_ref)
    if not dense_times:  # dense alone: its own rounds
        calls = calls_for(base, min_time / rounds)
        dense_times = [time_calls(base, calls) for _ in range(rounds)]
    return {BASELINE: (statistics.median(dense_times), 1.0), **out}


def run_case(case: ConvCase, methods: Iterable[str] = tuple(METHODS), *, min_time: float = 0.3,
             rounds: int = 5, seed: int = 0) -> list[ConvResult]:
    """Times every method on one case against dense, in interleaved rounds."""
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    methods = [m for m in METHODS if m == BASELINE or m in set(methods)]
    w, b, x = case_inputs(case, seed)
    s = case.shape
    pixels = case.batch * s.out_hw[0] * s.out_hw[1]
    flops = {m: 2.0 * pixels * (w.numel() if m == BASELINE else int((w != 0).sum()))
             for m in methods}
    prev = torch.get_num_threads()
    torch.set_num_threads(case.threads)
    try:
        with torch.inference_mode():
            times = _time_vs({m: METHODS[m](w, b, x, s) for m in methods}, min_time, rounds)
    finally:
        torch.set_num_threads(prev)
    label = s.label + (f" {case.block}x1 blocks" if case.block > 1 else "")
    return [ConvResult(label, case.sparsity, case.batch, case.threads, m, t, r,
                       flops[m] / t / 1e9) for m, (t, r) in times.items()]


def run_cases(cases: Iterable[ConvCase], methods: Iterable[str] = tuple(METHODS), *,
              min_time: float = 0.3, rounds: int = 5, progress: bool = True
              ) -> list[ConvResult]:
    """``run_case`` over many cases, with a progress bar."""
    cases = list(cases)
    if progress:
        from tqdm import tqdm

        cases = tqdm(cases, desc="conv benchmark", unit="case", leave=False)
    return [r for case in cases for r in run_case(case, methods, min_time=min_time,
                                                  rounds=rounds)]


# ---- the whole ResNet-18 ----

class BasicBlock(nn.Module):
    """Two 3x3 conv-BN pairs and a residual add (1x1 conv-BN downsample when the shape
    changes), as in torchvision's ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """ResNet-18: 7x7 stem, max pool, BasicBlock stages 64-128-256-512 (two blocks each),
    global average pool, fc."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            nn.Sequential(BasicBlock(cin, cout, 1 if cin == cout else 2),
                          BasicBlock(cout, cout, 1))
            for cin, cout in ((64, 64), (64, 128), (128, 256), (256, 512)))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(sparsity: float = 0.0, image_size: int = 224, seed: int = 0) -> nn.Module:
    """A ResNet-18 in eval mode, every conv but the first pruned to ``sparsity`` by magnitude
    (``l1_unstructured``, then ``prune.remove``: the zeros stay in ``weight``), BatchNorm
    statistics from one training-mode pass over random images (so folding them is not a no-op
    and activations stay finite)."""
    import torch.nn.utils.prune as prune

    with torch.random.fork_rng():  # seeded, leaving the caller's generator alone
        torch.manual_seed(seed)
        model = ResNet18()
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and name != "conv1" and sparsity > 0:
                prune.l1_unstructured(m, "weight", amount=sparsity)
                prune.remove(m, "weight")
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = None  # cumulative: one pass sets the statistics
        with torch.no_grad():
            model.train()(torch.randn(4, 3, image_size, image_size))
    return model.eval()


def _flops(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(dense, kept) FLOPs of the model's convs and Linears on x: 2 * weights * output pixels."""
    dense = kept = 0.0

    def hook(m, args, y):
        nonlocal dense, kept
        pixels = y.numel() / m.weight.shape[0]
        dense += 2.0 * m.weight.numel() * pixels
        kept += 2.0 * int((m.weight != 0).sum()) * pixels

    hs = [m.register_forward_hook(hook) for m in model.modules()
          if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hs:
            h.remove()
    return dense, kept


def _converted(model: nn.Module, x: torch.Tensor) -> tuple[nn.Module, nn.Module, str]:
    """(dense model, converted model, how), every BatchNorm folded in both. convert() when it
    handles nn.Conv2d (with its fold option when it has one; the BatchNorms of convs it leaves
    dense are folded after it by fold_batchnorm), else SparseConv2d.from_dense on every conv
    with >= 50 % zeros."""
    from .nn import SparseConv2d
    from .structured.fold import fold_batchnorm

    convert_mod = importlib.import_module("sparseprune.convert")
    dense = fold_batchnorm(model)
    if nn.Conv2d in convert_mod._CONVERTERS:
        fold = [p for p in inspect.signature(convert_mod.convert).parameters if "fold" in p][:1]
        sparse, report = convert_mod.convert(model if fold else dense, example_inputs=x,
                                             min_sparsity=0.5, **{p: True for p in fold})
        convs = [r for r in report.layers if r.type == "Conv2d"]
        folded = sum(bool(getattr(r, "folded", "")) for r in convs)
        how = f"convert(): {sum(r.format is not None for r in convs)}/{len(convs)} convs sparse"
        how += f", {folded} BN folded by convert({fold[0]}=True)" if fold else ""
    else:
        sparse = fold_batchnorm(model)
        names = [n for n, m in sparse.named_modules() if isinstance(m, nn.Conv2d)
                 and float((m.weight == 0).float().mean()) >= 0.5]
        for name in names:
            parent, _, child = name.rpartition(".")
            setattr(sparse.get_submodule(parent), child,
                    SparseConv2d.from_dense(sparse.get_submodule(name), name=name))
        how = f"SparseConv2d.from_dense on {len(names)} convs (convert() has no Conv2d converter)"
    sparse = fold_batchnorm(sparse, leaf_modules=(SparseConv2d,))  # BNs left on dense convs
    return dense, sparse, how + "; other BN folded by fold_batchnorm"


def run_e2e(sparsity: float = 0.9, batch: int = 1, *, image_size: int = 224, threads: int = 1,
            min_time: float = 1.0, rounds: int = 5, seed: int = 0) -> list[ConvResult]:
    """The whole ResNet-18 (first conv and fc dense) at ``sparsity``: dense (BN folded) and
    converted, timed in interleaved rounds; two rows."""
    model = resnet18(sparsity, image_size, seed)
    x = torch.randn(batch, 3, image_size, image_size, generator=torch.Generator().manual_seed(1))
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dense, sparse, how = _converted(model, x)
        flops_dense, flops_kept = _flops(dense, x)
        with torch.inference_mode():
            times = _time_vs({BASELINE: lambda: dense(x), OURS: lambda: sparse(x)},
                             min_time, rounds)
    finally:
        torch.set_num_threads(prev)
    label = f"ResNet-18 e2e {image_size}x{image_size}"
    return [ConvResult(label, sparsity, batch, threads, m, t, r,
                       (flops_dense if m == BASELINE else flops_kept) / t / 1e9,
                       how if m == OURS else "BN folded")
            for m, (t, r) in times.items()]


def format_table(results: list[ConvResult]) -> str:
    """A markdown table: one row per (case, method) with time, ratio vs dense, effective
    GFLOP/s, and sparseprune's ratio against the im2col + torch CSR peer."""
    head = ("| shape | sparsity | batch | threads | method | time (us) | vs dense | "
            "eff. GFLOP/s | ours vs peer | note |")
    lines = [head, "|" + "---|" * 10]
    by_case: dict[tuple, list[ConvResult]] = {}
    for r in results:
        by_case.setdefault((r.shape, r.sparsity, r.batch, r.threads), []).append(r)
    for (shape, sparsity, batch, threads), rows in by_case.items():
        ratios = {r.method: r.ratio for r in rows}
        for r in rows:
            vs_peer = ""
            if r.method == OURS and PEER in ratios:  # both measured against the same dense
                vs_peer = f"{r.ratio / ratios[PEER]:.2f}x"
            lines.append(f"| {shape} | {sparsity:g} | {batch} | {threads} | {r.method} | "
                         f"{r.seconds * 1e6:.1f} | {r.ratio:.2f}x | {r.gflops:.1f} | {vs_peer} "
                         f"| {r.note} |")
    return "\n".join(lines)
