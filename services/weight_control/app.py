"""Start and stop the weight_control server (used by __main__ and by tests), and export its metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
import time
from pathlib import Path

from dvla import telemetry
from dvla.config import ControlConfig, TelemetryConfig
from dvla.control.errors import ControlError
from dvla.control.registry import Registry, Role
from dvla.control.run import RunControl
from dvla.control.store import VersionStore
from dvla.rpc.bulk import BulkServer, Incoming
from dvla.rpc.security import TokenInterceptor, resolve_token, server_credentials
from dvla.rpc.server import add_health, bind, make_server, set_serving

from .server import SERVICE_NAMES, ControlState, add_servicers

log = logging.getLogger("dvla.weight_control")


def observe_control(state: ControlState) -> None:
    """Metrics of the store and the registry, read from the metric reader's thread (no-ops without telemetry).

    The store counts rejected publishes but not committed ones, so there is no publishes-committed metric.
    """
    store, registry = state.run.store, state.run.registry

    def latest_version() -> int | None:
        latest = store.latest
        return None if latest is None else latest.version

    def workers_alive() -> list[tuple[int, dict]]:
        alive = [w.role for w in registry.workers() if registry.alive(w)]
        return [(alive.count(role), {"role": role.value}) for role in Role]

    # name, callback, unit, description, counter
    for name, callback, unit, description, counter in (
        ("dvla.control.versions_held", lambda: len(store.held()), "{version}", "policy versions held", False),
        (
            "dvla.control.bytes_held",
            lambda: sum(len(v.data) for v in store.held()),
            "By",
            "weight bytes held in host memory",
            False,
        ),
        ("dvla.control.latest_version", latest_version, "{version}", "newest published policy version", False),
        (
            "dvla.control.workers_alive",
            workers_alive,
            "{worker}",
            "registered workers heard from lately, by role",
            False,
        ),
        ("dvla.control.dataplane_epoch", lambda: registry.epoch, "{epoch}", "data-plane epoch", False),
        (
            "dvla.control.bulk_bytes_sent",
            lambda: state.bulk.bytes_sent if state.bulk else 0,
            "By",
            "weight bytes served on the bulk side channel",
            True,
        ),
        (
            "dvla.control.publishes_rejected",
            lambda: store.publishes_rejected,
            "{publish}",
            "publishes refused (bad manifest, out of order, checksum mismatch, not the actor)",
            True,
        ),
    ):
        telemetry.observe(name, callback, unit, description, counter=counter)


async def start(
    cfg: ControlConfig, num_rollouts: int, host: str | None = None, port: int | None = None, num_actors: int = 1
):
    """Build and start the server; returns (server, bound_port, state)."""
    run = RunControl(
        VersionStore(cfg.keep_versions, cfg.max_version_bytes, clock_ns=time.time_ns),
        Registry(
            num_rollouts, cfg.heartbeat_s, clock=time.monotonic, num_actors=num_actors, evict_after_s=cfg.evict_after_s
        ),
        clock=time.monotonic,
    )
    if cfg.state_path:
        restore_ledger(run, Path(cfg.state_path))
    state = ControlState(run, cfg.chunk_bytes)
    token = resolve_token(cfg)
    if not token:
        log.warning(
            "no token (DVLA_TOKEN or control.token): Admin and PublishWeights are open to anyone who can reach %s",
            cfg.host if host is None else host,
        )
    server = make_server(cfg.max_message_bytes, [TokenInterceptor(token)] if token else None)
    add_servicers(server, state)
    observe_control(state)
    health = add_health(server, SERVICE_NAMES)
    bound = bind(
        server, cfg.host if host is None else host, cfg.port if port is None else port, server_credentials(cfg)
    )
    state.bulk = open_bulk(cfg, host, state)  # once the gRPC port is ours
    await server.start()
    await set_serving(health, SERVICE_NAMES)
    ledger = LedgerFile(Path(cfg.state_path)) if cfg.state_path else None
    state.sweeper = asyncio.ensure_future(sweep_forever(state, cfg.heartbeat_s / 2, ledger))
    return server, bound, state


def open_bulk(cfg: ControlConfig, host: str | None, state: ControlState) -> BulkServer | None:
    """The weight bytes' side channel (dvla/rpc/bulk.py), unless configured off or TLS is on: the channel is
    plain TCP, so under TLS the bytes keep to the authenticated gRPC stream. Its threads look versions up
    on the event loop that owns the store."""
    if cfg.bulk_port < 0:
        return None
    if cfg.tls_cert:
        log.info("control.bulk_port is off under TLS: weight bytes travel over the TLS gRPC stream")
        return None
    loop, store = asyncio.get_running_loop(), state.run.store

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(cfg.rpc_timeout_s)

    async def find(version: int, sha256: str) -> memoryview | None:
        v = next((v for v in store.held() if v.version == version), None)
        return memoryview(v.data) if v is not None and v.manifest.sha256 == sha256 else None

    async def take(ticket: bytes) -> Incoming | str:
        expiry, upload = state.uploads.pop(ticket, (0.0, None))
        if upload is None or expiry < time.monotonic():
            return "PERMISSION_DENIED: unknown or expired publish ticket (OpenPublish)"

        async def commit() -> str:
            try:
                store.commit(upload)
            except ControlError as e:
                return f"{e.code}: {e.message}"
            await state.bump()
            return ""

        return Incoming(upload.buf, upload.accept, lambda: on_loop(commit()))

    bulk = BulkServer(
        cfg.host if host is None else host,
        cfg.bulk_port,
        lookup=lambda version, sha256: on_loop(find(version, sha256)),
        redeem=lambda ticket: on_loop(take(ticket)),
    )
    log.info("weight bytes also served on the bulk port %d", bulk.port)
    return bulk


async def sweep_forever(state: ControlState, period_s: float, ledger: LedgerFile | None = None) -> None:
    """Evict the rollouts that stopped heartbeating, and wake everyone waiting on a change when one is; keep
    the ledger file up to date."""
    try:
        while True:
            await asyncio.sleep(period_s)
            if state.run.sweep():
                await state.bump()
            for event in state.run.registry.drain_events():
                log.warning("%s", event)
            if ledger is not None:
                ledger.save(state.run.ledger())
    finally:
        if ledger is not None:
            ledger.save(state.run.ledger())  # the last word, on a clean stop


def restore_ledger(run: RunControl, path: Path) -> None:
    """Read the ledger a weight_control before this one left at `path`, if any. A file that cannot be read
    back is moved aside (nothing is deleted) and the run goes on without it, saying so."""
    if not path.exists():
        return
    try:
        n = run.restore(json.loads(path.read_text()))
    except (OSError, ValueError) as e:  # JSONDecodeError is a ValueError
        aside = path.with_name(path.name + ".bad")
        path.replace(aside)
        log.error("control.state_path %s cannot be read back (%s): moved to %s; the totals start afresh", path, e,
                  aside)  # fmt: skip
        return
    log.warning("started again: restored the ledger from %s (%d incarnation(s), actor incarnation %d)", path, n,
                run.registry.actor_incarnation)  # fmt: skip


class LedgerFile:
    """The ledger on disk: rewritten whole (a temporary file renamed over it) when it changed."""

    def __init__(self, path: Path):
        self.path, self._last, self._failing = path, None, False

    def save(self, ledger: dict) -> None:
        text = json.dumps(ledger, separators=(",", ":"))
        if text == self._last:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.replace(self.path)
        except OSError as e:
            if not self._failing:  # said once; it keeps trying
                log.error("cannot write the ledger to control.state_path %s: %s", self.path, e)
            self._failing = True
            return
        self._last, self._failing = text, False


async def serve_forever(
    cfg: ControlConfig,
    num_rollouts: int,
    grace_s: float = 2.0,
    telemetry_cfg: TelemetryConfig | None = None,
    num_actors: int = 1,
) -> None:
    """Serve until SIGINT/SIGTERM; with telemetry_cfg, export this service's metrics meanwhile."""
    if telemetry_cfg is None:
        return await _serve(cfg, num_rollouts, grace_s, num_actors)
    telemetry.setup(telemetry_cfg, "weight_control")
    try:
        await _serve(cfg, num_rollouts, grace_s, num_actors)
    finally:
        telemetry.shutdown()


async def _serve(cfg: ControlConfig, num_rollouts: int, grace_s: float, num_actors: int = 1) -> None:
    server, port, state = await start(cfg, num_rollouts, num_actors=num_actors)
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
    if state.bulk is not None:
        state.bulk.close()


class BackgroundServer:
    """The real server on its own event loop in a thread: for tests and in-process benchmarks.

    with BackgroundServer(cfg, num_rollouts=1) as srv:
        client = ControlClient(srv.address, cfg)
    """

    def __init__(self, cfg: ControlConfig, num_rollouts: int = 1, port: int = 0, num_actors: int = 1):
        self.cfg, self.num_rollouts, self._port, self.num_actors = cfg, num_rollouts, port, num_actors
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="weight-control", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def boot():
            self.server, self.port, self.state = await start(
                self.cfg, self.num_rollouts, port=self._port, num_actors=self.num_actors
            )

        try:
            self.loop.run_until_complete(boot())
        except BaseException as e:
            self._error = e
            return
        finally:
            self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        if not self._ready.wait(30) or self._error is not None:
            raise RuntimeError(f"weight_control did not start: {self._error}")
        self.address = f"{self.cfg.host}:{self.port}"
        return self

    def __exit__(self, *exc) -> None:
        async def shutdown():
            self.state.sweeper.cancel()
            await asyncio.gather(self.state.sweeper, return_exceptions=True)
            await self.server.stop(0)
            if self.state.bulk is not None:
                self.state.bulk.close()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
