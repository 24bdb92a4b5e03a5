"""The actor's training lane: global batches in, one optimizer update each.

    consumes  rollout batches from the receive lane's queue (Inbox.take)
    produces  an update of the policy's weights and a metrics record per global batch
    waits for batches, until one round of every active env is in (episodes_per_update)
    thread    the actor's main thread
    owns      Progress (version, updates, env steps trained); moves episodes through the
              ledger (in training -> trained, or dropped when older than max_staleness)

Streamer mode backpropagates each batch as it arrives (the first PPO epoch) and
steps once the global batch is complete; the other epochs run as usual, so every
mode does the same optimisation work per update.

In an actor group each rank gathers its share (episodes_per_update: what its home rollouts
send), the ranks agree that every one has a batch, even their shares out (dvla/lanes/balance.py)
and update together; the update's record reports the global batch. A rank prepares its even
share in one call, so that where every forward is a collective (FSDP) all ranks make the same calls.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from dvla import telemetry
from dvla.algo.learner import Learner, Samples
from dvla.algo.staleness import lag_stats, stale_episodes
from dvla.counters import EpisodeLedger
from dvla.lanes.balance import even_out
from dvla.types import TrajectoryBatch


class Inbox(Protocol):
    def take(self, timeout_s: float | None = None) -> TrajectoryBatch | None:
        """Next batch; None once nothing more will come; queue.Empty after timeout_s."""
        ...


@dataclass
class Progress:
    version: int = -1  # the policy version the actor holds: the proximal policy of the next update
    updates: int = 0
    env_steps_trained: int = 0


@dataclass
class GlobalBatch:
    """One update's worth of batches, prepared (and in streamer mode, already backpropagated once)."""

    batches: list[TrajectoryBatch] = field(default_factory=list)
    samples: list[Samples] = field(default_factory=list)
    streamed: list[dict[str, float]] = field(default_factory=list)  # loss stats of streamed micro-batches
    wait_s: float = 0.0
    micro_s: float = 0.0  # compute spent on micro-batches while the global batch filled
    received: int = 0  # episodes of it on this rank's ledger (received here; the group may move them)
    moved: int = 0  # units this rank handed to or took from other actor ranks to even the shares

    @property
    def num_episodes(self) -> int:
        return sum(b.num_episodes for b in self.batches)


class Trainer:
    def __init__(
        self,
        learner: Learner,
        inbox: Inbox,
        ledger: EpisodeLedger,
        progress: Progress,
        *,
        max_staleness: int,
        streamer: bool,
        episodes_per_update: Callable[[], int],
        idle: Callable[[], None] = lambda: None,
    ):
        """episodes_per_update(): one round of every active env in the world, as it is now (it follows
        rescales). idle(): called while waiting for episodes, between two optimizer steps."""
        self.learner, self.inbox, self.ledger, self.progress = learner, inbox, ledger, progress
        self.max_staleness, self.streamer = max_staleness, streamer
        self.episodes_per_update, self.idle = episodes_per_update, idle
        self.whole_groups = learner.algo.groups
        self.ended = False  # the inbox has nothing more to give

    def _next_fresh(self, timeout_s: float) -> TrajectoryBatch | None:
        """Next batch with stale episodes dropped (and counted); None at the end; queue.Empty on timeout."""
        while True:
            b = self.inbox.take(timeout_s)
            if b is None:
                self.ended = True
                return None
            stale = stale_episodes(b, self.progress.version, self.max_staleness, self.whole_groups)
            if stale.any():
                self.ledger.drop(int(stale.sum()))
                b = b.select(~stale)
            if b.num_episodes:
                return b

    def next_global_batch(self) -> GlobalBatch | None:
        """Batches until one round of the world (this rank's share of it) is in; None if the rollouts
        ended first (on any rank of a group: then no rank trains on a partial global batch)."""
        group = self.learner.group
        while True:
            g = self._gather()
            if group.size == 1:
                return g
            everyone = group.all_reduce(torch.tensor([0 if g is None else 1]), "min")
            if not int(everyone):
                if g is not None:
                    self.ledger.drop(g.received)
                return None
            # a rank whose rollouts were all evicted brings none (its share is 0) and trains on what the
            # others hand it; with none on any rank, every rank gathers again
            if int(group.all_reduce(torch.tensor([g.num_episodes]))):
                break
            self.idle()
            time.sleep(0.25)
        t = time.monotonic()
        g.batches, g.moved = even_out(group, g.batches, self.whole_groups)
        g.samples = [self.learner.prepare(TrajectoryBatch.concat(g.batches), self.progress.version)]
        g.micro_s += time.monotonic() - t
        return g

    def _gather(self) -> GlobalBatch | None:
        g, t0, version = GlobalBatch(), time.monotonic(), self.progress.version
        prepare_each = self.learner.group.size == 1  # a group prepares its share once it is even
        while g.num_episodes < self.episodes_per_update():
            try:
                b = self._next_fresh(timeout_s=0.25)  # then look at the target again: it follows rescales
            except queue.Empty:
                self.idle()
                continue
            if b is None:
                self.ledger.drop(g.received)  # a partial global batch is never trained on
                return None
            t = time.monotonic()
            g.batches.append(b)
            g.received += b.num_episodes
            # a child of the rollout round that produced it: one trace from sampling to training
            with telemetry.span(
                "training.micro_batch",
                parent=b.trace_context,
                version=version,
                episodes=b.num_episodes,
                worker=b.worker_rank,
            ):
                if prepare_each:
                    s = self.learner.prepare(b, version)
                    g.samples.append(s)
                    if self.streamer:
                        g.streamed.append(self.learner.accumulate(s))
            g.micro_s += time.monotonic() - t
        g.wait_s = time.monotonic() - t0 - g.micro_s
        return g

    def update(self, g: GlobalBatch) -> dict:
        """One optimizer update on a global batch; the metrics record of it."""
        version, t0 = self.progress.version, time.monotonic()
        batch = TrajectoryBatch.concat(g.batches)
        rounds = [b.trace_context for b in g.batches]  # the optimizer step links to every round it trains on
        record = {"check/behaviour_logp_gap": self.learner.behaviour_gap(batch, version)}
        epochs = self.learner.cfg.update_epochs
        if self.streamer:
            with telemetry.span("training.optimizer_step", links=rounds, version=version + 1):
                grad_norm = self.learner.step_accumulated()
            record |= {k: sum(d[k] for d in g.streamed) / len(g.streamed) for k in g.streamed[0]}
            record |= {"loss/grad_norm": grad_norm, "train/samples": float(sum(len(s) for s in g.samples))}
            epochs -= 1
        if epochs:
            with telemetry.span("training.optimizer_step", links=rounds, version=version + 1, epochs=epochs):
                record |= self.learner.update(Samples.concat(g.samples), epochs=epochs)
        self.ledger.train(g.received)  # what this rank received: weight_control sums the ranks' ledgers
        episodes, successes, returns, lengths, steps = self.learner.group.all_reduce(
            torch.tensor(
                [
                    batch.num_episodes,
                    float(batch.success.sum()),
                    float(batch.returns().sum()),
                    float(batch.episode_steps().sum()),
                    batch.num_steps,
                ],
                dtype=torch.float64,
            )
        ).tolist()
        self.progress.updates += 1
        self.progress.env_steps_trained += int(steps)
        return (
            record
            | lag_stats(batch, version)
            | {
                "success_rate": successes / episodes,
                "return_mean": returns / episodes,
                "episode_length": lengths / episodes,
                "versions_used": sorted(int(v) for v in batch.versions[batch.step_mask()].unique()),
                "group/units_moved": float(g.moved),  # this rank's, evening the group's shares out
                "time/wait_s": g.wait_s,
                "time/train_s": time.monotonic() - t0 + g.micro_s,
            }
        )

    def drain(self) -> None:
        """After the last update: count whatever still arrives as dropped, until the end."""
        while not self.ended:
            b = self.inbox.take()
            if b is None:
                self.ended = True
            else:
                self.ledger.drop(b.num_episodes)
