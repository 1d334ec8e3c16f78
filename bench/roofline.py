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
    """``(flops, bytes)`` of every conv, linear, activation and norm module of ``model`` on
    ``x`` (fp32): bytes are the input and output activations plus the weights, read or written
    once (functional ops such as residual adds are not counted)."""
    out: list[tuple[float, float]] = []

    def hook(mod: nn.Module, args: tuple, result: torch.Tensor) -> None:
        if not (args and isinstance(args[0], torch.Tensor) and isinstance(result, torch.Tensor)):
            return
        moved = 4.0 * (args[0].numel() + result.numel())
        if isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            out.append((2.0 * result.numel() * mod.weight[0].numel(),
                        moved + 4.0 * mod.weight.numel()))
        elif isinstance(mod, (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.GELU, nn.Hardswish,
                              nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
            out.append((0.0, moved))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
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
