"""The actor's receive lane: trajectories from the data plane into a bounded queue.

    consumes  TrajectoryBatches from the rollout ranks homed to this actor rank (all, with one actor)
    produces  the same batches, on `queue` (bounded: queue_batches), then END (None) once
    waits for a batch on the data plane, or room in the queue: while the queue is full it
              stops receiving, so rollouts block in send (backpressure, never silent loss)
    thread    its own ("receive-lane")
    owns      the queue; counts each batch into the episode ledger (shared with training) on arrival,
              and keeps each rollout's counters as its newest batch carried them (for the heartbeat)

Across data-plane epochs: once every rank of the epoch has sent EPOCH_END (all
they produced has arrived), the lane moves to the next epoch through the
EpochCycle while training goes on from the queue. END goes on the queue when
every rank sent END, or when there is no next epoch.

A rank lost (its connection broke, or weight_control evicted its worker: dead,
hung or cut off) counts as ended: the lane stops receiving from it and goes on
with the others, and weight_control's next epoch forms without it. What it had
not delivered is weight_control's to count as lost. A broken connection is
reported (broken(), through the actor's heartbeat), so weight_control evicts
that worker at once rather than after evict_after_s of silence.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import replace

from dvla import telemetry
from dvla.counters import EpisodeLedger
from dvla.lanes.epochs import EpochCycle
from dvla.ports import SourceLost, TrajectorySource
from dvla.types import SenderCounts, TrajectoryBatch, World

log = logging.getLogger("dvla.lanes.receive")
END = None  # put on the queue once the data plane has nothing more to give
BROKEN_REMEMBERED = 16  # the newest broken (epoch, rank) pairs the heartbeat repeats to weight_control


class ReceiveLane:
    def __init__(self, epochs: EpochCycle, world: World, capacity: int, ledger: EpisodeLedger, stop: threading.Event):
        """world: the epoch already formed (this actor's rank)."""
        self.epochs, self.world, self.ledger, self.stop = epochs, world, ledger, stop
        self.queue: queue.Queue[TrajectoryBatch | None] = queue.Queue(maxsize=capacity)
        self.blocked_s = 0.0  # time spent waiting for room in the queue
        self.sources_lost = 0  # rollout ranks lost mid-epoch (connection broken, or evicted)
        self._senders: dict[int, SenderCounts] = {}  # worker key -> the newest counters a batch carried
        self._broken: deque[tuple[int, int]] = deque(maxlen=BROKEN_REMEMBERED)  # (epoch, rank) seen lost
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="receive-lane", daemon=True)

    @property
    def epoch(self) -> int:
        return self.world.epoch

    @property
    def homeless(self) -> bool:
        """The current epoch homes no rollout to this actor rank (they were evicted): nothing comes here."""
        return not self.world.rollouts_of(self.world.rank)

    def start(self) -> ReceiveLane:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                ranks = self.world.rollouts_of(self.world.rank)
                if ranks:  # none: every rollout of this rank was lost; wait for the epoch that brings some
                    source = self.epochs.plane.source(ranks)
                    self._receive(source)
                    if self.stop.is_set() or source.run_ended():
                        return
                else:
                    log.warning("data-plane epoch %d has no rollout for this actor rank: waiting for the next",
                                self.world.epoch)  # fmt: skip
                world = self.epochs.advance(self.world)
                if world is None:
                    return
                log.info("data-plane epoch %d formed: %d rollout(s)", world.epoch, world.size - world.actors)
                self.world = world
        except BaseException as e:
            log.exception("receive lane failed")
            self.error = e
        finally:
            self.queue.put(END)

    def _receive(self, source: TrajectorySource) -> None:
        while source.open_sources and not self.stop.is_set():
            for r in sorted(self.epochs.control.directives.lost_ranks(self.world.epoch) & set(source.open_sources)):
                source.drop(r)
                self.sources_lost += 1
                log.warning("rank %d of data-plane epoch %d: its worker was evicted; receiving no more from it",
                            r, self.world.epoch)  # fmt: skip
            try:
                src, b = source.recv(timeout_s=0.5)
            except TimeoutError:
                continue
            except SourceLost as e:
                self.sources_lost += 1
                self._broken.append((self.world.epoch, e.rank))
                log.warning("%s; going on with ranks %s of epoch %d", e, source.open_sources, self.world.epoch)
                continue
            if b is None:
                continue
            t = time.monotonic()
            if b.sender is not None:  # before the ledger: a report never counts a batch received but not sent
                first = self._senders.get(b.sender.worker_key)
                # what it sent before its first batch here went to an earlier actor process (if any)
                before = first.episodes_sent_before if first else b.sender.episodes_sent - b.num_episodes
                self._senders[b.sender.worker_key] = replace(b.sender, episodes_sent_before=before)
            self.ledger.receive(b.num_episodes)
            # the span covers the wait for room in the queue: long spans are backpressure
            with telemetry.span(
                "receive.enqueue", parent=b.trace_context, worker=src, episodes=b.num_episodes, round=b.round
            ):
                self._put(b)
            self.blocked_s += time.monotonic() - t

    def _put(self, b: TrajectoryBatch) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(b, timeout=0.5)
                return
            except queue.Full:
                pass

    def senders(self) -> list[SenderCounts]:
        """Each rollout's counters as its newest batch here carried them (read after the ledger's snapshot)."""
        return list(self._senders.values())

    def broken(self) -> list[tuple[int, int]]:
        """(epoch, rank) of the newest ranks whose connection broke here: the heartbeat tells weight_control,
        which evicts their workers at once instead of after control.evict_after_s of silence."""
        return list(self._broken)

    def take(self, timeout_s: float | None = None) -> TrajectoryBatch | None:
        """Next batch, or END (None) once the data plane has nothing more; queue.Empty after timeout_s."""
        b = self.queue.get(timeout=timeout_s)
        if b is not None:
            self.ledger.take(b.num_episodes)
        elif self.error is not None:
            raise RuntimeError(f"receive lane failed: {self.error}") from self.error
        return b
