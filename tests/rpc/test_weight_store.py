"""The weight store through a real gRPC server on a free port."""

from __future__ import annotations

import hashlib
import threading

import grpc
import pytest
import torch

from dvla.proto.v1 import weights_pb2
from dvla.rpc import codec
from dvla.rpc.client import RpcFailed
from dvla.weights import pack

# Every test here publishes, and only the actor may: register the client as the actor first.
pytestmark = pytest.mark.usefixtures("publisher")


def tensors(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.weight": torch.randn(64, 33, generator=g),  # several 4 KiB chunks
        "layer.bias": torch.randn(64, generator=g).to(torch.bfloat16),
        "steps": torch.randint(0, 1 << 40, (7,), generator=g),
        "mask": torch.rand(5, generator=g) > 0.5,
        "empty": torch.zeros(0, 3),
    }


def assert_same(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


def test_versions_round_trip_bit_exactly(client):
    for v in range(3):
        client.publish(v, tensors(v))
    for v in range(3):
        got_v, final, got = client.fetch(v)
        assert got_v == v and not final
        assert_same(tensors(v), got)
    assert client.fetch(None)[0] == 2
    assert client.latest().version == 2


def test_only_newest_versions_are_kept(client, control_cfg):
    for v in range(5):
        client.publish(v, tensors(v))
    held = [x.version for x in client.status().versions]
    assert held == [2, 3, 4][-control_cfg.keep_versions :]
    with pytest.raises(RpcFailed) as e:
        client.fetch(0)
    assert e.value.code == "NOT_FOUND"


def raw_publish(client, header: weights_pb2.WeightHeader, chunks: list[tuple[int, bytes]], extra=()):
    msgs = [weights_pb2.PublishChunk(header=header)]
    msgs += [weights_pb2.PublishChunk(data=weights_pb2.DataChunk(offset=o, data=d)) for o, d in chunks]
    msgs += list(extra)
    return client.weights.PublishWeights(iter(msgs), timeout=10)


def split(buf: bytes, step: int) -> list[tuple[int, bytes]]:
    return [(o, bytes(buf[o : o + step])) for o in range(0, len(buf), step)]


def publish_code(client, version: int, t: dict, mutate) -> grpc.StatusCode:
    manifest, buf = pack(t)
    header = weights_pb2.WeightHeader(version=version, manifest=codec.manifest_to_pb(manifest), publisher_id="actor-0")
    chunks = split(buf, 4096)
    header, chunks, extra = mutate(header, chunks)
    with pytest.raises(grpc.RpcError) as e:
        raw_publish(client, header, chunks, extra)
    return e.value.code()


def _truncate(h, c):
    return h, c[:-1], ()


def _corrupt(h, c):
    o, d = c[1]
    c[1] = (o, bytes([d[0] ^ 0xFF]) + d[1:])
    return h, c, ()


def _reorder(h, c):
    c[0], c[1] = c[1], c[0]
    return h, c, ()


def _overrun(h, c):
    o, d = c[-1]
    return h, c + [(o + len(d), b"x" * 10)], ()


def _bad_manifest(h, c):
    h.manifest.tensors[0].nbytes += 4
    return h, c, ()


def _overlapping(h, c):
    h.manifest.tensors[1].offset = h.manifest.tensors[0].offset  # layer.bias inside layer.weight's bytes
    return h, c, ()


def _second_header(h, c):
    return h, c, (weights_pb2.PublishChunk(header=h),)


@pytest.mark.parametrize(
    "version,mutate,code",
    [
        (1, lambda h, c: (h, c, ()), grpc.StatusCode.ALREADY_EXISTS),  # duplicate
        (0, lambda h, c: (h, c, ()), grpc.StatusCode.FAILED_PRECONDITION),  # out of order
        (2, _truncate, grpc.StatusCode.DATA_LOSS),
        (2, _corrupt, grpc.StatusCode.DATA_LOSS),  # checksum mismatch
        (2, _reorder, grpc.StatusCode.INVALID_ARGUMENT),
        (2, _overrun, grpc.StatusCode.INVALID_ARGUMENT),
        (2, _bad_manifest, grpc.StatusCode.INVALID_ARGUMENT),
        (2, _overlapping, grpc.StatusCode.INVALID_ARGUMENT),  # stored versions stay as they were
        (2, _second_header, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_publish_is_rejected_and_previous_version_still_serves(client, version, mutate, code):
    client.publish(0, tensors(0))
    client.publish(1, tensors(1))
    assert publish_code(client, version, tensors(99), mutate) == code
    assert client.latest().version == 1
    v, _, got = client.fetch(None)
    assert v == 1
    assert_same(tensors(1), got)
    assert [x.version for x in client.status().versions] == [0, 1]


def test_publish_without_header_is_invalid(client):
    with pytest.raises(grpc.RpcError) as e:
        client.weights.PublishWeights(
            iter([weights_pb2.PublishChunk(data=weights_pb2.DataChunk(offset=0, data=b"x"))]), timeout=5
        )
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        client.weights.PublishWeights(iter([]), timeout=5)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_version_and_message_are_refused(client, control_cfg):
    big = {"w": torch.zeros(control_cfg.max_version_bytes // 4 + 16)}
    manifest, _ = pack(big)
    header = weights_pb2.WeightHeader(version=0, manifest=codec.manifest_to_pb(manifest), publisher_id="actor-0")
    with pytest.raises(grpc.RpcError) as e:
        raw_publish(client, header, [])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the limit" in e.value.details()
    # one message above the gRPC limit is refused by the transport itself
    t = {"w": torch.zeros(control_cfg.max_message_bytes // 4 + 1024)}
    manifest, buf = pack(t)
    header = weights_pb2.WeightHeader(version=0, manifest=codec.manifest_to_pb(manifest), publisher_id="actor-0")
    with pytest.raises(grpc.RpcError) as e:
        raw_publish(client, header, [(0, bytes(buf))])
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.latest().version == -1


def test_final_version_ends_the_sequence(client):
    client.publish(0, tensors(0))
    client.publish(1, tensors(1), final=True)
    ev = client.latest()
    assert ev.final and ev.state == "finished"
    with pytest.raises(RpcFailed) as e:
        client.publish(2, tensors(2))
    assert e.value.code == "FAILED_PRECONDITION"


def test_watch_sees_each_new_version(client):
    stop = threading.Event()
    seen = []

    def watcher():
        for ev in client.watch(after_version=-1, stop=stop):
            seen.append(ev.version)
            if ev.final:
                return

    t = threading.Thread(target=watcher)
    t.start()
    for v in range(3):
        client.publish(v, tensors(v), final=(v == 2))
    t.join(10)
    stop.set()
    assert not t.is_alive()
    assert seen[-1] == 2 and seen == sorted(seen)


def test_sha256_matches_what_was_published(client):
    manifest, buf = pack(tensors(3))
    client.publish(0, tensors(3))
    st = client.status().versions[0]
    assert st.sha256 == hashlib.sha256(buf).hexdigest() == manifest.sha256
