"""The rollout's sampling lane: rounds of whole episodes from a pool of env shards, into the data plane.

    consumes  env shards (ShardPool), the inference copy in use (WeightLane), the directives
    produces  one TrajectoryBatch per shard round, sent to the actor (TrajectorySink)
    waits for a shard to finish its reset or chunk, a batch of observations to fill
              (DynamicBatcher: B_max or T_max), or admission control: round r starts only
              once the policy in use has version >= r - max_staleness
    thread    the rollout's main thread (inference runs here too; shard processes step envs)
    owns      the shards' recorders and round numbers, and the production counters

While shard i steps its physics, the others' observations go through inference.
Rounds are numbered like the versions they are meant for: a worker that joins
late (or a resumed run) starts at the version in use, not at round 0. No round
starts while the run is paused or a new data-plane epoch asks for a safe point;
rounds under way finish and are sent, so no episode is ever cut.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch

from dvla import telemetry
from dvla.algo.batching import DynamicBatcher
from dvla.algo.staleness import min_version
from dvla.lanes.epochs import EpochCycle
from dvla.lanes.inference import infer
from dvla.lanes.recorder import EpisodeRecorder
from dvla.lanes.shards import Shard, ShardPool, ShardState
from dvla.lanes.weights import WeightLane
from dvla.ports import ActorLost, Control, SinkLost, TrajectorySink
from dvla.types import SenderCounts, TrajectoryBatch, World

log = logging.getLogger("dvla.lanes.sampling")


class Outcome(Enum):
    YIELD = "yield"  # a safe point was asked for, and every round under way is sent
    FINAL = "final"  # the actor's final version is in use: the run is over
    STOP = "stop"  # this worker is stopping


@dataclass
class SamplingCounts:
    env_steps_produced: int = 0
    episodes_produced: int = 0
    episodes_sent: int = 0
    send_s: float = 0.0
    inference_batches: int = 0


Seeds = Callable[[int, int, int], tuple[list[int], list[int]]]  # (round, shard, num envs) -> seeds, group ids


class Sampler:
    def __init__(
        self,
        pool: ShardPool,
        lane: WeightLane,
        control: Control,
        seeds: Seeds,
        *,
        max_staleness: int,
        batcher: DynamicBatcher,
        device: torch.device,
        generator: torch.Generator | None,
        stop: threading.Event,
        step_delay_s: float = 0.0,
        worker_key: int = 0,
        actor_wait_s: float | None = None,
    ):
        """worker_key: this worker's number, carried with its counters in every batch (0: none).
        actor_wait_s: how long to wait for the actor to come back once the connection to it broke
        (None: as long as it takes); then ActorLost."""
        self.pool, self.lane, self.control, self.seeds = pool, lane, control, seeds
        self.max_staleness, self.batcher, self.device, self.generator = max_staleness, batcher, device, generator
        self.stop, self.step_delay_s, self.worker_key = stop, step_delay_s, worker_key
        self.actor_wait_s = actor_wait_s
        self.counts = SamplingCounts()
        self.sink_lost: str | None = None  # why the actor is unreachable in this epoch (None: it is not)
        self.held: list[TrajectoryBatch] = []  # finished after the sink broke: sent in the next epoch
        self.actor_incarnation: int | None = None  # of the actor whose versions the weight lane holds
        self._rewound = False

    def run_epochs(self, cycle: EpochCycle, first: World, on_epoch: Callable[[int], None] = lambda e: None) -> None:
        """Sample in every data-plane epoch this worker belongs to, from `first` on; END once the run is over.

        At a new epoch, the rounds under way are sent, then EPOCH_END, and the cycle re-forms (or this
        worker leaves). on_epoch(e) is told the epoch joined, and -1 between two epochs."""
        world = cycle.enter(first)
        while world is not None:
            on_epoch(world.epoch)
            log.info("data-plane epoch %d: rank %d of %d", world.epoch, world.rank, world.size)
            self._follow_actor()
            sink = cycle.plane.sink(world.home())
            outcome = self.run(sink, world.rank, should_yield=lambda w=world: cycle.moved_on(w))
            if outcome != Outcome.YIELD:  # the run is over (or this worker stops): END, so the actor can account
                self._end(sink)
                return
            self._end(sink, epoch_end=world.epoch)  # everything this worker produced is sent (or held)
            on_epoch(-1)
            if self.sink_lost is not None:
                log.warning("waiting %s for the actor to come back (it starts again from its newest checkpoint)",
                            "for ever" if self.actor_wait_s is None else f"up to {self.actor_wait_s:g} s")  # fmt: skip
            try:
                world = cycle.advance(world, wait_s=self.actor_wait_s if self.sink_lost is not None else None)
            except ActorLost as e:
                raise ActorLost(
                    f"the actor has not come back ({e}; control.lost_after_s): giving up, "
                    f"{len(self.held)} finished round(s) unsent. It was lost: {self.sink_lost}"
                ) from None
            self.sink_lost = None
        log.info("leaving the run: rescaled away, or the run has finished")

    def _end(self, sink: TrajectorySink, epoch_end: int | None = None) -> None:
        """END (or EPOCH_END) to the actor, unless the connection to it broke."""
        if self.sink_lost is not None:
            return
        try:
            sink.send_end(epoch_end)
        except SinkLost as e:
            self._lose_sink(e)

    def _lose_sink(self, e: SinkLost) -> None:
        self.sink_lost = str(e)
        log.warning("%s: rounds under way finish and are held for the next data-plane epoch", e)

    def _follow_actor(self) -> None:
        """An actor started afresh (from its checkpoint) rewound the versions: drop the newer one held."""
        incarnation = self.control.directives.actor_incarnation
        # (a restarted weight_control counts from 0 again: that is no new actor)
        if self.actor_incarnation is not None and incarnation > self.actor_incarnation:
            log.info("the actor was started afresh (incarnation %d): following its versions from its checkpoint",
                     incarnation)  # fmt: skip
            self.lane.rewind()
            self._rewound = True  # round numbers follow the versions back
        self.actor_incarnation = incarnation

    def run(self, sink: TrajectorySink, rank: int, should_yield: Callable[[], bool]) -> Outcome:
        """Rounds into `sink` (as data-plane `rank`) until the run is over, this worker stops, or
        should_yield() asks for a safe point."""
        held, self.held = self.held, []
        for b in held:  # finished while the actor was unreachable; it drops what is newer than its version
            self._deliver(b, b.round, sink, rank)
        should_yield = lambda outer=should_yield: self.sink_lost is not None or outer()  # noqa: E731
        if not self.lane.wait_loaded(0, interrupt=should_yield) or self.lane.final:  # v0 at least: only fetched
            if self.stop.is_set():  # weights run
                return Outcome.STOP
            return Outcome.YIELD if should_yield() else Outcome.FINAL
        self.pool.start_rounds_at(self.lane.version, rewind=self._rewound)
        self._rewound = False
        while not self.stop.is_set():
            if self.lane.final:
                return Outcome.FINAL  # unfinished rounds are abandoned: never counted as produced
            self.pool.rescale(self.control.directives.num_shards)
            self.pool.retire_idle()
            leaving = should_yield()
            if leaving and self.pool.quiet and not len(self.batcher):
                return Outcome.YIELD
            if not (leaving or self.control.directives.paused):
                outcome = self._admit(should_yield)
                if outcome is not None:
                    return outcome
            for s in self.pool.wait_ready(self.batcher.time_left(time.monotonic())):
                self._advance(s, sink, rank)
            self._infer_if_ready()
        return Outcome.STOP

    def _admit(self, should_yield: Callable[[], bool]) -> Outcome | None:
        """Start a round on every idle shard admission control lets through.

        A weight lane without a thread of its own pulls here, at each round start: the newest version
        (one look-up when nothing is new), and waits when the round needs a version not out yet.
        """
        for s in [s for s in self.pool.shards if s.state == ShardState.IDLE and not s.retiring]:
            need = min_version(s.round, self.max_staleness)
            if not self.lane.background:
                t = time.monotonic()
                ok = self.lane.wait_loaded(need, interrupt=should_yield)  # a rescale must not wait on it
                self.pool.parked_s += time.monotonic() - t
                if not ok:
                    if self.stop.is_set():
                        return Outcome.STOP
                    if should_yield():
                        return None  # the next pass holds every shard and yields once all are quiet
                    return Outcome.FINAL
            policy, version = self.lane.current()
            if version >= need:
                self._start_round(s, policy)
        return None

    def _start_round(self, s: Shard, policy) -> None:
        if s.recorder is None:
            if self.pool.chunk_size is not None and policy.chunk_size != self.pool.chunk_size:
                raise ValueError(
                    f"the policy acts in chunks of {policy.chunk_size}, the env shards were built "
                    f"for {self.pool.chunk_size} (policy.chunk_size)"
                )
            s.recorder = EpisodeRecorder(s.num_envs, self.pool.spec, policy.sample_dim, policy.chunk_size)
        # one trace per shard round: the actor's training spans link back to it
        s.span = telemetry.start_span("sampling.round", shard=s.index, round=s.round)
        seeds, s.group_ids = self.seeds(s.round, s.index, s.num_envs)
        s.start_reset(seeds)

    def _advance(self, s: Shard, sink: TrajectorySink, rank: int) -> None:
        """A shard's reset, chunk or start has finished: record it, then send or queue for inference."""
        if s.state == ShardState.STARTING:
            self.pool.join(s)
            return
        s.complete()
        if s.state == ShardState.RESETTING:
            s.recorder.begin(*s.reset_obs(), s.group_ids)
        else:
            if self.step_delay_s:  # testing: a deliberately slow rollout
                time.sleep(self.step_delay_s)
            s.recorder.record_step(s.result())
        if s.recorder.done:
            batch = s.recorder.finish()
            batch.trace_context = telemetry.context_of(s.span)
            self._send(batch, s.round, sink, rank)
            s.span.end()
            s.round += 1
            s.state = ShardState.IDLE
        else:
            self.batcher.add(s.index, int(s.recorder.active.sum()), time.monotonic())
            s.state = ShardState.INFERENCE

    def _infer_if_ready(self) -> None:
        no_more_coming = len(self.batcher) and not any(
            s.state in (ShardState.RESETTING, ShardState.STEPPING) for s in self.pool.shards
        )
        if no_more_coming or self.batcher.ready(time.monotonic()):
            by_index = {s.index: s for s in self.pool.shards}
            infer([by_index[i] for i in self.batcher.take(time.monotonic())], self.lane, self.device, self.generator)
            self.counts.inference_batches += 1

    def _send(self, batch: TrajectoryBatch, round_: int, sink: TrajectorySink, rank: int) -> None:
        c = self.counts
        c.env_steps_produced += batch.num_steps
        c.episodes_produced += batch.num_episodes
        if self.sink_lost is not None:
            batch.round = round_
            self.held.append(batch)  # the actor is unreachable: nothing collected is thrown away
            return
        self._deliver(batch, round_, sink, rank)

    def _deliver(self, batch: TrajectoryBatch, round_: int, sink: TrajectorySink, rank: int) -> None:
        batch.worker_rank, batch.round = rank, round_
        c = self.counts
        # A batch counts as sent (on the wire) once handed to the data plane. The counters travel with
        # it, and the actor reports them: weight_control never sees it received before it was sent,
        # without a heartbeat on the sampling path. One whose send broke went to an actor that is gone.
        c.episodes_sent += batch.num_episodes
        if self.worker_key:
            batch.sender = SenderCounts(self.worker_key, c.episodes_produced, c.episodes_sent, c.env_steps_produced)
        t = time.monotonic()
        try:
            with telemetry.span("sampling.send", episodes=batch.num_episodes, round=round_):
                sink.send(batch)
        except SinkLost as e:
            self._lose_sink(e)
        c.send_s += time.monotonic() - t
