"""all-MiniLM-L6-v2 end to end: one-shot pruning, distillation, sparse vs dense latency.

The same run as ``sparseprune demo --model minilm`` (arguments are passed through), kept here
beside the kernel benches. Needs ``pip install "sparseprune[examples]"``. Run it alone on the
machine (latency ratios come from interleaved dense/sparse rounds, but two benchmarks on two
cores disturb each other)::

    python bench/minilm_e2e.py -o bench/minilm-out
    python bench/minilm_e2e.py --methods sparsegpt-70,sparsegpt-2:4 --threads 1
"""

import sys

from sparseprune.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", "--model", "minilm", *sys.argv[1:]]))
