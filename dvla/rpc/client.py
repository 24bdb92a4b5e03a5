"""Synchronous client of weight_control, for the actor's and rollouts' lane threads.

Every call has a deadline. gRPC failures surface as RpcFailed(code, message) so
the loops never import grpc.
"""

from __future__ import annotations

import json
import logging
import mmap
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dvla.config import ControlConfig
from dvla.ports import Directives, VersionEvent
from dvla.proto.v1 import admin_pb2, admin_pb2_grpc, registry_pb2, registry_pb2_grpc, weights_pb2, weights_pb2_grpc
from dvla.proto.v1 import common_pb2 as pb
from dvla.rpc import bulk, codec
from dvla.rpc.nodecache import NodeCache, resolve_root
from dvla.rpc.security import secure_channel
from dvla.types import Acks, EnvSpec, Membership, RunState, SenderCounts
from dvla.weights import Manifest, pack, transfer_hasher, unpack

log = logging.getLogger("dvla.rpc.client")

# gRPC retries calls that failed UNAVAILABLE (weight_control restarting, a connection reset) with
# exponential backoff, within each call's deadline. Only calls that may run twice: reads, heartbeats,
# registering (the same worker id and key land in the same place) and health checks; a publish is
# never retried behind the actor's back.
_RETRIED = (
    [{"service": "dvla.v1.Registry", "method": m} for m in ("Register", "Heartbeat", "GetWorld")]
    + [
        {"service": "dvla.v1.WeightControl", "method": m}
        for m in ("GetLatest", "OpenFetch", "FetchWeights", "WatchVersions")
    ]
    + [{"service": "dvla.v1.Admin", "method": "Status"}, {"service": "grpc.health.v1.Health"}]
)
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": _RETRIED,
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.2s",
                    "maxBackoff": "5s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)
# Pings on long-lived streams (WatchVersions): a dead server or a cut network shows within ~30 s instead of
# at the next TCP timeout. weight_control permits pings this often (dvla/rpc/server.py).
KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class RpcFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Registration:
    rank: int
    world_size: int
    rendezvous_address: str
    epoch: int
    num_actors: int = 1


BULK_RETRY_S = 60.0  # after the bulk port failed, how long fetches go over gRPC before trying it again


class _Gone(Exception):
    """The version was dropped between its header and its bytes: fetch the newest again."""


def _host_of(address: str) -> str:
    """The host of 'host:port' or '[v6]:port' ('' for other gRPC targets, e.g. unix:)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in host or host.startswith("unix"):
        return ""
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _ReceiveBuffer:
    """An anonymous mapping reused from one fetch to the next while no tensor still views it: a fresh buffer
    costs a page fault per 4 KiB, about as much as moving the bytes on this kind of machine."""

    def __init__(self):
        self._m: mmap.mmap | None = None

    def get(self, n: int) -> mmap.mmap | bytearray:
        if n == 0:
            return bytearray()
        m = self._m
        # references: self._m, m, getrefcount's argument; any more are tensors from the last fetch
        if m is None or len(m) != n or sys.getrefcount(m) > 3:
            m = self._m = mmap.mmap(-1, n)
        return m


def _wrap(fn):
    def call(*a, **kw):
        try:
            return fn(*a, **kw)
        except grpc.RpcError as e:
            raise RpcFailed(e.code().name, e.details() or "") from None

    call.__name__ = fn.__name__
    call.__doc__ = fn.__doc__
    return call


def _event(ev: weights_pb2.VersionEvent) -> VersionEvent:
    v = ev.latest.version if ev.has_version else -1
    return VersionEvent(v, ev.has_version and ev.latest.final, codec.STATE_NAMES.get(ev.state, RunState.UNKNOWN))


class ControlClient:
    def __init__(self, address: str, cfg: ControlConfig):
        self.address = address
        self.cfg = cfg
        opts = [
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.service_config", SERVICE_CONFIG),
            ("grpc.enable_retries", 1),
            *KEEPALIVE,
        ]
        self.channel = secure_channel(address, cfg, opts)  # TLS and the token, as configured
        self.weights = weights_pb2_grpc.WeightControlStub(self.channel)
        self.registry = registry_pb2_grpc.RegistryStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.actor_id = ""  # set by register('actor', ...): only the actor may publish
        self._registered: dict | None = None  # the last register() call's arguments, for rejoin()
        self._bulk_host = _host_of(address)  # the bulk port is on the host this client reached
        self._bulk_down_until = 0.0  # after a failed bulk transfer, gRPC carries the bytes for a while
        self._open_fetch = True  # False against a weight_control without OpenFetch
        root = resolve_root(cfg.node_cache, address)
        self.node_cache = NodeCache(root) if root is not None else None
        self._recv = _ReceiveBuffer()
        self.fetched = {"bulk": 0, "grpc": 0, "node": 0, "base": 0}  # versions by where their bytes came from
        self._base: tuple[tuple[int, str], dict[str, torch.Tensor]] | None = None  # for partial versions

    def close(self) -> None:
        if self.node_cache is not None:
            self.node_cache.close()
        self.channel.close()

    # ------------------------------------------------------------ health
    def wait_healthy(self, timeout_s: float) -> None:
        """Block until the server reports SERVING; RpcFailed('UNAVAILABLE') after timeout_s."""
        try:
            r = self.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s, wait_for_ready=True)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise RpcFailed(
                    "UNAVAILABLE", f"weight_control at {self.address} not reachable within {timeout_s:.0f}s"
                ) from None
            raise RpcFailed(e.code().name, e.details() or "") from None
        if r.status != health_pb2.HealthCheckResponse.SERVING:
            raise RpcFailed("UNAVAILABLE", f"weight_control at {self.address} is not serving")

    # ------------------------------------------------------------ registry
    @_wrap
    def register(
        self,
        role: str,
        worker_id: str,
        rendezvous_address: str = "",
        env_spec: EnvSpec | None = None,
        num_envs: int = 0,
        num_shards: int = 0,
        worker_key: int = 0,
        next_epoch: int = 0,
    ) -> Registration:
        """Rank -1 in the reply: on standby, no slot in the world yet. next_epoch: see rejoin()."""
        self._registered = dict(role=role, worker_id=worker_id, rendezvous_address=rendezvous_address,
                                env_spec=env_spec, num_envs=num_envs, num_shards=num_shards,
                                worker_key=worker_key)  # fmt: skip
        req = registry_pb2.RegisterRequest(
            role=codec.ROLE_TO_PB[role],
            worker_id=worker_id,
            address=socket.gethostname(),
            rendezvous_address=rendezvous_address,
            num_envs=num_envs,
            num_shards=num_shards,
            worker_key=worker_key,
            next_epoch=next_epoch,
        )
        if env_spec is not None:
            req.env_spec.CopyFrom(codec.env_spec_to_pb(env_spec))
        r = self.registry.Register(req, timeout=self.cfg.rpc_timeout_s)
        if role == "actor":
            self.actor_id = worker_id  # the default publisher of this client's publishes
        return Registration(r.rank, r.world_size, r.rendezvous_address, r.epoch, r.num_actors or 1)

    @property
    def can_rejoin(self) -> bool:
        return self._registered is not None

    def register_again(self) -> Registration:
        """The last register() again: the same process, so weight_control answers with today's world (e.g.
        the rendezvous address of an actor rank 0 started again since)."""
        if self._registered is None:
            raise RuntimeError("register_again() needs an earlier register()")
        return self.register(**self._registered)

    def rejoin(self, epoch: int) -> Registration:
        """Register again as before (weight_control was restarted and does not know this worker), saying which
        data-plane epoch this worker is in: the restarted weight_control's next epoch follows it."""
        if self._registered is None:
            raise RuntimeError("rejoin() needs an earlier register()")
        return self.register(**self._registered, next_epoch=epoch + 1)

    def patiently(self, call, *args, retry_on: tuple[str, ...] = ("UNAVAILABLE",), **kw):
        """call(*args, **kw), tried again with backoff while it fails with a code in retry_on (weight_control
        restarting), for up to control.lost_after_s (0: for ever); then its RpcFailed."""
        deadline = time.monotonic() + self.cfg.lost_after_s if self.cfg.lost_after_s else float("inf")
        delay = 0.2
        while True:
            try:
                return call(*args, **kw)
            except RpcFailed as e:
                if e.code not in retry_on or time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(2 * delay, 5.0)

    @_wrap
    def heartbeat(
        self,
        worker_id: str,
        stats: dict,
        acks: Acks | None = None,
        senders: list[SenderCounts] = (),
        broken: list[tuple[int, int]] = (),
    ) -> Directives:
        """Report telemetry (stats), acknowledgements and, from the actor, what each rollout had sent and
        the (epoch, rank) pairs whose data-plane connection broke."""
        req = registry_pb2.HeartbeatRequest(
            worker_id=worker_id,
            stats=codec.stats_to_pb(stats),
            acks=codec.acks_to_pb(acks or Acks()),
            senders=[codec.sender_to_pb(c) for c in senders],
            broken=[registry_pb2.LostRank(epoch=e, rank=k) for e, k in broken],
            worker_key=(self._registered or {}).get("worker_key", 0),  # a replaced process is told so
        )
        r = self.registry.Heartbeat(req, timeout=self.cfg.rpc_timeout_s)
        return Directives(
            codec.STATE_NAMES.get(r.state, RunState.UNKNOWN),
            r.latest_version,
            r.epoch,
            r.rank,
            r.world_size,
            codec.MEMBERSHIP_NAMES.get(r.membership, Membership.UNKNOWN),
            r.num_shards,
            r.checkpoint_request,
            r.episodes_per_update,
            r.rendezvous_address,
            r.num_actors or 1,
            tuple((x.epoch, x.rank) for x in r.lost),
            r.actor_incarnation,
            r.actor_silent_s,
        )

    @_wrap
    def world(self) -> registry_pb2.World:
        return self.registry.GetWorld(registry_pb2.GetWorldRequest(), timeout=self.cfg.rpc_timeout_s)

    def env_spec(self, world: registry_pb2.World) -> EnvSpec | None:
        specs = {codec.env_spec_from_pb(w.env_spec) for w in world.workers if w.role == pb.ROLLOUT}
        specs.discard(None)
        if len(specs) > 1:
            raise ValueError(f"rollout workers report different environments: {specs}")
        return next(iter(specs), None)

    # ------------------------------------------------------------ weights
    def publish(
        self,
        version: int,
        tensors: dict[str, torch.Tensor],
        final: bool = False,
        publisher_id: str = "",
        base: tuple[int, str] | None = None,
    ) -> int:
        """Pack and stream one version; returns the bytes sent. With base (version, sha256 of a whole version
        weight_control holds) the version is partial: the tensors it lacks are the base's.

        publisher_id defaults to the actor this client registered as: only the actor may publish. While
        weight_control is unreachable (or, restarted, does not know the actor yet: its heartbeat registers
        it again) the publish is tried again for up to control.lost_after_s; a version that an earlier try
        stored counts as published.
        """
        manifest, buf = pack(tensors)
        tries = 0

        def once() -> int:
            nonlocal tries
            tries += 1
            try:
                return self.publish_packed(version, manifest, buf, final, publisher_id, base)
            except RpcFailed as e:
                if e.code == "ALREADY_EXISTS" and tries > 1:
                    return len(buf)
                raise

        codes = ("UNAVAILABLE", "PERMISSION_DENIED") if self.actor_id else ("UNAVAILABLE",)
        return self.patiently(once, retry_on=codes)

    def publish_packed(
        self,
        version: int,
        manifest: Manifest,
        buf: bytes | bytearray,
        final: bool = False,
        publisher_id: str = "",
        base: tuple[int, str] | None = None,
    ) -> int:
        """One publish of packed bytes: the header over gRPC and the bytes on the bulk port when weight_control
        has one and this client can reach it, else all of it over gRPC (PublishWeights)."""
        header = weights_pb2.WeightHeader(
            version=version,
            manifest=codec.manifest_to_pb(manifest),
            final=final,
            publisher_id=publisher_id or self.actor_id,
            base_version=base[0] if base else 0,
            base_sha256=base[1] if base else "",
        )
        if self._open_fetch and self._bulk_host and time.monotonic() >= self._bulk_down_until:
            ticket = self._open_publish(header)
            if ticket is not None and ticket.bulk_port:
                try:
                    bulk.send(self._bulk_host, ticket.bulk_port, ticket.ticket, buf, self.cfg.transfer_timeout_s)
                    return len(buf)
                except bulk.BulkError as e:
                    if e.refused:  # weight_control's word on this version: as PublishWeights would say it
                        code, _, why = e.refused.partition(": ")
                        raise RpcFailed(code, why) from None
                    self._bulk_down_until = time.monotonic() + BULK_RETRY_S
                    log.warning("%s; weight bytes go over gRPC for the next %.0f s", e, BULK_RETRY_S)
                    try:
                        return self._publish_streamed(header, buf)
                    except RpcFailed as again:  # the bytes were stored, and only the answer was lost
                        if again.code == "ALREADY_EXISTS":
                            return len(buf)
                        raise
        return self._publish_streamed(header, buf)

    @_wrap
    def _open_publish(self, header: weights_pb2.WeightHeader) -> weights_pb2.PublishTicket | None:
        return self._if_bulk_known(self.weights.OpenPublish, header)

    def _if_bulk_known(self, rpc, request):
        """rpc(request), or None from a weight_control from before the bulk port (UNIMPLEMENTED): this client
        then moves every byte over gRPC."""
        try:
            return rpc(request, timeout=self.cfg.rpc_timeout_s)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            self._open_fetch = False
            return None

    @_wrap
    def _publish_streamed(self, header: weights_pb2.WeightHeader, buf: bytes | bytearray) -> int:
        def chunks() -> Iterator[weights_pb2.PublishChunk]:
            yield weights_pb2.PublishChunk(header=header)
            view, step = memoryview(buf), self.cfg.chunk_bytes
            for off in range(0, len(view), step):
                yield weights_pb2.PublishChunk(
                    data=weights_pb2.DataChunk(offset=off, data=bytes(view[off : off + step]))
                )

        self.weights.PublishWeights(chunks(), timeout=self.cfg.transfer_timeout_s)
        return len(buf)

    def fetch(self, version: int | None = None) -> tuple[int, bool, dict[str, torch.Tensor]]:
        """Fetch a version (None = latest); returns (version, final, tensors), checksum verified. Tried
        again while weight_control is unreachable, for up to control.lost_after_s."""
        return self.patiently(self._fetch, version)

    def _fetch(self, version: int | None = None) -> tuple[int, bool, dict[str, torch.Tensor]]:
        """The version's header over gRPC, then its bytes: from this node's copy, else over the bulk port, else
        over gRPC; checked either way (against the transfer digest, or the sha256 on the gRPC-only path)."""
        req = weights_pb2.FetchRequest(latest=True) if version is None else weights_pb2.FetchRequest(version=version)
        for attempt in range(3):
            ticket = self._ticket(req)
            if ticket is None:  # a weight_control without OpenFetch
                return self._fetch_streamed(req)
            try:
                return self._fetch_ticket(ticket)
            except _Gone:
                if version is not None or attempt == 2:
                    raise RpcFailed("NOT_FOUND", f"version {ticket.header.version} was dropped while fetched") from None
        raise AssertionError("unreachable")

    @_wrap
    def _ticket(self, req: weights_pb2.FetchRequest) -> weights_pb2.FetchTicket | None:
        return self._if_bulk_known(self.weights.OpenFetch, req) if self._open_fetch else None

    def _fetch_ticket(
        self, t: weights_pb2.FetchTicket, keep: bool = False
    ) -> tuple[int, bool, dict[str, torch.Tensor]]:
        """The bytes of the version `t` announces, as tensors; a partial version completed from its base.
        keep: into a buffer of their own, never reused (a base, kept for the partial versions after it)."""
        h = t.header
        manifest = codec.manifest_from_pb(h.manifest)
        n = manifest.total_bytes
        base = self._base_for(h) if h.base_sha256 else None  # first: the receive buffer is this version's

        def fill(view: memoryview) -> None:
            if t.bulk_port and time.monotonic() >= self._bulk_down_until and self._bulk_host:
                try:
                    bulk.receive(self._bulk_host, t.bulk_port, h.version, manifest.sha256, view, t.xxh3_128,
                                 self.cfg.transfer_timeout_s)  # fmt: skip
                    self.fetched["bulk"] += 1
                    return
                except bulk.BulkError as e:
                    if e.gone:
                        raise _Gone() from None
                    self._bulk_down_until = time.monotonic() + BULK_RETRY_S
                    log.warning("%s; weight bytes go over gRPC for the next %.0f s", e, BULK_RETRY_S)
            self._stream_into(h.version, view, t.xxh3_128)
            self.fetched["grpc"] += 1

        def fetch() -> mmap.mmap | bytearray:
            buf = (mmap.mmap(-1, n) if n else bytearray()) if keep else self._recv.get(n)
            fill(memoryview(buf))
            return buf

        if n and self.node_cache is not None:
            hits = self.node_cache.hits
            try:
                buf = self.node_cache.get(h.version, manifest.sha256, n, t.xxh3_128, fetch)
            except OSError as e:  # no shared memory to use: fetch privately from now on
                log.warning("node cache %s unusable (%s): fetching privately", self.node_cache.root, e)
                self.node_cache = None
                buf = fetch()
            if self.node_cache is not None and self.node_cache.hits > hits:
                self.fetched["node"] += 1
        else:
            buf = fetch()
        try:
            tensors = unpack(manifest, buf, verify=False)  # checked on arrival
        except ValueError as e:
            raise RpcFailed("DATA_LOSS", str(e)) from None
        if base is not None:
            tensors = {**base, **tensors}  # the base's names, in its order, with what trains replaced
        return h.version, h.final, tensors

    def _base_for(self, h: weights_pb2.WeightHeader) -> dict[str, torch.Tensor]:
        """The whole version a partial one names: fetched once, kept while versions keep naming it."""
        key = (h.base_version, h.base_sha256)
        if self._base is None or self._base[0] != key:
            t = self._ticket(weights_pb2.FetchRequest(version=h.base_version))
            if t is None or t.header.manifest.sha256 != h.base_sha256 or t.header.base_sha256:
                raise RpcFailed("DATA_LOSS", f"v{h.version} builds on v{h.base_version}, which weight_control "
                                             "does not serve whole")  # fmt: skip
            self._base = (key, self._fetch_ticket(t, keep=True)[2])
            self.fetched["base"] += 1
        return self._base[1]

    @_wrap
    def _stream_into(self, version: int, view: memoryview, digest: str) -> None:
        """FetchWeights for one version, into `view`, checked against the transfer digest."""
        stream = self.weights.FetchWeights(
            weights_pb2.FetchRequest(version=version), timeout=self.cfg.transfer_timeout_s
        )
        received, h = 0, transfer_hasher()
        try:
            for msg in stream:
                if msg.WhichOneof("body") == "header":
                    continue
                end = received + len(msg.data.data)
                if msg.data.offset != received or end > len(view):
                    raise RpcFailed("DATA_LOSS", f"weight stream of version {version} out of order or overrunning")
                view[received:end] = msg.data.data
                h.update(msg.data.data)
                received = end
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise _Gone() from None
            raise
        if received != len(view) or h.hexdigest() != digest:
            raise RpcFailed("DATA_LOSS", f"version {version}: {received} of {len(view)} bytes, or a wrong digest")

    @_wrap
    def _fetch_streamed(self, req: weights_pb2.FetchRequest) -> tuple[int, bool, dict[str, torch.Tensor]]:
        """The gRPC-only fetch, checked against the manifest's sha256."""
        stream = self.weights.FetchWeights(req, timeout=self.cfg.transfer_timeout_s)
        header, buf, received = None, None, 0
        for msg in stream:
            if msg.WhichOneof("body") == "header":
                header = msg.header
                manifest = codec.manifest_from_pb(header.manifest)
                buf = bytearray(manifest.total_bytes)
                continue
            if header is None or msg.data.offset != received:
                raise RpcFailed("DATA_LOSS", "weight stream out of order")
            end = received + len(msg.data.data)
            if end > len(buf):
                raise RpcFailed("DATA_LOSS", f"weight stream overruns {len(buf)} bytes")
            buf[received:end] = msg.data.data
            received = end
        if header is None or received != manifest.total_bytes:
            raise RpcFailed("DATA_LOSS", f"weight stream ended after {received} bytes")
        try:
            tensors = unpack(manifest, buf, verify=True)
        except ValueError as e:
            raise RpcFailed("DATA_LOSS", str(e)) from None
        return header.version, header.final, tensors

    def latest(self, patient: bool = True) -> VersionEvent:
        """The newest version and the run's state; tried again while weight_control is unreachable (patient)."""
        return self.patiently(self._latest) if patient else self._latest()

    @_wrap
    def _latest(self) -> VersionEvent:
        return _event(self.weights.GetLatest(weights_pb2.GetLatestRequest(), timeout=self.cfg.rpc_timeout_s))

    def watch(self, after_version: int, stop: threading.Event | None = None) -> Iterator[VersionEvent]:
        """Yield version/state changes newer than after_version until cancelled or stop is set. A stream
        broken by weight_control going away is opened again (with backoff) for up to control.lost_after_s."""
        delay, broken_since = 0.2, None
        while stop is None or not stop.is_set():
            try:
                for ev in self._watch_once(after_version, stop):
                    broken_since, delay = None, 0.2
                    yield ev
                return  # cancelled, or stopped
            except RpcFailed as e:
                now = time.monotonic()
                broken_since = broken_since or now
                lost = self.cfg.lost_after_s and now - broken_since + delay > self.cfg.lost_after_s
                if e.code != "UNAVAILABLE" or lost:
                    raise
            if stop is not None and stop.wait(delay):
                return
            time.sleep(0 if stop is not None else delay)
            delay = min(2 * delay, 5.0)

    def _watch_once(self, after_version: int, stop: threading.Event | None) -> Iterator[VersionEvent]:
        call = self.weights.WatchVersions(weights_pb2.WatchRequest(after_version=after_version))
        if stop is not None:
            threading.Thread(target=lambda: (stop.wait(), call.cancel()), daemon=True).start()
        try:
            for ev in call:
                yield _event(ev)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED:
                return
            raise RpcFailed(e.code().name, e.details() or "") from None
        finally:
            call.cancel()

    # ------------------------------------------------------------ admin
    @_wrap
    def status(self) -> admin_pb2.StatusReply:
        return self.admin.Status(admin_pb2.StatusRequest(), timeout=self.cfg.rpc_timeout_s)

    @_wrap
    def pause(self) -> str:
        """Ask rollouts to stop at their next safe point; returns the run state."""
        r = self.admin.Pause(admin_pb2.PauseRequest(), timeout=self.cfg.rpc_timeout_s)
        return codec.STATE_NAMES.get(r.state, RunState.UNKNOWN)

    @_wrap
    def resume(self) -> str:
        r = self.admin.Resume(admin_pb2.ResumeRequest(), timeout=self.cfg.rpc_timeout_s)
        return codec.STATE_NAMES.get(r.state, RunState.UNKNOWN)

    @_wrap
    def rescale(self, num_rollouts: int = 0, worker_id: str = "", num_shards: int = 0) -> admin_pb2.RescaleReply:
        """Set the number of rollout workers, or (worker_id, num_shards) one worker's env shards; 0 = unchanged."""
        return self.admin.Rescale(
            admin_pb2.RescaleRequest(num_rollouts=num_rollouts, worker_id=worker_id, num_shards=num_shards),
            timeout=self.cfg.rpc_timeout_s,
        )

    @_wrap
    def set_placement(self, placement: str, detail: str, reason: str, update: int) -> None:
        """Tell weight_control where the run's processes are placed now and why (Status shows it)."""
        self.admin.SetPlacement(
            admin_pb2.PlacementNote(placement=placement, detail=detail, reason=reason, update=update),
            timeout=self.cfg.rpc_timeout_s,
        )

    @_wrap
    def checkpoint(self, wait: bool = True, timeout_s: float = 300.0) -> admin_pb2.CheckpointReply:
        """Ask the actor for a checkpoint after its current update; with wait, return once it is written."""
        return self.admin.Checkpoint(
            admin_pb2.CheckpointRequest(wait=wait, timeout_s=timeout_s),
            timeout=(timeout_s + self.cfg.rpc_timeout_s) if wait else self.cfg.rpc_timeout_s,
        )
