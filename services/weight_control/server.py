"""gRPC servicers of weight_control: decode, call the store/registry, encode,
and map ControlError to a gRPC status. All handlers run on one asyncio loop, so
the store and registry need no locks."""
from __future__ import annotations

import asyncio
import functools
import inspect
import time

import grpc

from dvla.proto.v1 import admin_pb2, admin_pb2_grpc, common_pb2 as pb, registry_pb2, registry_pb2_grpc, weights_pb2, weights_pb2_grpc
from dvla.rpc import codec

from .errors import ControlError, DeadlineExceeded, InvalidArgument, NotFound, OutOfOrder, PermissionDenied
from .registry import ACTOR, Registry
from .store import StoredVersion, VersionStore


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
    """What the three services share: the store, the registry, the run state."""

    def __init__(self, store: VersionStore, registry: Registry, chunk_bytes: int):
        self.store = store
        self.registry = registry
        self.chunk_bytes = chunk_bytes
        self.started = time.monotonic()
        self.generation = 0  # bumped on every version or state change, for watchers
        self.changed = asyncio.Condition()
        self.paused = False  # Admin.Pause / Admin.Resume
        self.checkpoint_request = 0  # Admin.Checkpoint requests so far; the actor writes one per new number
        self.checkpoint_done = 0  # the last request the actor reported written

    @property
    def state(self) -> int:
        latest = self.store.latest
        if latest is not None and latest.final:
            return pb.FINISHED
        if self.paused:
            return pb.PAUSED
        return pb.STARTING if latest is None else pb.RUNNING

    def version_info(self, v: StoredVersion) -> pb.VersionInfo:
        return pb.VersionInfo(version=v.version, total_bytes=v.manifest.total_bytes, sha256=v.manifest.sha256,
                              published_unix_ns=v.published_unix_ns, final=v.final, num_tensors=len(v.manifest.tensors))

    def event(self) -> weights_pb2.VersionEvent:
        latest = self.store.latest
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
        first = None
        async for first in request_iterator:
            break
        if first is None or first.WhichOneof("body") != "header":
            self.s.store.reject()
            raise InvalidArgument("a publish must start with a header message")
        h = first.header
        try:
            self.s.registry.check_publisher(h.publisher_id)
        except PermissionDenied:
            self.s.store.reject()
            raise
        try:
            manifest = codec.manifest_from_pb(h.manifest)
        except ValueError as e:
            self.s.store.reject()
            raise InvalidArgument(f"version {h.version}: bad manifest: {e}") from None
        upload = self.s.store.begin(h.version, manifest, h.final, h.publisher_id)
        try:
            async for msg in request_iterator:
                if msg.WhichOneof("body") != "data":
                    raise InvalidArgument(f"version {h.version}: a second header arrived inside the stream")
                upload.write(msg.data.offset, msg.data.data)
        except ControlError:
            self.s.store.reject()
            raise
        stored = self.s.store.commit(upload)
        await self.s.bump()
        return self.s.version_info(stored)

    @_status
    async def FetchWeights(self, request, context):
        if request.latest:
            v = self.s.store.latest
            if v is None:
                raise NotFound("no version has been published yet")
        else:
            v = self.s.store.get(request.version)
        yield weights_pb2.WeightChunk(header=weights_pb2.WeightHeader(
            version=v.version, manifest=codec.manifest_to_pb(v.manifest), final=v.final, publisher_id=v.publisher_id))
        view, step = memoryview(v.data), self.s.chunk_bytes
        for off in range(0, len(view), step):
            yield weights_pb2.WeightChunk(data=weights_pb2.DataChunk(offset=off, data=bytes(view[off:off + step])))

    async def WatchVersions(self, request, context):
        seen_gen, last_sent = -1, None
        while True:
            async with self.s.changed:
                await self.s.changed.wait_for(lambda: self.s.generation != seen_gen)
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
        w = self.s.registry.register(role, request.worker_id, request.address, request.rendezvous_address,
                                     codec.env_spec_from_pb(request.env_spec), request.num_envs, request.num_shards)
        await self.s.bump()
        return registry_pb2.RegisterReply(rank=w.rank, world_size=self.s.registry.world_size,
                                          rendezvous_address=self.s.registry.rendezvous_address, epoch=self.s.registry.epoch)

    @_status
    async def Heartbeat(self, request, context):
        r = self.s.registry
        stats = codec.stats_from_pb(request.stats)
        w = r.heartbeat(request.worker_id, stats)
        if w.role == ACTOR and stats["checkpoint_request_done"] and stats["checkpoint_request_done"] != self.s.checkpoint_done:
            self.s.checkpoint_done = stats["checkpoint_request_done"]
            await self.s.bump()  # wakes Admin.Checkpoint callers waiting for it
        latest = self.s.store.latest
        return registry_pb2.HeartbeatReply(
            state=self.s.state, latest_version=latest.version if latest else -1, epoch=r.epoch, rank=w.rank,
            world_size=r.world_size, membership=codec.MEMBERSHIP_TO_PB[w.membership], num_shards=w.shards_target,
            checkpoint_request=self.s.checkpoint_request if w.role == ACTOR else 0,
            episodes_per_update=r.episodes_per_update, rendezvous_address=r.rendezvous_address)

    @_status
    async def GetWorld(self, request, context):
        r = self.s.registry
        return registry_pb2.World(world_size=r.world_size, rendezvous_address=r.rendezvous_address, complete=r.complete,
                                  workers=worker_infos(r), epoch=r.epoch, episodes_per_update=r.episodes_per_update,
                                  target_rollouts=r.target_rollouts)


def worker_infos(r: Registry) -> list[pb.WorkerInfo]:
    out = []
    for w in r.workers():
        info = pb.WorkerInfo(worker_id=w.worker_id, role=codec.ROLE_TO_PB[w.role], rank=w.rank, address=w.address,
                             alive=r.alive(w), last_seen_s_ago=r.seen_ago(w), stats=codec.stats_to_pb(w.stats),
                             membership=codec.MEMBERSHIP_TO_PB[w.membership])
        if w.env_spec is not None:
            info.env_spec.CopyFrom(codec.env_spec_to_pb(w.env_spec))
        out.append(info)
    return out


def totals(r: Registry) -> admin_pb2.Totals:
    """Sums of the workers' last reports. Each worker's own numbers are a consistent
    snapshot; across workers they are as fresh as the last heartbeats."""
    keys = ("env_steps_produced", "episodes_produced", "episodes_sent", "episodes_received", "episodes_trained",
            "episodes_dropped", "episodes_queued", "episodes_in_training")
    t = {k: sum(int(w.stats.get(k, 0)) for w in r.workers()) for k in keys}
    return admin_pb2.Totals(
        **t, episodes_in_flight=t["episodes_produced"] - t["episodes_trained"] - t["episodes_dropped"],
        episodes_unsent=t["episodes_produced"] - t["episodes_sent"],
        episodes_on_wire=t["episodes_sent"] - t["episodes_received"])


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, s: ControlState):
        self.s = s

    async def Status(self, request, context):
        latest = self.s.store.latest
        return admin_pb2.StatusReply(
            state=self.s.state, has_version=latest is not None, latest_version=latest.version if latest else -1,
            versions=[self.s.version_info(v) for v in self.s.store.versions()],
            workers=worker_infos(self.s.registry), totals=totals(self.s.registry),
            uptime_s=time.monotonic() - self.s.started, epoch=self.s.registry.epoch,
            target_rollouts=self.s.registry.target_rollouts, episodes_per_update=self.s.registry.episodes_per_update)

    @_status
    async def Pause(self, request, context):
        return await self._set_paused(True)

    @_status
    async def Resume(self, request, context):
        return await self._set_paused(False)

    @_status
    async def Rescale(self, request, context):
        self._check_live("rescale")
        r = self.s.registry
        if request.num_rollouts < 0 or request.num_shards < 0:
            raise InvalidArgument("num_rollouts and num_shards must be >= 0 (0: unchanged)")
        if bool(request.worker_id) != bool(request.num_shards):
            raise InvalidArgument("give worker_id and num_shards together, to change one worker's env shards")
        if not request.num_rollouts and not request.num_shards:
            raise InvalidArgument("nothing to rescale: set num_rollouts, or worker_id and num_shards")
        if request.num_shards:
            r.rescale_shards(request.worker_id, request.num_shards)
        leaving, admitted = r.rescale(request.num_rollouts) if request.num_rollouts else ([], 0)
        await self.s.bump()
        return admin_pb2.RescaleReply(epoch=r.epoch, target_rollouts=r.target_rollouts, leaving=leaving,
                                      standby_admitted=admitted, episodes_per_update=r.episodes_per_update)

    @_status
    async def Checkpoint(self, request, context):
        self._check_live("checkpoint")
        actor = next((w for w in self.s.registry.workers() if w.role == ACTOR), None)
        if actor is None:
            raise OutOfOrder("no actor is registered: there is nothing to checkpoint")
        if not 0 <= request.timeout_s <= 86400:  # NaN fails too
            raise InvalidArgument(f"timeout_s must be in [0, 86400] seconds, got {request.timeout_s}")
        self.s.checkpoint_request += 1
        n = self.s.checkpoint_request
        await self.s.bump()
        reply = admin_pb2.CheckpointReply(request=n)
        if request.wait:
            done = lambda: actor.stats.get("checkpoint_request_done", 0) >= n  # noqa: E731
            try:
                async with self.s.changed:
                    await asyncio.wait_for(self.s.changed.wait_for(done), request.timeout_s or 300.0)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"the actor did not write checkpoint request {n} within "
                                       f"{request.timeout_s or 300.0:.0f} s (it writes one after its current update)") from None
            reply.done, reply.version = True, int(actor.stats.get("checkpoint_version", -1))
            reply.path = str(actor.stats.get("checkpoint_path", ""))
        return reply

    def _check_live(self, what: str) -> None:
        if self.s.state == pb.FINISHED:
            raise OutOfOrder(f"the run has finished: there is nothing to {what}")

    async def _set_paused(self, paused: bool) -> admin_pb2.RunStateReply:
        if self.s.state == pb.FINISHED:
            raise OutOfOrder("the run has finished: there is nothing to pause or resume")
        if self.s.paused != paused:
            self.s.paused = paused
            await self.s.bump()  # watchers and the next heartbeats see the new state
        return admin_pb2.RunStateReply(state=self.s.state)


SERVICE_NAMES = ["dvla.v1.WeightControl", "dvla.v1.Registry", "dvla.v1.Admin"]


def add_servicers(server: grpc.aio.Server, s: ControlState) -> None:
    weights_pb2_grpc.add_WeightControlServicer_to_server(WeightControlServicer(s), server)
    registry_pb2_grpc.add_RegistryServicer_to_server(RegistryServicer(s), server)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(s), server)
