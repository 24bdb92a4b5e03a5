"""Re-forming the data plane across real processes (gloo): epochs, leaving, a cancelled rendezvous.

Epoch 0: world 3, both senders send then EPOCH_END. Epoch 1: rank 2 has left,
world 2. Epoch 2 is cancelled (rank 1 gives up before everyone arrived), and
rank 0, still waiting, learns it from the store. Epoch 3 forms and ends the run.
"""

from __future__ import annotations

import multiprocessing as mp
import time
import traceback

import torch

from dvla.dataplane.wire import KIND_END, KIND_EPOCH_END
from dvla.dataplane.world import DataPlane
from dvla.net import free_port
from dvla.types import TrajectoryBatch, World


def batch(rank: int, index: int) -> TrajectoryBatch:
    B, T, D, A = 2, 3, 5, 2
    return TrajectoryBatch(
        obs=torch.full((B, T, D), float(100 * rank + index)),
        actions=torch.zeros(B, T, A),
        log_probs=torch.zeros(B, T),
        values=torch.zeros(B, T),
        rewards=torch.zeros(B, T),
        dones=torch.zeros(B, T, dtype=torch.bool),
        versions=torch.zeros(B, T, dtype=torch.int64),
        lengths=torch.full((B,), T),
        terminated=torch.zeros(B, dtype=torch.bool),
        success=torch.zeros(B, dtype=torch.bool),
        final_obs=torch.zeros(B, D),
        group_ids=torch.arange(B),
        images=torch.zeros(B, T, 0, dtype=torch.uint8),
        final_images=torch.zeros(B, 0, dtype=torch.uint8),
        chunk_steps=torch.ones(B, T, dtype=torch.int64),
        worker_rank=rank,
        round=index,
    )


def receive_all(dp: DataPlane, sources: list[int]) -> tuple[list[float], dict[int, int]]:
    rx = dp.source(sources)
    got = []
    while rx.open_sources:
        src, b = rx.recv(timeout_s=60)
        if b is not None:
            got.append(float(b.obs[0, 0, 0]))
    return sorted(got), dict(rx.ended)


def host(address: str, out) -> None:
    try:
        dp = DataPlane(address, is_host=True, backend="gloo", timeout_s=60)
        assert dp.form(World(0, 0, 3))
        out.put(("e0", receive_all(dp, [1, 2])))
        dp.leave()
        assert dp.form(World(1, 0, 2))
        out.put(("e1", receive_all(dp, [1])))
        dp.leave()
        t = time.monotonic()
        out.put(("e2", dp.form(World(2, 0, 3)), time.monotonic() - t))  # rank 2 never comes; rank 1 cancels
        assert dp.form(World(3, 0, 2))
        out.put(("e3", receive_all(dp, [1])))
        dp.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def sender(address: str, rank: int, out) -> None:
    try:
        dp = DataPlane(address, is_host=False, backend="gloo", timeout_s=60)
        assert dp.form(World(0, rank, 3))
        tx = dp.sink()
        for i in range(2):
            tx.send(batch(rank, i))
        tx.send_end(epoch_end=0)
        dp.leave()
        if rank == 2:
            return  # scaled away
        assert dp.form(World(1, rank, 2))
        dp.sink().send(batch(rank, 10))
        dp.sink().send_end(epoch_end=1)
        dp.leave()
        time.sleep(0.3)
        out.put(("cancel", dp.form(World(2, rank, 3), abort=lambda: True)))
        assert dp.form(World(3, rank, 2))
        dp.sink().send(batch(rank, 30))
        dp.sink().send_end()
        dp.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def test_the_data_plane_reforms_by_epoch_and_a_cancelled_epoch_releases_everyone():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    address = f"127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=host, args=(address, out))] + [
        ctx.Process(target=sender, args=(address, r, out)) for r in (1, 2)
    ]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + 90
    while len(results) < 5 and time.monotonic() < deadline:
        item = out.get(timeout=90)
        assert item[0] != "error", item[1]
        results[item[0]] = item[1:]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert results["e0"] == (([100.0, 101.0, 200.0, 201.0], {1: KIND_EPOCH_END, 2: KIND_EPOCH_END}),)
    assert results["e1"] == (([110.0], {1: KIND_EPOCH_END}),)
    assert results["cancel"] == (False,)
    assert results["e2"][0] is False and results["e2"][1] < 30
    assert results["e3"] == (([130.0], {1: KIND_END}),)


def survivor(address: str, rank: int, evicted, out) -> None:
    """Rank 0 or 1 of epoch 0; its rank 2 dies after the barrier, while connecting. weight_control evicting
    it (`evicted`) announces epoch 1, of the two survivors."""
    try:
        dp = DataPlane(address, is_host=rank == 0, backend="gloo", timeout_s=60, connect_timeout_s=2)
        t = time.monotonic()
        out.put((f"e0-{rank}", dp.form(World(0, rank, 3), abort=evicted.is_set), time.monotonic() - t))
        assert dp.form(World(1, rank, 2))
        if rank == 0:
            out.put(("e1", receive_all(dp, [1])))
        else:
            dp.sink().send(batch(rank, 1))
            dp.sink().send_end()
        dp.close()
    except BaseException:
        out.put(("error", traceback.format_exc()))


def dies_while_connecting(address: str) -> None:
    import os

    import dvla.dataplane.world as world

    def killed(*args, **kwargs):  # SIGKILL at the worst moment: past the barrier, before connecting
        os._exit(9)

    world.Link = killed
    DataPlane(address, is_host=False, backend="gloo", timeout_s=60).form(World(0, 2, 3))


def test_a_rank_that_dies_while_the_epoch_connects_costs_the_others_the_connect_timeout_not_the_operation_timeout():
    ctx = mp.get_context("spawn")
    out, evicted = ctx.Queue(), ctx.Event()
    address = f"127.0.0.1:{free_port()}"
    procs = [ctx.Process(target=survivor, args=(address, r, evicted, out)) for r in (0, 1)]
    procs.append(ctx.Process(target=dies_while_connecting, args=(address,)))
    for p in procs:
        p.start()
    procs[2].join(60)
    assert procs[2].exitcode == 9
    time.sleep(3)  # the others' connect deadline (2 s) passes: they meet again and wait there ...
    evicted.set()  # ... until the dead rank is evicted and a newer epoch cancels the retry
    results = {}
    while len(results) < 3:
        item = out.get(timeout=60)
        assert item[0] != "error", item[1]
        results[item[0]] = item[1:]
    for p in procs[:2]:
        p.join(30)
        assert p.exitcode == 0
    for rank in (0, 1):
        formed, waited = results[f"e0-{rank}"]
        assert formed is False and waited < 20, results  # not dataplane.timeout_s (60 s here)
    assert results["e1"] == (([101.0], {1: KIND_END}),)
