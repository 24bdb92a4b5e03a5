"""Shared fixtures: a real weight_control server on a free port, in a thread."""
from __future__ import annotations

from dataclasses import replace

import pytest

from dvla.config import ControlConfig
from services.weight_control.app import BackgroundServer


@pytest.fixture
def control_cfg() -> ControlConfig:
    return replace(ControlConfig(), chunk_bytes=4096, max_message_bytes=64 * 1024, keep_versions=3,
                   max_version_bytes=1 << 22, rpc_timeout_s=5.0, transfer_timeout_s=20.0)


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
