"""Malformed messages thrown at every RPC of a real weight_control (hypothesis).

Whatever arrives - random bytes, or well-typed messages with random fields -
the server answers with a status (never an unhandled error), stays healthy,
and the version it held still serves bit-exactly.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dvla.config import ControlConfig
from dvla.proto.v1 import weights_pb2
from dvla.rpc.client import ControlClient
from services.weight_control.app import BackgroundServer

# (full method name, kind): every RPC weight_control serves
METHODS = [
    ("/dvla.v1.WeightControl/PublishWeights", "stream_unary"),
    ("/dvla.v1.WeightControl/FetchWeights", "unary_stream"),
    ("/dvla.v1.WeightControl/WatchVersions", "unary_stream"),
    ("/dvla.v1.WeightControl/GetLatest", "unary_unary"),
    ("/dvla.v1.Registry/Register", "unary_unary"),
    ("/dvla.v1.Registry/Heartbeat", "unary_unary"),
    ("/dvla.v1.Registry/GetWorld", "unary_unary"),
    ("/dvla.v1.Admin/Status", "unary_unary"),
    ("/dvla.v1.Admin/Pause", "unary_unary"),
    ("/dvla.v1.Admin/Resume", "unary_unary"),
    ("/dvla.v1.Admin/Rescale", "unary_unary"),
    ("/dvla.v1.Admin/Checkpoint", "unary_unary"),
]
# What a handler may answer; UNKNOWN or INTERNAL would mean an exception escaped it.
ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.DATA_LOSS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
WEIGHTS = {"w": torch.arange(64, dtype=torch.float32), "b": torch.ones(3, dtype=torch.int64)}


@pytest.fixture(scope="module")
def server():
    cfg = replace(
        ControlConfig(), chunk_bytes=4096, max_message_bytes=64 * 1024, rpc_timeout_s=5.0, max_version_bytes=1 << 20
    )
    with BackgroundServer(cfg, num_rollouts=2) as srv:
        c = ControlClient(srv.address, cfg)
        c.wait_healthy(10)
        c.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
        c.publish(0, WEIGHTS)
        channel = grpc.insecure_channel(srv.address)  # raw bytes in, raw bytes out
        yield srv, c, channel
        channel.close()
        c.close()


def call_raw(channel, method: str, kind: str, messages: list[bytes]) -> grpc.StatusCode:
    ident = dict(request_serializer=None, response_deserializer=None)
    try:
        if kind == "unary_unary":
            channel.unary_unary(method, **ident)(messages[0], timeout=2)
        elif kind == "unary_stream":
            for _ in channel.unary_stream(method, **ident)(messages[0], timeout=0.5):
                pass
        else:
            channel.stream_unary(method, **ident)(iter(messages), timeout=2)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def still_serving(client: ControlClient) -> None:
    client.wait_healthy(5)
    _, _, got = client.fetch(0)
    assert all(torch.equal(got[k], v) for k, v in WEIGHTS.items())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(METHODS) - 1), messages=st.lists(st.binary(max_size=300), min_size=1, max_size=4))
def test_random_bytes_at_every_rpc(server, which, messages):
    _, client, channel = server
    method, kind = METHODS[which]
    code = call_raw(channel, method, kind, messages)
    assert code in ACCEPTED, f"{method} answered {code} to {messages!r}"
    still_serving(client)


headers = st.builds(
    weights_pb2.WeightHeader,
    version=st.integers(-(2**63), 2**63 - 1),
    final=st.booleans(),
    publisher_id=st.sampled_from(["actor-0", "", "rollout-1"]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=headers,
    num_tensors=st.integers(0, 3),
    shape=st.lists(st.integers(-3, 1 << 40), max_size=4),
    dtype=st.integers(-1, 20),
    offset=st.integers(0, 1 << 62),
    nbytes=st.integers(0, 1 << 62),
    data=st.lists(st.binary(max_size=64), max_size=3),
    sha=st.text(max_size=70),
)
def test_well_typed_publishes_with_random_fields(server, header, num_tensors, shape, dtype, offset, nbytes, data, sha):
    _, client, channel = server
    for i in range(num_tensors):
        t = header.manifest.tensors.add(name=f"t{i}", dtype=dtype if dtype >= 0 else 0, offset=offset, nbytes=nbytes)
        t.shape.extend(shape)
    header.manifest.total_bytes = nbytes
    header.manifest.sha256 = sha
    msgs = [weights_pb2.PublishChunk(header=header).SerializeToString()]
    msgs += [weights_pb2.PublishChunk(data=weights_pb2.DataChunk(data=d)).SerializeToString() for d in data]
    code = call_raw(channel, "/dvla.v1.WeightControl/PublishWeights", "stream_unary", msgs)
    assert code in ACCEPTED
    still_serving(client)
    assert client.status().latest_version >= 0
