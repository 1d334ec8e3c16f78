"""Two local processes (gloo): masks and weights must match across ranks after pruning."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import sparseprune
from sparseprune.pruning.masks import current_mask, masked_tensors
from sparseprune.workflow import (
    FineTuneConfig,
    FineTuner,
    broadcast_masks,
    check_consistent,
    iterative_prune,
)
from sparseprune.workflow.data import Batches

from .conftest import blobs, tiny_mlp


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(rank)  # different init per rank: the helpers must make them agree
        x, y = blobs(128)
        xt, yt = blobs(64, seed=1)
        tuner = FineTuner(Batches(x, y, 16, shuffle=True, rank=rank, world_size=world),
                          Batches(xt, yt, 64), FineTuneConfig(lr=1e-2))
        model = tiny_mlp()
        calls = []

        def train(m, epochs, lr_scale=1.0):
            # before the DDP wrap: weights must already agree (the run broadcasts the model)
            calls.append(check_consistent(m))
            tuner.train(m, epochs, lr_scale)

        def evaluate(m):  # rank 1's sharded eval disagrees: rank 0's score must decide
            acc = tuner.evaluate(m)
            return acc if rank == 0 else acc - 50.0 * len(calls)

        history = iterative_prune(model, [0.5, 0.8], train, evaluate, epochs=1,
                                  tolerance=5.0, progress=True)
        bad = check_consistent(model)
        masks = {t.qualname: current_mask(t.module, t.param) for t in masked_tensors(model)}
        # masks made from different weights on each rank agree after broadcast_masks, with no
        # DDP wrap (which would broadcast them itself) in between
        other = tiny_mlp()
        torch.manual_seed(rank)
        with torch.no_grad():
            for p in other.parameters():
                p.normal_()
        sparseprune.prune(other, 0.5, protect=None)
        broadcast_masks(other)
        mask_bad = [n for n in check_consistent(other) if n.endswith("_mask")]
        torch.save({"bad": bad, "state": model.state_dict(), "masks": masks, "calls": calls,
                    "rounds": len(history.rounds), "stopped": history.stopped,
                    "mask_bad": mask_bad}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_two_ranks_keep_identical_masks_and_weights(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["bad"] == [] and r1["bad"] == []
    assert r0["rounds"] == r1["rounds"] == 3
    assert r0["stopped"] == r1["stopped"] == "target reached"
    assert r0["calls"] == r1["calls"] == [[], []]
    assert r0["mask_bad"] == r1["mask_bad"] == []
    assert r0["masks"].keys() == r1["masks"].keys() and r0["masks"]
    for k in r0["masks"]:
        assert torch.equal(r0["masks"][k], r1["masks"][k]), k
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
