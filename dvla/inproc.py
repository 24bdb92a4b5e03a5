"""In-memory ports: the same lanes, wired in one process, for fast tests and the bench.

    LocalWeights   WeightSource + WeightSink over a VersionStore called directly (bytes packed,
                   checksummed and unpacked as on the wire)
    LocalHub       the data plane between threads: per-epoch rendezvous, and a bounded queue
                   towards rank 0 (a full queue blocks the sender: backpressure, as dist.send)
    SetControl     directives a test sets by hand; counts the beats it is asked for

No sockets, no process groups, no gRPC.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

import torch

from dvla.control.errors import NotFound
from dvla.control.store import VersionStore
from dvla.ports import Directives, VersionEvent
from dvla.types import TrajectoryBatch, World
from dvla.weights import pack, unpack

_END, _EPOCH_END = "end", "epoch_end"


class LocalWeights:
    """A weight store in this process, as both the actor's sink and the rollouts' source."""

    def __init__(self, keep: int = 4, max_version_bytes: int = 1 << 34):
        self.store = VersionStore(keep, max_version_bytes, clock_ns=time.time_ns)
        self._cond = threading.Condition()
        self.fetches = 0

    def _event(self) -> VersionEvent:
        v = self.store.latest
        if v is None:
            return VersionEvent(-1, False, "starting")
        return VersionEvent(v.version, v.final, "finished" if v.final else "running")

    def publish(self, version: int, tensors: dict[str, torch.Tensor], final: bool = False,
                publisher_id: str = "") -> int:
        manifest, buf = pack(tensors)
        with self._cond:
            up = self.store.begin(version, manifest, final, publisher_id)
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
            self.fetches += 1
        return v.version, v.final, unpack(v.manifest, bytearray(v.data), verify=True)

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

    def plane(self) -> "LocalPlane":
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

    def sink(self) -> "LocalSink":
        w = self._formed()
        return LocalSink(self.hub._queue(w.epoch), w)

    def source(self, ranks: list[int]) -> "LocalSource":
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
        return not self.open and all(k == _END for k in self.ended.values())


class SetControl:
    """Directives set by hand (`control.directives = replace(control.directives, state="paused")`)."""

    def __init__(self, directives: Directives | None = None):
        self.directives = directives or Directives(state="running", epoch=0, rank=0, world_size=2,
                                                   membership="member")
        self.beats = 0

    def beat(self) -> None:
        self.beats += 1
