"""Threading backends: torch's OpenMP team when present, our own pool after fork or on request."""

import os
import subprocess
import sys

import pytest

from sparseprune import ops

_FORK_CHILD = """
import os, torch
from torch import nn
import sparseprune as sp
torch.set_num_threads(2)
lin = nn.Linear(512, 512)
with torch.no_grad():
    lin.weight.mul_(torch.rand(512, 512) > 0.9)
layer = sp.SparseLinear.from_dense(lin)
x = torch.randn(64, 512)
with torch.inference_mode():
    y = layer(x)
pid = os.fork()
if pid == 0:
    with torch.inference_mode():
        ok = torch.allclose(layer(x), y) and sp.ops.cpu_info()["threading"] == "pool"
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
sys_exit = os.waitstatus_to_exitcode(status)
raise SystemExit(sys_exit)
"""


def test_backend_is_reported():
    assert ops.cpu_info()["threading"] in ("openmp (shared with torch)", "pool")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_kernels_run_multithreaded_in_a_forked_child():
    # libgomp's team does not survive fork; the child must switch to our pool, not hang.
    out = subprocess.run([sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_pool_backend_on_request():
    code = "from sparseprune import ops; print(ops.cpu_info()['threading'])"
    env = dict(os.environ, SPARSEPRUNE_THREADING="pool")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "pool"


def test_results_under_the_pool_backend():
    # The default backend is torch's OpenMP team; run the multi-thread tests again on our pool.
    here = os.path.dirname(__file__)
    env = dict(os.environ, SPARSEPRUNE_THREADING="pool")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          os.path.join(here, "test_dispatch.py")
                          + "::test_threads_give_the_same_result"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout
