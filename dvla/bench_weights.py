"""`dvla bench --weights`: the weight plane beside a raw TCP copy of the same bytes, on this machine.

A real weight_control runs as its own process; a raw TCP server (a process that sends
the same number of bytes with one sendall) is the yardstick. Every figure is a median
over repeated transfers, each measured side by side with the yardstick in the same run:

- single: one fetcher, one version, over gRPC (FetchWeights, sha256 checked: the path
  before the side channel), over the bulk port (xxh3 checked), and raw TCP;
- concurrent: C fetchers at once (threads of one process, each with its own
  connection), total bytes per second, against C raw receivers at once;
- node: N rollout-like processes on this node fetch one new version at the same moment
  through the node cache; the time until the last holds checked bytes, against one
  fetch, and the bytes weight_control served.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from dvla.config import ControlConfig
from dvla.net import free_port

MIB = 1 << 20


def _raw_server(port: int, nbytes: int, ready) -> None:  # child process
    buf = bytearray(os.urandom(MIB)) * (nbytes // MIB) + bytearray(nbytes % MIB)
    srv = socket.create_server(("127.0.0.1", port), backlog=128)
    ready.set()

    def send(c: socket.socket) -> None:
        with c:
            c.recv(1)
            c.sendall(memoryview(buf))

    while True:
        c, _ = srv.accept()
        threading.Thread(target=send, args=(c,), daemon=True).start()


def _raw_fetch(port: int, out: memoryview) -> None:
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.sendall(b"x")
        got = 0
        while got < len(out):
            k = c.recv_into(out[got:])
            if not k:
                raise EOFError("raw server closed early")
            got += k


def _median_s(fn, reps: int) -> float:
    fn()  # warm: connections, buffers
    xs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def _concurrently(fn, n: int) -> float:
    """Wall time for n threads each running fn() once, started together."""
    barrier = threading.Barrier(n + 1)
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            fn()
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for th in threads:
        th.start()
    barrier.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t


def _concurrent_trial(address: str, cfg: ControlConfig, raw_port: int, nbytes: int, c: int) -> tuple:
    """(raw, bulk, gRPC) wall seconds for c fetchers at once; the faster of two tries for raw and bulk."""
    from dvla.rpc.client import ControlClient

    outs = [bytearray(nbytes) for _ in range(c)]
    clients = [ControlClient(address, replace(cfg, node_cache="")) for _ in range(c)]
    turn = iter(range(10**9))
    try:
        r = min(_concurrently(lambda: _raw_fetch(raw_port, memoryview(outs[next(turn) % c])), c) for _ in range(2))
        b = min(_concurrently(lambda: clients[next(turn) % c].fetch(None), c) for _ in range(2))
        g = _concurrently(lambda: clients[next(turn) % c]._fetch_streamed(_latest_req()), c)
    finally:
        for cl in clients:
            cl.close()
    return r, b, g


def _node_fetcher(address: str, cfg: ControlConfig, nbytes: int, start, q, results) -> None:  # forkserver child
    from dvla.rpc.client import ControlClient

    client = ControlClient(address, cfg)
    buf = client._recv.get(nbytes)  # steady state: every rollout's receive buffer was used before
    memoryview(buf)[:] = bytes(nbytes)
    del buf
    try:
        while True:
            msg = q.get()
            if msg is None:
                return
            start.wait()
            t0 = time.time()
            before = client.fetched["bulk"] + client.fetched["grpc"]
            version, _, tensors = client.fetch(None)
            fetched = client.fetched["bulk"] + client.fetched["grpc"] - before  # from weight_control, not the node
            results.put((t0, time.time(), version, fetched))
            del tensors
    finally:
        client.close()


def _node_trial(address: str, cfg: ControlConfig, nbytes: int, n: int, publish, trials: int = 3) -> tuple:
    """n rollout-like processes fetch each of `trials` new versions at the same moment: the median time until
    the last holds checked bytes, and the most fetches from weight_control one version took."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["dvla.rpc.client"])
    start, results = ctx.Event(), ctx.Queue()
    queues = [ctx.Queue() for _ in range(n)]
    procs = [ctx.Process(target=_node_fetcher, args=(address, cfg, nbytes, start, q, results), daemon=True)
             for q in queues]  # fmt: skip
    for p in procs:
        p.start()
    times, fetches = [], []
    try:
        for _ in range(trials):
            v = publish()
            start.clear()
            for q in queues:
                q.put("go")
            time.sleep(1.0 + 0.1 * n)  # every process waits at the start line
            start.set()
            got = [results.get(timeout=120) for _ in range(n)]
            if any(x[2] != v for x in got):
                raise RuntimeError(f"fetched versions {[x[2] for x in got]}, published {v}")
            times.append(max(x[1] for x in got) - min(x[0] for x in got))
            fetches.append(sum(x[3] for x in got))
    finally:
        for q in queues:
            q.put(None)
        for p in procs:
            p.join(30)
    return statistics.median(times), max(fetches)


def run_weight_bench(
    out_root: Path, mib: int = 64, reps: int = 7, concurrent: tuple[int, ...] = (1, 4, 16, 50),
    node: tuple[int, ...] = (1, 2, 4, 8, 16), publish_check: bool = True,
) -> Path:  # fmt: skip
    from dvla.rpc.client import ControlClient

    nbytes = mib * MIB
    out = out_root / time.strftime("bench-weights-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    raw_port = free_port()
    raw = ctx.Process(target=_raw_server, args=(raw_port, nbytes, ready), daemon=True)
    raw.start()
    ready.wait(60)
    port = free_port()
    cache_root = out / "node-cache"
    cfg = replace(ControlConfig(), port=port, max_version_bytes=max(nbytes * 2, 1 << 30), keep_versions=4)
    wc = subprocess.Popen(
        [sys.executable, "-m", "services.weight_control", f"control.port={port}", "telemetry.exporter=none",
         f"control.max_version_bytes={cfg.max_version_bytes}", "control.keep_versions=4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    rows: list[dict] = []
    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    try:
        actor = ControlClient(address, replace(cfg, node_cache=""))
        actor.wait_healthy(60)
        actor.register("actor", "bench", rendezvous_address="127.0.0.1:1")
        g = torch.Generator().manual_seed(0)
        version = 0

        def publish() -> int:
            nonlocal version
            version += 1
            actor.publish(version, {"w": torch.randn(nbytes // 4, generator=g)})
            return version

        publish()
        fetcher = ControlClient(address, replace(cfg, node_cache=""))
        warm = bytearray(nbytes)
        say(f"dvla bench --weights: one {mib} MiB version, weight_control in its own process, "
            f"{os.cpu_count()} CPU(s); medians of {reps}.")  # fmt: skip
        say("")
        say("| path | seconds | GB/s | of raw TCP |")
        say("|---|---|---|---|")
        raw_s = _median_s(lambda: _raw_fetch(raw_port, memoryview(warm)), reps)
        grpc_s = _median_s(lambda: fetcher._fetch_streamed(_latest_req()), max(3, reps // 2))
        bulk_s = _median_s(lambda: fetcher.fetch(None), reps)
        assert fetcher.fetched["bulk"] > 0, "the bulk port was not used"
        raw2_s = _median_s(lambda: _raw_fetch(raw_port, memoryview(warm)), reps)  # drift check
        raw_s = min(raw_s, raw2_s)
        for name, s in (("raw TCP (yardstick)", raw_s), ("gRPC FetchWeights", grpc_s), ("bulk port", bulk_s)):
            rows.append({"test": "single", "path": name, "n": 1, "seconds": s, "of_raw": raw_s / s})
            say(f"| {name} | {s:.4f} | {nbytes / s / 1e9:.2f} | {raw_s / s:.2f} |")
        say("")
        say("| concurrent fetchers | raw TCP GB/s | bulk GB/s | of raw | gRPC GB/s | of raw |")
        say("|---|---|---|---|---|---|")
        for c in concurrent:
            r, b, gr = _concurrent_trial(address, cfg, raw_port, nbytes, c)
            total = c * nbytes
            rows.append({"test": "concurrent", "path": "bulk port", "n": c, "seconds": b, "of_raw": r / b})
            rows.append({"test": "concurrent", "path": "gRPC FetchWeights", "n": c, "seconds": gr, "of_raw": r / gr})
            say(f"| {c} | {total / r / 1e9:.2f} | {total / b / 1e9:.2f} | {r / b:.2f} | {total / gr / 1e9:.2f} | "
                f"{r / gr:.2f} |")  # fmt: skip
        say("")
        say(
            "| rollouts on the node | node cache: delivery s (until the last holds checked bytes) | x one bulk fetch "
            "| x one rollout | fetches from weight_control per version | each fetching directly: delivery s |"
        )
        say("|---|---|---|---|---|---|")
        node_cfg = replace(cfg, node_cache=str(cache_root))
        direct_cfg = replace(cfg, node_cache="")
        one = None
        for n in node:
            d, fetches = _node_trial(address, node_cfg, nbytes, n, publish)
            direct, _ = _node_trial(address, direct_cfg, nbytes, n, publish)
            one = d if one is None else one
            rows.append({"test": "node", "path": "node cache", "n": n, "seconds": d, "of_raw": raw_s / d})
            rows.append({"test": "node", "path": "direct bulk", "n": n, "seconds": direct, "of_raw": raw_s / direct})
            say(f"| {n} | {d:.4f} | {d / bulk_s:.2f} | {d / one:.2f} | {fetches} | {direct:.4f} |")
        say("")
        say("One rollout on the node path fetches and also writes the node's copy (which the others map and check).")
        if publish_check:
            from dvla.bench import BALANCED, measure_publish_overhead
            from dvla.config import load_config

            p = measure_publish_overhead(load_config(None, BALANCED), updates=8, sink=actor)
            say("")
            say(f"Publish stall (balanced preset, real weight_control): actor update {p['update_s_publish_off']:.3f} s "
                f"with no publishing vs {p['update_s_publish_on']:.3f} s while each {p['version_mb']:.1f} MiB "
                f"version streams out on the publish lane ({p['publish_s']:.2f} s per publish): ratio "
                f"{p['ratio']:.3f} (medians).")  # fmt: skip
            rows.append({"test": "publish", "path": "gRPC PublishWeights", "n": 1, "seconds": p["publish_s"],
                         "of_raw": p["ratio"]})  # fmt: skip
    finally:
        wc.terminate()
        try:
            wc.wait(10)
        except subprocess.TimeoutExpired:
            wc.kill()
        raw.kill()
    (out / "weights.md").write_text("\n".join(lines) + "\n")
    import csv

    with open(out / "weights.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"written: {out}/weights.md, weights.csv")
    return out


def _latest_req():
    from dvla.proto.v1 import weights_pb2

    return weights_pb2.FetchRequest(latest=True)
