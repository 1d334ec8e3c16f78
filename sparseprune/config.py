"""Runtime configuration: which kernel variants are active and how many threads they use."""

from __future__ import annotations

import sys
from typing import TextIO

from . import ops

__all__ = ["show_config"]


def show_config(file: TextIO | None = None) -> str:
    """Prints (and returns) the version, ISAs, active kernel variants and thread count."""
    info = ops.cpu_info()
    lines = [
        f"sparseprune {ops.native_version()}",
        f"CPU ISAs detected: {', '.join(info['detected'])}; "
        f"allowed (SPARSEPRUNE_ISA): {', '.join(info['active'])}",
        f"threads: {ops.get_num_threads()} ({info['threading']})",
        "default kernel plans:",
        *("  " + line for line in ops.dispatch_log().splitlines()),
        "kernels (* = used by default):",
    ]
    for k in ops.list_kernels():
        mark = "*" if k["default"] else " "
        state = "" if k["supported"] else "  (CPU lacks " + k["isa"] + ")"
        lines.append(f"  {mark} {k['name']:<28} family={k['family']} format={k['format']} "
                     f"isa={k['isa']} mr={k['mr']}{state}")
    text = "\n".join(lines)
    print(text, file=file or sys.stdout)
    return text
