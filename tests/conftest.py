"""Shared fixtures: a real weight_control server on a free port, in a thread."""
from __future__ import annotations

import asyncio
import threading
from dataclasses import replace

import pytest

from dvla.config import ControlConfig


class ServerThread:
    """Runs services.weight_control's real gRPC server on its own event loop."""

    def __init__(self, cfg: ControlConfig, num_rollouts: int = 1):
        self.cfg, self.num_rollouts = cfg, num_rollouts
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        from services.weight_control.app import start
        asyncio.set_event_loop(self.loop)

        async def boot():
            self.server, self.port, self.state = await start(self.cfg, self.num_rollouts, port=0)
            self.ready.set()
        self.loop.run_until_complete(boot())
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10), "server did not start"
        self.address = f"{self.cfg.host}:{self.port}"
        return self

    def __exit__(self, *exc):
        asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def control_cfg() -> ControlConfig:
    return replace(ControlConfig(), chunk_bytes=4096, max_message_bytes=64 * 1024, keep_versions=3,
                   max_version_bytes=1 << 22, rpc_timeout_s=5.0, transfer_timeout_s=20.0)


@pytest.fixture
def control_server(control_cfg):
    with ServerThread(control_cfg, num_rollouts=2) as s:
        yield s


@pytest.fixture
def client(control_server, control_cfg):
    from dvla.rpc.client import ControlClient
    c = ControlClient(control_server.address, control_cfg)
    c.wait_healthy(10)
    yield c
    c.close()
