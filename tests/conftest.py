"""Shared fixtures: a real weight_control server on a free port, in a thread."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from dvla.config import ControlConfig
from services.weight_control.app import BackgroundServer


@pytest.fixture
def control_cfg() -> ControlConfig:
    return replace(
        ControlConfig(),
        chunk_bytes=4096,
        max_message_bytes=64 * 1024,
        keep_versions=3,
        max_version_bytes=1 << 22,
        rpc_timeout_s=5.0,
        transfer_timeout_s=20.0,
    )


@pytest.fixture
def control_server(control_cfg):
    with BackgroundServer(control_cfg, num_rollouts=2) as s:
        yield s


@pytest.fixture
def client(control_server, control_cfg):
    from dvla.rpc.client import ControlClient

    c = ControlClient(control_server.address, control_cfg)
    c.wait_healthy(10)
    yield c
    c.close()


@pytest.fixture
def publisher(client):
    """`client`, registered as the run's actor: only the actor may publish weights."""
    client.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
    return client


def _wait_for(what, timeout_s: float = 120.0, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError("condition not reached")


@pytest.fixture
def wait_for():
    """wait_for(what, timeout_s=120, every_s=0.2): poll what() until it returns something truthy, and return it."""
    return _wait_for
