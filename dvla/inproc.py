"""In-memory ports: the same lanes, wired in one process, for fast tests and the bench.

    LocalWeights   WeightSource + WeightSink over a VersionStore called directly (bytes packed,
                   checksummed and unpacked as on the wire)
    LocalHub       the data plane between threads: per-epoch rendezvous, and a bounded queue
                   towards rank 0 (a full queue blocks the sender: backpressure, as dist.send)
    SetControl     directives a test sets by hand; counts the beats it is asked for
    run_local      a whole run wired over them: rollouts on threads, the actor in the caller's thread

No sockets, no process groups, no gRPC.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from dvla.algo.batching import DynamicBatcher
from dvla.algo.learner import Learner
from dvla.config import AlgoConfig, PolicyConfig
from dvla.control.errors import NotFound
from dvla.control.store import Base, VersionStore
from dvla.counters import EpisodeLedger
from dvla.lanes.epochs import EpochCycle
from dvla.lanes.publish import OffThread, PublishLane
from dvla.lanes.receive import ReceiveLane
from dvla.lanes.sampling import Sampler
from dvla.lanes.shards import ShardPool
from dvla.lanes.training import Progress, Trainer
from dvla.lanes.weights import WeightLane
from dvla.policy import build_policy
from dvla.ports import Directives, VersionEvent
from dvla.types import Acks, Membership, RunState, TrajectoryBatch, World
from dvla.weights import pack, unpack

_END, _EPOCH_END = "end", "epoch_end"


class LocalWeights:
    """A weight store in this process, as both the actor's sink and the rollouts' source."""

    def __init__(self, keep: int = 4, max_version_bytes: int = 1 << 34):
        self.store = VersionStore(keep, max_version_bytes, clock_ns=time.time_ns)
        self._cond = threading.Condition()

    def _event(self) -> VersionEvent:
        v = self.store.latest
        if v is None:
            return VersionEvent(-1, False, RunState.STARTING)
        return VersionEvent(v.version, v.final, RunState.FINISHED if v.final else RunState.RUNNING)

    def publish(
        self,
        version: int,
        tensors: dict[str, torch.Tensor],
        final: bool = False,
        publisher_id: str = "",
        base: tuple[int, str] | None = None,
    ) -> int:
        manifest, buf = pack(tensors)
        with self._cond:
            up = self.store.begin(version, manifest, final, publisher_id, Base(*base) if base else None)
            up.write(0, bytes(buf))
            self.store.commit(up)
            self._cond.notify_all()
        return len(buf)

    def latest(self) -> VersionEvent:
        with self._cond:
            return self._event()

    def fetch(self, version: int | None = None) -> tuple[int, bool, dict[str, torch.Tensor]]:
        with self._cond:
            v = self.store.latest if version is None else self.store.get(version)
            if v is None:
                raise NotFound("no version has been published yet")
            base = self.store.get(v.base.version) if v.base else None
        tensors = unpack(v.manifest, bytearray(v.data), verify=True)
        if base is not None:  # a partial version: the rest from the whole one it names
            tensors = {**unpack(base.manifest, bytearray(base.data), verify=True), **tensors}
        return v.version, v.final, tensors

    def watch(self, after_version: int, stop: threading.Event | None = None) -> Iterator[VersionEvent]:
        last = None
        while stop is None or not stop.is_set():
            with self._cond:
                ev = self._event()
                if ev == last or not (ev.version > after_version or ev.final):
                    self._cond.wait(0.05)
                    continue
            last = ev
            yield ev


class LocalHub:
    """The data plane between threads of one process."""

    def __init__(self, capacity: int = 1):
        self.capacity = capacity
        self._lock = threading.Lock()
        self._arrived: dict[int, int] = {}
        self._decided: dict[int, bool] = {}  # epoch -> formed (True) or cancelled (False)
        self._queues: dict[int, queue.Queue] = {}

    def plane(self) -> LocalPlane:
        return LocalPlane(self)

    def _queue(self, epoch: int) -> queue.Queue:
        with self._lock:
            return self._queues.setdefault(epoch, queue.Queue(maxsize=self.capacity))

    def _arrive(self, world: World) -> None:
        with self._lock:
            self._arrived[world.epoch] = self._arrived.get(world.epoch, 0) + 1
            if self._arrived[world.epoch] == world.size:
                self._decided.setdefault(world.epoch, True)

    def _decision(self, epoch: int, abort: bool) -> bool | None:
        """First of 'go' (everyone arrived) and 'abort' decides for all ranks, as in the TCPStore rendezvous."""
        with self._lock:
            if abort:
                self._decided.setdefault(epoch, False)
            return self._decided.get(epoch)


class LocalPlane:
    """One participant's view of a LocalHub (the Plane port)."""

    def __init__(self, hub: LocalHub):
        self.hub = hub
        self.world: World | None = None

    def form(self, world: World, abort: Callable[[], bool] = lambda: False, poll_s: float = 0.005) -> bool:
        if self.world is not None:
            raise RuntimeError(f"leave data-plane epoch {self.world.epoch} before forming epoch {world.epoch}")
        self.hub._arrive(world)
        while (decided := self.hub._decision(world.epoch, abort=False)) is None:
            time.sleep(poll_s)
            if abort():
                decided = self.hub._decision(world.epoch, abort=True)
                break
        if decided:
            self.world = world
        return bool(decided)

    def leave(self) -> None:
        self.world = None

    def _formed(self) -> World:
        if self.world is None:
            raise RuntimeError("no data-plane epoch is formed")
        return self.world

    def sink(self, dst: int = 0) -> LocalSink:
        w = self._formed()  # one actor in process: every rollout's home
        return LocalSink(self.hub._queue(w.epoch), w)

    def source(self, ranks: list[int]) -> LocalSource:
        return LocalSource(self.hub._queue(self._formed().epoch), ranks)


class LocalSink:
    def __init__(self, q: queue.Queue, world: World):
        self.q, self.world = q, world

    def send(self, batch: TrajectoryBatch) -> None:
        self.q.put((self.world.rank, batch))  # blocks while the queue is full

    def send_end(self, epoch_end: int | None = None) -> None:
        self.q.put((self.world.rank, _END if epoch_end is None else _EPOCH_END))


class LocalSource:
    def __init__(self, q: queue.Queue, ranks: list[int]):
        self.q, self.open = q, set(ranks)
        self.ended: dict[int, str] = {}

    @property
    def open_sources(self) -> list[int]:
        return sorted(self.open)

    def recv(self, timeout_s: float | None = None) -> tuple[int, TrajectoryBatch | None]:
        try:
            rank, item = self.q.get(timeout=timeout_s)
        except queue.Empty:
            raise TimeoutError(f"no data-plane message from {self.open_sources} in {timeout_s} s") from None
        if isinstance(item, str):
            self.open.discard(rank)
            self.ended[rank] = item
            return rank, None
        return rank, item

    def run_ended(self) -> bool:
        return not self.open and bool(self.ended) and all(k == _END for k in self.ended.values())

    def drop(self, rank: int) -> None:
        self.open.discard(rank)


class SetControl:
    """Directives set by hand (`control.directives = replace(control.directives, state=RunState.PAUSED)`)."""

    def __init__(self, directives: Directives | None = None):
        self.directives = directives or Directives(
            state=RunState.RUNNING, epoch=0, rank=0, world_size=2, membership=Membership.MEMBER
        )
        self.beats = 0
        self.acks = Acks()

    def beat(self) -> None:
        self.beats += 1

    def acknowledge(self, **done) -> None:
        self.acks = dataclasses.replace(self.acks, **done)
        self.beat()


@dataclass
class LocalRun:
    """What a run in one process did."""

    versions: list[int]  # published, in order
    records: list[dict]  # one per update
    ledger: dict[str, int]  # the actor's episode ledger at the end
    produced: int  # episodes the rollouts produced
    sent: int


def run_local(
    policy_cfg: PolicyConfig,
    algo_cfg: AlgoConfig,
    make_envs: Callable[[], object],
    *,
    num_rollouts: int = 1,
    num_updates: int = 3,
    max_staleness: int = 0,
    streamer: bool = False,
    background_weights: bool = False,
    queue_batches: int = 4,
    seed: int = 0,
    timeout_s: float = 120.0,
    device: str = "cpu",
) -> LocalRun:
    """A whole run with every lane in this process, over the in-memory ports: each rollout's sampling
    lane on a thread of its own, the actor's training lane in the caller's. The same lanes as
    services/*/loop.py wire over gRPC and torch.distributed. `device` runs inference and training there."""
    weights, hub, stop, finished = LocalWeights(), LocalHub(capacity=1), threading.Event(), threading.Event()
    envs = [make_envs() for _ in range(num_rollouts)]
    size, per_update = num_rollouts + 1, sum(e.num_envs for e in envs)

    def control(rank: int) -> SetControl:
        d = Directives(RunState.RUNNING, epoch=0, rank=rank, world_size=size, membership=Membership.MEMBER)
        return SetControl(dataclasses.replace(d, episodes_per_update=per_update))

    rollouts = [
        _rollout(World(0, rank, size), envs[rank - 1], weights, hub.plane(), control(rank), stop, policy_cfg,
                 max_staleness, background_weights, seed, torch.device(device))
        for rank in range(1, size)
    ]  # fmt: skip
    try:
        torch.manual_seed(seed)
        policy = build_policy(policy_cfg, envs[0].spec).to(device)
        learner = Learner(policy, algo_cfg, torch.device(device), seed=seed)
        cycle = EpochCycle(hub.plane(), control(0), stop, give_up=finished.is_set)
        ledger, progress = EpisodeLedger(), Progress(version=0)
        inbox = ReceiveLane(cycle, cycle.enter(World(0, 0, size)), queue_batches, ledger, stop).start()
        trainer = Trainer(learner, inbox, ledger, progress, max_staleness=max_staleness, streamer=streamer,
                          episodes_per_update=lambda: per_update)  # fmt: skip
        lane = PublishLane(weights, "actor", trained=policy.trained_names())
        publisher = OffThread(lane.submit) if background_weights else lane
        records = _train(trainer, publisher, policy, num_updates)
        finished.set()
        publisher.flush()
        trainer.drain()
        for _, t in rollouts:
            t.join(timeout_s)
            if t.is_alive():
                raise TimeoutError(f"{t.name} did not finish within {timeout_s:.0f} s")
        counts = [s.counts for s, _ in rollouts]
        produced, sent = sum(c.episodes_produced for c in counts), sum(c.episodes_sent for c in counts)
        return LocalRun(lane.published, records, ledger.snapshot(), produced, sent)
    finally:
        stop.set()


def _rollout(
    world: World,
    envs,
    weights: LocalWeights,
    plane: LocalPlane,
    control: SetControl,
    stop: threading.Event,
    policy_cfg: PolicyConfig,
    max_staleness: int,
    background_weights: bool,
    seed: int,
    device: torch.device,
) -> tuple[Sampler, threading.Thread]:
    """One rollout's lanes, its sampling lane started on a thread of its own."""
    lane = WeightLane(weights, lambda: build_policy(policy_cfg, envs.spec).to(device).eval(), stop)
    if background_weights:
        lane.start_thread()

    def seeds(round_: int, shard: int, k: int) -> tuple[list[int], list[int]]:
        return [hash((seed, world.rank, round_, i)) % (1 << 31) for i in range(k)], list(range(k))

    sampler = Sampler(ShardPool.local(envs), lane, control, seeds, max_staleness=max_staleness,
                      batcher=DynamicBatcher(envs.num_envs, 0.0), device=device,
                      generator=torch.Generator(device=device).manual_seed(seed + world.rank), stop=stop)  # fmt: skip
    cycle = EpochCycle(plane, control, stop, give_up=lambda: lane.final)
    thread = threading.Thread(target=sampler.run_epochs, args=(cycle, world), name=f"rollout-{world.rank}", daemon=True)
    thread.start()
    return sampler, thread


def _train(trainer: Trainer, publisher, policy, num_updates: int) -> list[dict]:
    """The actor's loop: v0, then an update and a version per global batch; the last version is final."""
    progress = trainer.progress
    publisher.submit(0, policy.export_weights())
    records = []
    while progress.updates < num_updates:
        batch = trainer.next_global_batch()
        if batch is None:
            raise RuntimeError(f"every rollout ended before update {progress.updates + 1}")
        records.append(trainer.update(batch))
        publisher.submit(progress.updates, policy.export_weights(), final=progress.updates == num_updates)
        progress.version = progress.updates
    return records
