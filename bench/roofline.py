"""Roofline bound for a model's speedup on this CPU: per layer, the larger of its compute time at
the machine's measured GEMM rate and its memory time at the measured copy bandwidth.

A pruned model whose layers are memory-bound cannot run faster than its bytes allow, whatever its
MAC cut: halving both widths of a 1x1 conv quarters its MACs but only halves the activations it
reads and writes. ``bench/structured_report.py`` prints this bound beside the measured speedup.

    PYTHONPATH=. python bench/roofline.py     # this machine's GEMM GFLOP/s and copy GB/s
"""

from __future__ import annotations

import time

import torch
from torch import nn


def machine_peaks(threads: int) -> tuple[float, float]:
    """``(flop/s, bytes/s)``: fp32 GEMM rate (2048^3 ``torch.mm``, best of 3) and copy
    bandwidth (256 MiB read + 256 MiB written, best of 3) at ``threads`` threads."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
        src = torch.randn(64 * 2**20)
        dst = torch.empty_like(src)
        torch.mm(a, b), dst.copy_(src)
        gemm = copy = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            torch.mm(a, b)
            t1 = time.perf_counter()
            dst.copy_(src)
            t2 = time.perf_counter()
            gemm, copy = min(gemm, t1 - t0), min(copy, t2 - t1)
        return 2 * 2048**3 / gemm, 2 * src.numel() * 4 / copy
    finally:
        torch.set_num_threads(saved)


def layer_costs(model: nn.Module, x: torch.Tensor) -> list[tuple[float, float]]:
    """``(flops, bytes)`` of the modules of ``model`` on ``x`` (fp32): convs, linears and
    ``nn.MultiheadAttention`` (projections, scores, weighted sum) by their FLOPs and bytes, every
    other leaf module that writes a new tensor (activations, norms, pooling, ...) by its bytes.
    Bytes are the input and output activations plus the weights (and attention's score matrix),
    each read or written once; functional ops such as residual adds are not counted."""
    out: list[tuple[float, float]] = []
    attention = [m for m in model.modules() if isinstance(m, nn.MultiheadAttention)]
    inside = {id(c) for m in attention for c in m.modules() if c is not m}

    def hook(mod: nn.Module, args: tuple, result) -> None:
        if isinstance(result, tuple):  # MultiheadAttention: (output, weights)
            result = result[0]
        if not (args and isinstance(args[0], torch.Tensor) and isinstance(result, torch.Tensor)):
            return
        inp = args[0]
        if result.data_ptr() == inp.data_ptr():  # a view or an identity: nothing moved
            return
        moved = 4.0 * (inp.numel() + result.numel())
        params = 4.0 * sum(p.numel() for p in mod.parameters())
        if isinstance(mod, nn.MultiheadAttention):
            tokens = inp.numel() // inp.shape[-1]
            seq = inp.shape[-2] if (inp.dim() == 3 and mod.batch_first) else inp.shape[0]
            inner = mod.num_heads * mod.head_dim
            flops = 2.0 * tokens * (3 * inner * inp.shape[-1] + inner * result.shape[-1])
            flops += 2.0 * 2 * tokens * seq * inner  # scores and weighted sum
            scores = 4.0 * 2 * tokens * seq * mod.num_heads  # written, then read
            out.append((flops, moved + params + scores))
        elif isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out.append((2.0 * result.numel() * mod.weight[0].numel(), moved + params))
        elif isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            out.append((2.0 * inp.numel() * mod.weight[0].numel(), moved + params))
        else:
            out.append((0.0, moved + params))

    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if (isinstance(m, nn.MultiheadAttention) or not list(m.children()))
             and id(m) not in inside]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


def roofline_seconds(model: nn.Module, x: torch.Tensor, flops: float, bandwidth: float) -> float:
    """Sum over layers of ``max(flops / rate, bytes / bandwidth)``."""
    return sum(max(f / flops, b / bandwidth) for f, b in layer_costs(model, x))


def main() -> None:
    for threads in (1, 2):
        flops, bw = machine_peaks(threads)
        print(f"{threads} thread(s): fp32 GEMM {flops / 1e9:.0f} GFLOP/s, copy {bw / 1e9:.1f} GB/s")


if __name__ == "__main__":
    main()
