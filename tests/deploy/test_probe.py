"""`python -m dvla.rpc.probe`, the container health check, against real servers."""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from dvla.net import free_port


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvla.rpc.probe", *args], capture_output=True, text=True, timeout=30)


def test_serving_weight_control_exits_0(control_server):
    r = probe(control_server.address, "--timeout", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{control_server.address}: SERVING"


def test_nothing_listening_exits_1():
    address = f"127.0.0.1:{free_port()}"
    r = probe(address, "--timeout", "2")
    assert r.returncode == 1
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{address}: UNAVAILABLE")


@pytest.fixture
def not_serving_server():
    """A plain gRPC server whose health service says NOT_SERVING (a server that is shutting down)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    h = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(h, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    h.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    yield f"127.0.0.1:{port}"
    server.stop(0)


def test_not_serving_exits_1(not_serving_server):
    r = probe(not_serving_server)
    assert r.returncode == 1
    assert r.stdout.strip() == f"{not_serving_server}: NOT_SERVING"


def test_bad_timeout_is_a_usage_error():
    r = probe("127.0.0.1:1", "--timeout", "0")
    assert r.returncode == 2 and "--timeout" in r.stderr
