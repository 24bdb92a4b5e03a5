"""gRPC servicers of weight_control: decode, call the run's domain (dvla.control), encode,
and map ControlError to a gRPC status. All handlers run on one asyncio loop, so
the domain needs no locks; this module owns the waiting (watchers, Admin.Checkpoint)."""

from __future__ import annotations

import asyncio
import functools
import inspect
import secrets
import time

import grpc

from dvla.control.errors import ControlError, DeadlineExceeded, InvalidArgument, NotFound, PermissionDenied
from dvla.control.registry import Registry, Role
from dvla.control.run import RunControl
from dvla.control.store import Base, StoredVersion, Upload
from dvla.proto.v1 import admin_pb2, admin_pb2_grpc, registry_pb2, registry_pb2_grpc, weights_pb2, weights_pb2_grpc
from dvla.proto.v1 import common_pb2 as pb
from dvla.rpc import codec
from dvla.rpc.bulk import BulkServer

CHECKPOINT_WAIT_S = 300.0  # Admin.Checkpoint's wait when the request gives no timeout_s
PUBLISH_TICKET_S = 60.0  # an OpenPublish ticket not redeemed on the bulk port by then is dropped
PENDING_UPLOADS = 2  # OpenPublish tickets outstanding at once (versions go forward: a newer one supersedes)


def _status(fn):
    """Turn ControlError (and ValueError from codecs) into a precise gRPC status."""

    async def abort(context, e):
        code = getattr(e, "code", "INVALID_ARGUMENT")
        await context.abort(grpc.StatusCode[code], getattr(e, "message", str(e)))

    if inspect.isasyncgenfunction(fn):

        @functools.wraps(fn)
        async def gen(self, request, context):
            try:
                async for item in fn(self, request, context):
                    yield item
            except (ControlError, ValueError) as e:
                await abort(context, e)

        return gen

    @functools.wraps(fn)
    async def unary(self, request, context):
        try:
            return await fn(self, request, context)
        except (ControlError, ValueError) as e:
            await abort(context, e)

    return unary


class ControlState:
    """What the three servicers share: the run's domain, and a condition that wakes waiters on every change."""

    def __init__(self, run: RunControl, chunk_bytes: int, bulk: BulkServer | None = None):
        self.run = run
        self.chunk_bytes = chunk_bytes
        self.bulk = bulk  # the side channel weight bytes travel on (None: over gRPC only)
        self.uploads: dict[bytes, tuple[float, Upload]] = {}  # publish tickets (OpenPublish) -> their upload
        self.placement = admin_pb2.PlacementNote()  # the launcher's last word on where processes run
        self.generation = 0  # bumped on every version or state change, for watchers
        self.changed = asyncio.Condition()
        self.sweeper: asyncio.Future | None = None  # evicts silent rollouts (app.sweep_forever)

    @property
    def state(self) -> int:
        return codec.RUN_STATE_TO_PB[self.run.state]

    def version_info(self, v: StoredVersion) -> pb.VersionInfo:
        return pb.VersionInfo(
            version=v.version,
            total_bytes=v.manifest.total_bytes,
            sha256=v.manifest.sha256,
            published_unix_ns=v.published_unix_ns,
            final=v.final,
            num_tensors=len(v.manifest.tensors),
            partial=v.partial,
            base_version=v.base.version if v.base else 0,
        )

    def event(self) -> weights_pb2.VersionEvent:
        latest = self.run.store.latest
        if latest is None:
            return weights_pb2.VersionEvent(has_version=False, state=self.state)
        return weights_pb2.VersionEvent(has_version=True, latest=self.version_info(latest), state=self.state)

    async def bump(self) -> None:
        async with self.changed:
            self.generation += 1
            self.changed.notify_all()


class WeightControlServicer(weights_pb2_grpc.WeightControlServicer):
    def __init__(self, s: ControlState):
        self.s = s

    @_status
    async def PublishWeights(self, request_iterator, context):
        store = self.s.run.store
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("body") != "header":
            store.reject()
            raise InvalidArgument("a publish must start with a header message")
        upload = self._begin(first.header)
        h = first.header
        try:
            async for msg in request_iterator:
                if msg.WhichOneof("body") != "data":
                    raise InvalidArgument(f"version {h.version}: a second header arrived inside the stream")
                upload.write(msg.data.offset, msg.data.data)
        except ControlError:
            store.reject()
            raise
        stored = store.commit(upload)
        await self.s.bump()
        return self.s.version_info(stored)

    @_status
    async def OpenPublish(self, request, context):
        if self.s.bulk is None:
            return weights_pb2.PublishTicket()
        upload = self._begin(request)
        now = time.monotonic()
        for t in [t for t, (expiry, _) in self.s.uploads.items() if expiry < now]:
            del self.s.uploads[t]  # tickets never redeemed (the actor fell back to gRPC, or died)
        while len(self.s.uploads) >= PENDING_UPLOADS:  # each holds a version's buffer: the oldest goes
            del self.s.uploads[next(iter(self.s.uploads))]
        ticket = secrets.token_bytes(16)
        self.s.uploads[ticket] = (now + PUBLISH_TICKET_S, upload)
        return weights_pb2.PublishTicket(bulk_port=self.s.bulk.port, ticket=ticket)

    def _begin(self, h: weights_pb2.WeightHeader) -> Upload:
        """Check a publish's header (the publisher, the manifest, order and base) and open its upload."""
        store = self.s.run.store
        try:
            self.s.run.registry.check_publisher(h.publisher_id)
        except PermissionDenied:
            store.reject()
            raise
        try:
            manifest = codec.manifest_from_pb(h.manifest)
        except ValueError as e:
            store.reject()
            raise InvalidArgument(f"version {h.version}: bad manifest: {e}") from None
        base = Base(h.base_version, h.base_sha256) if h.base_sha256 else None
        return store.begin(h.version, manifest, h.final, h.publisher_id, base)

    def _wanted(self, request: weights_pb2.FetchRequest) -> StoredVersion:
        if request.latest:
            v = self.s.run.store.latest
            if v is None:
                raise NotFound("no version has been published yet")
            return v
        return self.s.run.store.get(request.version)

    @staticmethod
    def _header(v: StoredVersion) -> weights_pb2.WeightHeader:
        return weights_pb2.WeightHeader(
            version=v.version,
            manifest=codec.manifest_to_pb(v.manifest),
            final=v.final,
            publisher_id=v.publisher_id,
            base_version=v.base.version if v.base else 0,
            base_sha256=v.base.sha256 if v.base else "",
        )

    @_status
    async def OpenFetch(self, request, context):
        v = self._wanted(request)
        port = self.s.bulk.port if self.s.bulk is not None else 0
        return weights_pb2.FetchTicket(header=self._header(v), bulk_port=port, xxh3_128=v.transfer_digest)

    @_status
    async def FetchWeights(self, request, context):
        v = self._wanted(request)
        yield weights_pb2.WeightChunk(header=self._header(v))
        view, step = memoryview(v.data), self.s.chunk_bytes
        for off in range(0, len(view), step):
            yield weights_pb2.WeightChunk(data=weights_pb2.DataChunk(offset=off, data=bytes(view[off : off + step])))

    async def WatchVersions(self, request, context):
        seen_gen, last_sent = -1, None
        while True:
            async with self.s.changed:
                await self.s.changed.wait_for(lambda seen=seen_gen: self.s.generation != seen)
                seen_gen = self.s.generation
            ev = self.s.event()
            key = (ev.latest.version if ev.has_version else -1, ev.state)
            if key != last_sent and (key[0] > request.after_version or ev.state == pb.FINISHED):
                last_sent = key
                yield ev

    async def GetLatest(self, request, context):
        return self.s.event()


class RegistryServicer(registry_pb2_grpc.RegistryServicer):
    def __init__(self, s: ControlState):
        self.s = s

    @_status
    async def Register(self, request, context):
        role = codec.PB_TO_ROLE.get(request.role)
        if role is None:
            raise InvalidArgument(f"unknown role code {request.role}")
        r = self.s.run.registry
        w = self.s.run.register(
            role,
            request.worker_id,
            request.address,
            request.rendezvous_address,
            codec.env_spec_from_pb(request.env_spec),
            request.num_envs,
            request.num_shards,
            worker_key=request.worker_key,
            next_epoch=request.next_epoch,
        )
        await self.s.bump()
        return registry_pb2.RegisterReply(
            rank=w.rank,
            world_size=r.world_size,
            rendezvous_address=r.rendezvous_address,
            epoch=r.epoch,
            num_actors=r.num_actors,
        )

    @_status
    async def Heartbeat(self, request, context):
        r = self.s.run.registry
        w, changed = self.s.run.on_heartbeat(
            request.worker_id,
            codec.stats_from_pb(request.stats),
            codec.acks_from_pb(request.acks),
            [codec.sender_from_pb(c) for c in request.senders],
            [(x.epoch, x.rank) for x in request.broken],
            request.worker_key,
        )
        if changed:
            await self.s.bump()  # wakes Admin.Checkpoint callers waiting for it, and world watchers
        latest = self.s.run.store.latest
        return registry_pb2.HeartbeatReply(
            state=self.s.state,
            latest_version=latest.version if latest else -1,
            epoch=r.epoch,
            rank=w.rank,
            world_size=r.world_size,
            membership=codec.MEMBERSHIP_TO_PB[w.membership],
            num_shards=w.shards_target,
            checkpoint_request=self.s.run.checkpoint_request_for(w),
            episodes_per_update=r.episodes_for(w),
            rendezvous_address=r.rendezvous_address,
            num_actors=r.num_actors,
            lost=[registry_pb2.LostRank(epoch=e, rank=k) for e, k in r.lost()] if w.role == Role.ACTOR else [],
            actor_incarnation=r.actor_incarnation,
            actor_silent_s=self.s.run.actor_silent_s() if w.role == Role.ROLLOUT else 0.0,
        )

    @_status
    async def GetWorld(self, request, context):
        r = self.s.run.registry
        return registry_pb2.World(
            world_size=r.world_size,
            rendezvous_address=r.rendezvous_address,
            complete=r.complete,
            workers=worker_infos(r),
            epoch=r.epoch,
            episodes_per_update=r.episodes_per_update,
            target_rollouts=r.target_rollouts,
            num_actors=r.num_actors,
        )


def worker_infos(r: Registry) -> list[pb.WorkerInfo]:
    out = []
    for w in r.workers():
        info = pb.WorkerInfo(
            worker_id=w.worker_id,
            role=codec.ROLE_TO_PB[w.role],
            rank=w.rank,
            address=w.address,
            alive=r.alive(w),
            last_seen_s_ago=r.seen_ago(w),
            stats=codec.stats_to_pb(w.stats),
            membership=codec.MEMBERSHIP_TO_PB[w.membership],
        )
        if w.env_spec is not None:
            info.env_spec.CopyFrom(codec.env_spec_to_pb(w.env_spec))
        out.append(info)
    return out


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, s: ControlState):
        self.s = s

    async def Status(self, request, context):
        run, r = self.s.run, self.s.run.registry
        latest = run.store.latest
        return admin_pb2.StatusReply(
            state=self.s.state,
            has_version=latest is not None,
            latest_version=latest.version if latest else -1,
            versions=[self.s.version_info(v) for v in run.store.held()],
            workers=worker_infos(r),
            totals=admin_pb2.Totals(**run.totals()),
            uptime_s=run.uptime_s,
            epoch=r.epoch,
            target_rollouts=r.target_rollouts,
            episodes_per_update=r.episodes_per_update,
            num_actors=r.num_actors,
            actors_missing=[admin_pb2.MissingActor(worker_id=w, silent_s=t) for w, t in run.actors_missing()],
            actor_incarnation=r.actor_incarnation,
            placement=self.s.placement,
        )

    @_status
    async def SetPlacement(self, request, context):
        if not request.placement:
            raise InvalidArgument("SetPlacement needs a placement")
        self.s.placement = request
        return request

    @_status
    async def Pause(self, request, context):
        return await self._set_paused(True)

    @_status
    async def Resume(self, request, context):
        return await self._set_paused(False)

    @_status
    async def Rescale(self, request, context):
        leaving, admitted = self.s.run.rescale(request.num_rollouts, request.worker_id, request.num_shards)
        await self.s.bump()
        r = self.s.run.registry
        return admin_pb2.RescaleReply(
            epoch=r.epoch,
            target_rollouts=r.target_rollouts,
            leaving=leaving,
            standby_admitted=admitted,
            episodes_per_update=r.episodes_per_update,
        )

    @_status
    async def Checkpoint(self, request, context):
        n = self.s.run.request_checkpoint(request.timeout_s)
        await self.s.bump()
        reply = admin_pb2.CheckpointReply(request=n)
        if request.wait:
            timeout_s = request.timeout_s or CHECKPOINT_WAIT_S
            try:
                async with self.s.changed:
                    await asyncio.wait_for(self.s.changed.wait_for(lambda: self.s.run.checkpoint_written(n)), timeout_s)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(
                    f"the actor did not write checkpoint request {n} within {timeout_s:.0f} s "
                    "(it writes one after its current update)"
                ) from None
            reply.done = True
            reply.version, reply.path = self.s.run.checkpoint_result()
        return reply

    async def _set_paused(self, paused: bool) -> admin_pb2.RunStateReply:
        if self.s.run.set_paused(paused):
            await self.s.bump()  # watchers and the next heartbeats see the new state
        return admin_pb2.RunStateReply(state=self.s.state)


SERVICE_NAMES = ["dvla.v1.WeightControl", "dvla.v1.Registry", "dvla.v1.Admin"]


def add_servicers(server: grpc.aio.Server, s: ControlState) -> None:
    weights_pb2_grpc.add_WeightControlServicer_to_server(WeightControlServicer(s), server)
    registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(s), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(s), server)
