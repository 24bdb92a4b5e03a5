"""The actor's receiving and publishing lanes, each a thread around a bounded hand-off."""
from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable

from dvla import telemetry
from dvla.counters import EpisodeLedger
from dvla.dataplane import KIND_END, TrajectoryReceiver
from dvla.dataplane.world import DataPlane
from dvla.rpc.client import ControlClient
from dvla.types import TrajectoryBatch

log = logging.getLogger("dvla.actor.lanes")
END = None  # put on the queue once every rollout has sent END


class ReceiveLane:
    """Data plane -> bounded queue. When the queue is full this lane stops receiving,
    so rollouts block in send: backpressure, never silent loss.

    Across data-plane epochs: once every rollout of the current epoch has sent
    EPOCH_END (everything they produced has arrived), the lane leaves the old
    group and forms the next epoch's (next_world), while training goes on from
    the queue. When every rollout sent END, or there is no next world, END is queued.
    """

    def __init__(self, plane: DataPlane | None, world: tuple[int, int], capacity: int, ledger: EpisodeLedger,
                 stop: threading.Event, next_world: Callable[[int], tuple[int, int, int] | None] = lambda e: None,
                 moved_on: Callable[[int], bool] = lambda e: False, finished: Callable[[], bool] = lambda: False):
        """world: (epoch, world size) of the group already formed; next_world(epoch) gives the one after it."""
        self.plane, self.ledger, self.stop = plane, ledger, stop
        self.epoch, self.world_size = world
        self.next_world, self.moved_on, self.finished = next_world, moved_on, finished
        self.queue: queue.Queue[TrajectoryBatch | None] = queue.Queue(maxsize=capacity)
        self.blocked_s = 0.0  # time spent waiting for room in the queue
        self.busy_s = 0.0
        self.epochs_formed = 1
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="receive-lane", daemon=True)

    def start(self) -> "ReceiveLane":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                receiver = TrajectoryReceiver(sources=list(range(1, self.world_size)))
                self._receive(receiver)
                if self.stop.is_set() or all(k == KIND_END for k in receiver.ended.values()):
                    return  # the run is over
                if not self._reform():
                    return
        except BaseException as e:
            log.exception("receive lane failed")
            self.error = e
        finally:
            self.queue.put(END)

    def _receive(self, receiver: TrajectoryReceiver) -> None:
        while receiver.open_sources and not self.stop.is_set():
            try:
                src, b = receiver.recv(timeout_s=0.5)
            except TimeoutError:
                continue
            if b is None:
                continue
            t = time.monotonic()
            self.ledger.receive(b.num_episodes)
            # the span covers the wait for room in the queue: long spans are backpressure
            with telemetry.span("receive.enqueue", parent=b.trace_context, worker=src, episodes=b.num_episodes,
                                epoch=b.epoch):
                while not self.stop.is_set():
                    try:
                        self.queue.put(b, timeout=0.5)
                        break
                    except queue.Full:
                        pass
            self.blocked_s += time.monotonic() - t

    def _reform(self) -> bool:
        """Leave the finished epoch and form the next; False when there is none (the run is over)."""
        self.plane.leave()
        while True:
            nxt = self.next_world(self.epoch)
            if nxt is None:
                return False
            epoch, _, size = nxt
            with telemetry.span("receive.reform", epoch=epoch, world_size=size):
                formed = self.plane.form(epoch, 0, size, abort=lambda: self.stop.is_set() or self.finished()
                                         or self.moved_on(epoch))
            if formed:
                log.info("data-plane epoch %d formed: %d rollout(s)", epoch, size - 1)
                self.epoch, self.world_size = epoch, size
                self.epochs_formed += 1
                return True
            if self.stop.is_set() or self.finished():
                return False
            self.epoch = epoch  # cancelled (a newer epoch exists): look for the one after it

    def take(self, timeout_s: float | None = None) -> TrajectoryBatch | None:
        """Next batch, or END (None) once every rollout has finished."""
        b = self.queue.get(timeout=timeout_s)
        if b is not None:
            self.ledger.take(b.num_episodes)
        elif self.error is not None:
            raise RuntimeError(f"receive lane failed: {self.error}") from self.error
        return b


class PublishLane:
    """Policy versions -> weight_control. Inline, or on a thread (swimlane) so the
    next training step runs while a version streams out; if versions queue up,
    only the newest is sent (versions only go forward, none is needed twice)."""

    def __init__(self, client: ControlClient, publisher_id: str, background: bool):
        self.client, self.publisher_id, self.background = client, publisher_id, background
        self._slot: tuple[int, dict, bool] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self.published: list[int] = []
        self.publish_s: list[float] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="publish-lane", daemon=True)
        if background:
            self.thread.start()

    def submit(self, version: int, weights: dict, final: bool = False) -> None:
        if self.error is not None:
            raise RuntimeError(f"publish lane failed: {self.error}") from self.error
        if not self.background:
            self._publish(version, weights, final)
            return
        with self._cond:
            if self._slot is not None and self._slot[2]:
                raise AssertionError("a version was submitted after the final one")
            self._slot = (version, weights, final)
            self._cond.notify_all()

    def _publish(self, version: int, weights: dict, final: bool) -> None:
        t = time.monotonic()
        with telemetry.span("publish.version", version=version, tensors=len(weights)):
            self.client.publish(version, weights, final=final, publisher_id=self.publisher_id)
        self.publish_s.append(time.monotonic() - t)
        self.published.append(version)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._slot is not None or self._closed)
                if self._slot is None:
                    return
                version, weights, final = self._slot
                self._slot = None
            try:
                self._publish(version, weights, final)
            except BaseException as e:
                log.exception("publish lane failed")
                self.error = e
                return
            with self._cond:
                self._cond.notify_all()

    def flush(self, timeout_s: float = 300.0) -> None:
        """Wait until everything submitted is published, then stop the thread."""
        if not self.background:
            return
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.thread.join(timeout_s)
        if self.error is not None:
            raise RuntimeError(f"publish lane failed: {self.error}") from self.error
