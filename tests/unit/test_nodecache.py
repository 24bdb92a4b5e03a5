"""The node cache with real processes and real files: one fetch per node, every copy checked."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

from dvla.rpc.nodecache import NodeCache, on_this_host, resolve_root
from dvla.weights import transfer_digest

SHA = "ab" * 32


def payload(version: int) -> bytes:
    return bytes((version * 31 + i) % 251 for i in range(1 << 16)) * 8  # 512 KiB


def _rollout(root: str, version: int, fetch_log: str, start, out) -> None:  # a process
    cache = NodeCache(Path(root))
    data = payload(version)

    def fetch():
        with open(fetch_log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.3)  # the network: the others are waiting meanwhile
        return bytearray(data)

    start.wait()
    buf = cache.get(version, SHA, len(data), transfer_digest(data), fetch)
    cache.flush()
    out.put((bytes(buf) == data, cache.hits, cache.fills))


def test_rollouts_on_a_node_fetch_a_version_once(tmp_path):
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    log = tmp_path / "fetches"
    procs = [ctx.Process(target=_rollout, args=(str(tmp_path / "node"), 3, str(log), start, out)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    got = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    assert all(ok for ok, _, _ in got), "a rollout got bytes other than the version's"
    assert len(log.read_text().split()) == 1, "more than one rollout fetched from weight_control"
    assert sorted((hits, fills) for _, hits, fills in got) == [(0, 1), (1, 0), (1, 0), (1, 0)]


def test_a_corrupt_copy_is_replaced_not_used(tmp_path, caplog):
    cache = NodeCache(tmp_path)
    data = payload(1)
    cache.get(1, SHA, len(data), transfer_digest(data), lambda: bytearray(data))
    cache.flush()
    (copy,) = tmp_path.glob("v*.bin")
    raw = bytearray(copy.read_bytes())
    raw[1000] ^= 0xFF  # one flipped byte
    copy.write_bytes(raw)
    other = NodeCache(tmp_path)
    fetched = []
    buf = other.get(1, SHA, len(data), transfer_digest(data), lambda: fetched.append(1) or bytearray(data))
    assert bytes(buf) == data and fetched == [1] and other.bad == 1
    assert "is corrupt" in caplog.text
    copy.write_bytes(b"short")  # truncated: also refused
    third = NodeCache(tmp_path)
    assert bytes(third.get(1, SHA, len(data), transfer_digest(data), lambda: bytearray(data))) == data
    assert third.bad == 1


def test_newest_copies_are_kept_by_time_written_and_a_rollout_removes_its_own(tmp_path):
    cache = NodeCache(tmp_path / "node", keep=2)
    for v in (5, 6, 7, 0, 1):  # 0 and 1 after 7: an actor started afresh from a checkpoint
        data = payload(v)
        cache.get(v, SHA, len(data), transfer_digest(data), lambda d=data: bytearray(d))
        cache.flush()
        time.sleep(0.01)
    names = sorted(p.name[:9] for p in (tmp_path / "node").glob("v*.bin"))
    assert names == ["v00000000", "v00000001"]
    cache.close()
    assert not (tmp_path / "node").exists(), "shared memory left behind after the rollout closed"


def test_a_copy_that_cannot_be_left_turns_the_cache_off_and_keeps_the_bytes(tmp_path, caplog):
    root = tmp_path / "node"
    root.mkdir()
    cache = NodeCache(root)
    data = payload(2)  # the copy's temporary name is taken by a folder: writing it fails
    (root / f"v{2:08d}-{SHA[:32]}.bin.{os.getpid()}.tmp").mkdir(parents=True, exist_ok=True)
    buf = cache.get(2, SHA, len(data), transfer_digest(data), lambda: bytearray(data))
    cache.flush()
    assert bytes(buf) == data
    assert cache.off and "fetches privately" in caplog.text
    calls = []
    cache.get(3, SHA, 3, "x", lambda: calls.append(1) or bytearray(b"abc"))
    assert calls == [1]


def test_where_the_cache_lives():
    assert resolve_root("", "10.1.2.3:50551") is None
    assert on_this_host("127.0.0.1:50551") and on_this_host("localhost:1") and on_this_host("[::1]:5")
    assert resolve_root("auto", "127.0.0.1:50551") is None  # weight_control on this host: nothing to save
    if Path("/dev/shm").is_dir():
        assert resolve_root("auto", "10.255.255.1:50551") == Path("/dev/shm/dvla-weights/10.255.255.1_50551")
    assert resolve_root("/x/y", "[fd00::1]:7") == Path("/x/y/_fd00__1__7")
