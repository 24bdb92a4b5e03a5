"""Data plane across real processes (gloo, world size 3) and header validation.

Rank 0 receives; ranks 1 and 2 send NUM_MESSAGES batches each, then END. Some
batches carry a trace context (ids with the top bit set among them), some none.
"""

import hashlib
import multiprocessing as mp
import queue
import time
import traceback

import pytest
import torch

from dvla.dataplane import (
    check_header,
    decode_payload,
    encode_batch,
)
from dvla.dataplane.wire import HEADER_LEN, KIND_END, MAGIC, end_header
from dvla.dataplane.world import DataPlane
from dvla.net import free_port
from dvla.types import TrajectoryBatch, World

WORLD_SIZE = 3
SENDERS = [1, 2]
NUM_MESSAGES = 6
D, A = 35, 4


def trace_context(rank: int, index: int) -> tuple[int, int, int] | None:
    """None, or ids with their top bits set (negative as int64 words), or a trace_id below 2**64."""
    if index % 3 == 0:
        return None
    if index % 3 == 1:
        return (1 << 127) | (1 << 63) | (rank << 8) | index, (1 << 64) - 1 - index, 1
    return 1000 * rank + index, 1 << 63, 0


def make_batch(rank: int, index: int) -> TrajectoryBatch:
    """Deterministic in (rank, index), so the receiver can rebuild what was sent."""
    g = torch.Generator().manual_seed(1000 * rank + index)
    B = 1 + index % 3
    T = int(torch.randint(1, 60, (1,), generator=g))  # differs per message
    obs = torch.randn(B, T, D, generator=g)
    obs[0, 0, :3] = torch.tensor([float("nan"), -0.0, float("inf")])  # bits, not values, must survive
    return TrajectoryBatch(
        obs=obs,
        actions=torch.randn(B, T, A, generator=g),
        log_probs=torch.randn(B, T, generator=g),
        values=torch.randn(B, T, generator=g),
        rewards=torch.randn(B, T, generator=g),
        dones=torch.rand(B, T, generator=g) < 0.5,
        versions=torch.randint(-(2**62), 2**62, (B, T), generator=g),
        lengths=torch.randint(1, T + 1, (B,), generator=g),
        terminated=torch.rand(B, generator=g) < 0.5,
        success=torch.rand(B, generator=g) < 0.5,
        final_obs=torch.randn(B, D, generator=g),
        group_ids=torch.randint(0, 2**40, (B,), generator=g),
        # odd messages carry camera images (an odd I tests the 8-byte padding), even ones none
        images=torch.randint(0, 256, (B, T, 3 * 5 * 5 * (index % 2)), generator=g, dtype=torch.uint8),
        final_images=torch.randint(0, 256, (B, 3 * 5 * 5 * (index % 2)), generator=g, dtype=torch.uint8),
        chunk_steps=torch.randint(0, 5, (B, T), generator=g),
        worker_rank=rank,
        round=index,
        trace_context=trace_context(rank, index),
    )


def digests(batch: TrajectoryBatch) -> dict[str, str]:
    return {
        name: hashlib.sha256(_bytes(getattr(batch, name)).numpy().tobytes()).hexdigest()
        for name in TrajectoryBatch.TENSOR_FIELDS
    }


def _bytes(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().reshape(-1).view(torch.uint8)


def same_bits(a: TrajectoryBatch, b: TrajectoryBatch) -> bool:
    # torch.equal on the raw bytes: NaN != NaN as a value, but its bits must match.
    return all(
        getattr(a, n).dtype == getattr(b, n).dtype
        and getattr(a, n).shape == getattr(b, n).shape
        and torch.equal(_bytes(getattr(a, n)), _bytes(getattr(b, n)))
        for n in TrajectoryBatch.TENSOR_FIELDS
    )


def _receive(plane: DataPlane, results: mp.Queue, go) -> None:
    rx = plane.source(SENDERS)
    try:
        rx.recv(timeout_s=0.2)  # senders wait for `go`, so nothing can be here yet
        timed_out = False
    except TimeoutError:
        timed_out = True
    go.set()
    got, ends, contexts = [], [], []
    while rx.open_sources:
        src, batch = rx.recv(timeout_s=20)
        if batch is None:
            ends.append(src)
            continue
        exact = batch.worker_rank == src and same_bits(batch, make_batch(src, batch.round))
        got.append((src, batch.round, digests(batch), exact))
        contexts.append((src, batch.round, batch.trace_context))
    try:
        rx.recv(timeout_s=1)
        closed_raises = False
    except RuntimeError:
        closed_raises = True
    results.put(
        (
            "receiver",
            0,
            dict(
                got=got,
                ends=ends,
                timed_out=timed_out,
                closed_raises=closed_raises,
                counts=rx.num_received,
                contexts=contexts,
            ),
        )
    )


def _send(plane: DataPlane, rank: int, results: mp.Queue, go) -> None:
    assert go.wait(20), "receiver never said go"
    tx = plane.sink(dst=0)
    sent = []
    for index in range(NUM_MESSAGES):
        batch = make_batch(rank, index)
        tx.send(batch)
        sent.append((rank, index, digests(batch)))
    tx.send_end()
    results.put(("sender", rank, dict(sent=sent, num_sent=tx.num_sent)))


def _worker(rank: int, port: int, results: mp.Queue, go) -> None:
    try:
        plane = DataPlane(f"127.0.0.1:{port}", is_host=rank == 0, backend="gloo", timeout_s=20)
        assert plane.form(World(0, rank, WORLD_SIZE))
        if rank == 0:
            _receive(plane, results, go)
        else:
            _send(plane, rank, results, go)
        plane.close()
    except BaseException:
        results.put(("error", rank, traceback.format_exc()))
        raise


def run_world(timeout_s: float = 25.0) -> dict[int, tuple[str, object]]:
    ctx = mp.get_context("spawn")
    results, go = ctx.Queue(), ctx.Event()
    port = free_port("127.0.0.1")
    procs = [ctx.Process(target=_worker, args=(r, port, results, go), daemon=True) for r in range(WORLD_SIZE)]
    reports = {}
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        while len(reports) < WORLD_SIZE and time.monotonic() < deadline:
            try:
                role, rank, data = results.get(timeout=0.5)
                reports[rank] = (role, data)
            except queue.Empty:
                if any(p.exitcode not in (None, 0) for p in procs):
                    break
        for p in procs:
            p.join(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    errors = [data for role, data in reports.values() if role == "error"]
    assert not errors, "\n".join(errors)
    assert len(reports) == WORLD_SIZE, (
        f"only ranks {sorted(reports)} reported; exit codes {[p.exitcode for p in procs]}"
    )
    assert [p.exitcode for p in procs] == [0] * WORLD_SIZE
    return reports


@pytest.fixture(scope="module")
def world() -> dict[int, tuple[str, object]]:
    """One run of the three processes, shared by the tests that read its reports."""
    return run_world()


def test_trajectories_arrive_bit_exact_from_two_senders(world):
    reports = world
    rx = reports[0][1]
    sent = [m for r in SENDERS for m in reports[r][1]["sent"]]

    assert rx["timed_out"], "recv(timeout_s) must raise TimeoutError when nothing arrives"
    assert sorted(rx["ends"]) == SENDERS
    assert rx["closed_raises"], "recv after every END must raise RuntimeError"
    assert all(exact for *_, exact in rx["got"])
    assert rx["counts"] == {r: NUM_MESSAGES for r in SENDERS}
    assert [reports[r][1]["num_sent"] for r in SENDERS] == [NUM_MESSAGES] * len(SENDERS)
    received = sorted((src, index, d) for src, index, d, _ in rx["got"])
    assert received == sorted(sent), "sha256 of some tensor differs between sender and receiver"
    per_sender_order = [index for src, index, *_ in rx["got"] if src == 1]
    assert per_sender_order == list(range(NUM_MESSAGES)), "one sender's messages must arrive in order"


def test_trace_context_arrives_exactly_or_as_none(world):
    contexts = world[0][1]["contexts"]
    assert len(contexts) == len(SENDERS) * NUM_MESSAGES
    for src, index, received in contexts:
        assert received == trace_context(src, index), f"message {index} from rank {src}"
    assert any(c is None for *_, c in contexts) and any(c and c[0] >> 127 and c[1] >> 63 for *_, c in contexts)


# ---------------------------------------------------------------- codec only, no processes
def test_encode_decode_round_trip_in_process():
    batch = make_batch(1, 4)
    header, payload = encode_batch(batch)
    out = decode_payload(check_header(header), payload)
    assert same_bits(out, batch) and (out.worker_rank, out.round) == (1, 4)
    assert out.trace_context == batch.trace_context == trace_context(1, 4)


def test_trace_context_survives_select_but_not_a_concat_of_different_ones():
    a, b = make_batch(1, 1), make_batch(2, 1)
    assert a.select(a.lengths > 0).trace_context == a.trace_context
    assert TrajectoryBatch.concat([a, b]).trace_context is None
    assert TrajectoryBatch.concat([a]).trace_context == a.trace_context


def corrupt(*index_value: int) -> torch.Tensor:
    """Batch 0's header with header[i] = v for each (i, v) pair given."""
    header, _ = encode_batch(make_batch(1, 0))
    assert header[9] == 0, "batch 0 has no trace context"
    for index, value in zip(index_value[::2], index_value[1::2]):
        header[index] = value
    return header


def with_trace(*index_value: int) -> torch.Tensor:
    """A header with a trace context, some words set to other values."""
    header, _ = encode_batch(make_batch(1, 1))
    assert header[9] == 1
    for i in range(0, len(index_value), 2):
        header[index_value[i]] = index_value[i + 1]
    return header


def end_with_trace() -> torch.Tensor:
    header = end_header(worker_rank=1)
    header[9], header[12:16] = 1, with_trace()[12:16]
    return header


@pytest.mark.parametrize(
    "header, message",
    [
        (corrupt(0, 0x1234), "magic"),
        (corrupt(1, 99), "version"),
        (corrupt(2, 7), "unknown message kind"),
        (corrupt(3, 1 << 40), "outside"),  # absurd B
        (corrupt(4, -5), "outside"),  # negative T
        (corrupt(10, 12), "payload bytes"),
        (corrupt(9, 64), "trace-context flag 64"),
        (with_trace(9, 0), "no trace context"),  # words 12..15 still set
        (with_trace(9, 2), "trace-context flag 2"),
        (with_trace(12, 0, 13, 0), "malformed trace context"),  # trace_id 0
        (with_trace(14, 0), "malformed trace context"),  # span_id 0
        (with_trace(15, 256), "malformed trace context"),  # flags beyond 8 bits
        (with_trace(15, -1), "malformed trace context"),
        (corrupt(13, 5), "no trace context"),
        (end_with_trace(), "no trace context"),
        (corrupt(17, 3, 18, 4), "more sent than produced"),  # the sender's counters (wire v4)
        (corrupt(19, -1), "negative"),
        (torch.zeros(HEADER_LEN, dtype=torch.int64), "magic"),
        (torch.zeros(HEADER_LEN - 1, dtype=torch.int64), rf"int64\[{HEADER_LEN}\]"),
        (corrupt(0, MAGIC).float(), rf"int64\[{HEADER_LEN}\]"),
    ],
)
def test_bad_header_raises_value_error(header, message):
    with pytest.raises(ValueError, match=message):
        check_header(header)


def test_sizes_above_max_elements_are_refused():
    header, _ = encode_batch(make_batch(1, 0))
    with pytest.raises(ValueError, match="<= 10"):
        check_header(header, max_elements=10)


def test_end_header_parses():
    assert check_header(end_header(worker_rank=2)).kind == KIND_END


@pytest.mark.parametrize("context", [(0, 1, 1), (1, 0, 1), (1 << 128, 1, 1), (1, 1 << 64, 1), (1, 1, 256), (1, 1, -1)])
def test_malformed_trace_context_is_refused_before_sending(context):
    batch = make_batch(1, 0)
    batch.trace_context = context
    with pytest.raises(ValueError, match="trace_context"):
        encode_batch(batch)


def test_malformed_batch_is_refused_before_sending():
    batch = make_batch(1, 0)
    batch.rewards = batch.rewards.double()
    with pytest.raises(ValueError, match="rewards"):
        encode_batch(batch)
