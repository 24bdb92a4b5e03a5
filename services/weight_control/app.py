"""Start and stop the weight_control server (used by __main__ and by tests)."""
from __future__ import annotations

import asyncio
import logging
import signal

from dvla.config import ControlConfig
from dvla.rpc.server import add_health, bind, make_server, set_serving

from .registry import Registry
from .server import SERVICE_NAMES, ControlState, add_servicers
from .store import VersionStore

log = logging.getLogger("dvla.weight_control")


async def start(cfg: ControlConfig, num_rollouts: int, host: str | None = None, port: int | None = None):
    """Build and start the server; returns (server, bound_port, state)."""
    state = ControlState(VersionStore(cfg.keep_versions, cfg.max_version_bytes),
                         Registry(num_rollouts, cfg.heartbeat_s), cfg.chunk_bytes)
    server = make_server(cfg.max_message_bytes)
    add_servicers(server, state)
    health = add_health(server, SERVICE_NAMES)
    bound = bind(server, cfg.host if host is None else host, cfg.port if port is None else port)
    await server.start()
    await set_serving(health, SERVICE_NAMES)
    return server, bound, state


async def serve_forever(cfg: ControlConfig, num_rollouts: int, grace_s: float = 2.0) -> None:
    server, port, _ = await start(cfg, num_rollouts)
    log.info("weight_control listening on %s:%d (expecting %d rollout worker(s))", cfg.host, port, num_rollouts)
    print(f"weight_control listening on {cfg.host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.ensure_future(server.wait_for_termination())
    await asyncio.wait([waiter, asyncio.ensure_future(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    log.info("stopping (grace %.1fs)", grace_s)
    await server.stop(grace_s)
