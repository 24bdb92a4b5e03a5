"""A data plane that loses a rank (real processes, gloo): the receiver goes on with the others.

Rank 0 receives. Rank 1 sends three batches and END; rank 2 sends one batch and
dies (os._exit, like kill -9); rank 3 hangs (alive, silent) until the receiver
drops it, as it does for a worker weight_control evicted.
"""

import multiprocessing as mp
import os
import queue
import time
import traceback

from dvla.dataplane.world import DataPlane
from dvla.net import free_port
from dvla.ports import SourceLost
from dvla.types import World
from tests.integration.test_dataplane import make_batch

WORLD_SIZE = 4


def _receive(plane: DataPlane, results, released) -> None:
    rx = plane.source([1, 2, 3])
    got, lost, ends = [], [], []
    deadline = time.monotonic() + 30
    while set(rx.open_sources) - {3} and time.monotonic() < deadline:
        try:
            src, batch = rx.recv(timeout_s=1)
        except SourceLost as e:
            lost.append((e.rank, "closed by peer" in str(e).lower() or "reset" in str(e).lower()))
            continue
        except TimeoutError:
            continue
        if batch is None:
            ends.append(src)
        else:
            got.append((src, batch.round))
    ended_before_drop = rx.run_ended()
    rx.drop(3)  # the hung one: weight_control evicted it
    results.put(
        (
            "receiver",
            0,
            dict(got=got, lost=lost, ends=ends, open=rx.open_sources, ended_before_drop=ended_before_drop,
                 run_ended=rx.run_ended(), lost_set=sorted(rx.lost)),
        )
    )  # fmt: skip
    released.set()


def _worker(rank: int, port: int, results, released) -> None:
    try:
        plane = DataPlane(f"127.0.0.1:{port}", is_host=rank == 0, backend="gloo", timeout_s=30)
        assert plane.form(World(0, rank, WORLD_SIZE))
        if rank == 0:
            _receive(plane, results, released)
        elif rank == 1:
            tx = plane.sink(0)
            for i in range(3):
                time.sleep(0.5)  # rank 2 dies meanwhile
                tx.send(make_batch(1, i))
            tx.send_end()
        elif rank == 2:
            plane.sink(0).send(make_batch(2, 0))
            time.sleep(0.2)
            os._exit(9)  # no goodbye: its connection just closes
        else:
            released.wait(60)  # alive, but sends nothing
        results.put(("done", rank, None))
        released.wait(60)
        plane.close()
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        raise


def test_a_dead_rank_is_reported_lost_and_a_dropped_one_closed_while_the_others_deliver_everything():
    ctx = mp.get_context("spawn")
    results, released = ctx.Queue(), ctx.Event()
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=_worker, args=(r, port, results, released), daemon=True) for r in range(WORLD_SIZE)]
    reports = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + 60
        while "receiver" not in {role for role, _ in reports.values()} and time.monotonic() < deadline:
            try:
                role, rank, data = results.get(timeout=0.5)
            except queue.Empty:
                continue
            assert role != "error", data
            reports[(role, rank)] = (role, data)
    finally:
        released.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    r = reports[("receiver", 0)][1]
    assert r["got"] == [(2, 0), (1, 0), (1, 1), (1, 2)] or sorted(r["got"]) == [(1, 0), (1, 1), (1, 2), (2, 0)]
    assert r["lost"] == [(2, True)]  # the gloo error names the closed connection
    assert r["ends"] == [1] and r["ended_before_drop"] is False  # rank 3 was still open
    assert r["open"] == [] and r["run_ended"] is True and r["lost_set"] == [2, 3]
    assert [p.exitcode for p in procs] == [0, 0, 9, 0]
