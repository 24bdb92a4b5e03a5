"""The rollout worker: ManiSkill3 envs plus a frozen inference copy of the policy.

    weight_control --(version v, chunks)--> weight lane --> inference copy (v)
    env batch <--(actions)-- inference copy      sampler --> episodes --> data plane --> actor

One round = every env (of an env shard) runs one whole episode. Admission
control: round r may start only once weight_control holds a version >=
r - max_staleness, so max_staleness=0 is the lockstep `sync` baseline. While the
run is paused (Admin.Pause, seen through the heartbeat) no round starts; one
under way is finished and sent, so a pause never cuts an episode.

Rescaling (Admin.Rescale, seen through the heartbeat): a new shard count is
applied live by the sharded sampler. A new data-plane epoch (workers added or
removed) is met at a safe point: rounds under way finish and are sent, then
EPOCH_END, the old torch.distributed group is torn down and the worker joins the
new one, or exits if it was rescaled away. The run ends when the actor marks a
version final; the worker then sends END so the actor can account for everything
in flight.
"""
from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist

from dvla import telemetry
from dvla.config import RunConfig
from dvla.dataplane import TrajectorySender
from dvla.dataplane.world import DataPlane
from dvla.envs import make_env_batch
from dvla.membership import Heartbeat, RunFinished, join
from dvla.service_main import resolve_device
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient

from .sampler import collect_episodes
from .shards import ShardedSampler
from .weights import WeightLane

log = logging.getLogger("dvla.rollout")


@dataclass
class RolloutStats:
    env_steps_produced: int = 0
    episodes_produced: int = 0
    episodes_sent: int = 0
    policy_version: int = -1
    env_steps_per_s: float = 0.0
    num_envs: int = 0
    num_shards: int = 0
    dataplane_epoch: int = -1
    busy_s: float = 0.0
    wait_s: float = 0.0
    send_s: float = 0.0
    weights_s: float = 0.0
    swap_pause_p99_ms: float = 0.0
    swap_pause_max_ms: float = 0.0
    inference_batches: int = 0
    inference_queue: int = 0
    loop_s: float = 0.0
    versions_used: list[int] = field(default_factory=list)

    def report(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "versions_used"}


def episode_seeds(cfg: RunConfig, worker_id: str, round_: int, shard: int, k: int) -> tuple[list[int], list[int]]:
    """Reset seeds and group ids of one shard's round (k envs). A GRPO group shares its reset seed.

    Ids hash (seed, worker, round, shard, group), so no two workers, rounds or
    shards share one however the world is rescaled; the reset seed is the id's
    low 31 bits.
    """
    g = cfg.algo.group_size if cfg.algo.name == "grpo" else 1
    groups = []
    for i in range(k):
        key = f"{cfg.seed}/{worker_id}/{round_}/{shard}/{i // g}".encode()
        groups.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 2)
    return [x % (1 << 31) for x in groups], groups


def run_rollout(cfg: RunConfig, control: str, worker_id: str, stop: threading.Event) -> RolloutStats:
    device = resolve_device(cfg.device)
    torch.set_num_threads(1)  # one process per env shard: intra-op threads would only fight over cores
    p = cfg.pipeline
    if p.sharded:
        envs = ShardedSampler(cfg.env, p.num_shards, p.max_batch or cfg.env.num_envs, p.batch_timeout_s, device,
                              cfg.telemetry, cfg.policy.chunk_size)
    else:
        envs = make_env_batch(cfg.env, device)
    stats = RolloutStats(num_envs=cfg.env.num_envs, num_shards=p.num_shards if p.sharded else 0)
    telemetry.observe_worker("rollout", worker_id, stats.report)
    client = ControlClient(control, cfg.control)
    heartbeat = plane = None
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        try:
            reg = join(client, "rollout", worker_id, env_spec=envs.spec, num_envs=cfg.env.num_envs,
                       num_shards=stats.num_shards, stop=stop)
        except RunFinished as e:
            log.info("%s", e)
            return stats
        heartbeat = Heartbeat(client, worker_id, stats.report, cfg.control.heartbeat_s).start()
        try:
            plane = DataPlane(reg.rendezvous_address, is_host=False, backend=cfg.dataplane.backend,
                              timeout_s=cfg.dataplane.timeout_s)
        except Exception:  # torch's DistNetworkError and kin: the actor's rendezvous store is not there
            heartbeat.beat()
            if heartbeat.state in ("finished", "unknown"):  # a late joiner: the run (or weight_control) is over
                log.info("the run ended before this worker could join it")
                return stats
            raise
        lane = WeightLane(client, lambda: build_policy(cfg.policy, envs.spec).to(device).eval(), stop,
                          background=p.background_weights).start()
        torch.manual_seed(cfg.seed + reg.rank)
        generator = torch.Generator(device=device).manual_seed(cfg.seed + reg.rank)
        t0 = time.monotonic()
        world = (reg.epoch, reg.rank, reg.world_size)
        sampler = Sampler(cfg, worker_id, envs, lane, heartbeat, stats, stop, generator, device, t0)
        while True:
            epoch, rank, size = world
            moved_on = lambda: heartbeat.directives.epoch > epoch  # noqa: E731
            if not plane.form(epoch, rank, size, abort=lambda: stop.is_set() or lane.final or moved_on()):
                if stop.is_set() or lane.final:
                    break
                world = heartbeat.next_world(epoch, stop)
                if world is None:
                    break
                continue
            stats.dataplane_epoch = epoch
            log.info("data-plane epoch %d: rank %d of %d", epoch, rank, size)
            outcome = sampler.run(TrajectorySender(dst=0), should_yield=moved_on)
            if outcome != "yield":  # the run is over (or this worker stops): END, so the actor can account
                TrajectorySender(dst=0).send_end()
                break
            TrajectorySender(dst=0).send_end(epoch_end=epoch)  # everything this worker produced is sent
            plane.leave()
            stats.dataplane_epoch = -1
            world = heartbeat.next_world(epoch, stop)
            if world is None:
                log.info("leaving the run: rescaled away, or the run has finished")
                break
        sampler.update_timings()
        stats.versions_used = list(lane.versions_used)
        log.info("done: %d episodes, %d env steps, versions %s", stats.episodes_sent, stats.env_steps_produced,
                 stats.versions_used)
        return stats
    finally:
        stop.set()  # ends the weight lane's watch
        if plane is not None:
            plane.close()
        stats.dataplane_epoch = -1  # the last heartbeat tells weight_control this worker has left
        if heartbeat is not None:
            heartbeat.stop()
        envs.close()
        client.close()


class Sampler:
    """Produces episode rounds into the data plane for one epoch at a time, until a safe point is asked for."""

    def __init__(self, cfg: RunConfig, worker_id: str, envs, lane: WeightLane, heartbeat: Heartbeat,
                 stats: RolloutStats, stop: threading.Event, generator: torch.Generator, device, t0: float):
        self.cfg, self.worker_id, self.envs, self.lane, self.heartbeat = cfg, worker_id, envs, lane, heartbeat
        self.stats, self.stop, self.generator, self.device, self.t0 = stats, stop, generator, device, t0
        self.round = 0  # next round (non-sharded; shards keep their own)

    def run(self, sender: TrajectorySender, should_yield: Callable[[], bool]) -> str:
        """'yield' at a safe point once should_yield(), 'final' when the run is over, 'stop' when stopped."""
        p, stats, lane, hb = self.cfg.pipeline, self.stats, self.lane, self.heartbeat
        if not lane.wait_loaded(0) or lane.final:
            return "final" if not self.stop.is_set() else "stop"
        # Rounds are numbered like the versions they are meant for: a worker that joins late (or a
        # resumed run, whose versions start at N) starts at the version in use, not at round 0.
        first_round = lane.version

        def emit(batch, round_: int) -> None:
            batch.worker_rank, batch.epoch = dist.get_rank(), round_
            stats.env_steps_produced += batch.num_steps
            stats.episodes_produced += batch.num_episodes
            stats.policy_version = lane.version
            # A batch counts as sent (on the wire) once handed to the data plane, and that is reported
            # before it can reach the actor: otherwise Admin.Status could sum the actor's fresh
            # "received" with this worker's older report, and in flight or on the wire would go negative.
            stats.episodes_sent += batch.num_episodes
            hb.beat()
            t = time.monotonic()
            with telemetry.span("sampling.send", episodes=batch.num_episodes, epoch=round_):
                sender.send(batch)
            stats.send_s += time.monotonic() - t
            self.update_timings()

        if p.sharded:
            envs = self.envs

            def seeds_for(round_: int, shard: int) -> tuple[list[int], list[int]]:
                return episode_seeds(self.cfg, self.worker_id, round_, shard, envs.envs_per_shard)

            return envs.run(lane, seeds_for, p.staleness, emit, self.stop, p.slow_rollout_s,
                            paused=lambda: hb.paused, should_yield=should_yield,
                            target_shards=lambda: hb.directives.num_shards, first_round=first_round)
        self.round = max(self.round, first_round)
        # admission control: never run further ahead of the actor than max_staleness versions
        while not self.stop.is_set():
            t = time.monotonic()
            while hb.paused and not self.stop.is_set() and not lane.final and not should_yield():
                time.sleep(0.05)  # a safe point: no episode is being recorded
            if should_yield():
                stats.wait_s += time.monotonic() - t
                return "yield"
            # v0 at least: a rollout never samples with weights it did not fetch
            admitted = lane.wait_loaded(max(0, self.round - p.staleness), interrupt=should_yield) and not lane.final
            stats.wait_s += time.monotonic() - t
            if not admitted:
                if self.stop.is_set():
                    return "stop"
                return "yield" if should_yield() and not lane.final else "final"
            seeds, groups = episode_seeds(self.cfg, self.worker_id, self.round, 0, self.cfg.env.num_envs)
            span = telemetry.start_span("sampling.round", round=self.round)  # the actor's spans link back to it
            batch = collect_episodes(self.envs, lane, seeds, groups, self.generator, self.device, p.slow_rollout_s)
            batch.trace_context = telemetry.context_of(span)
            emit(batch, self.round)
            span.end()
            stats.inference_batches += -(-self.envs.spec.max_episode_steps // self.cfg.policy.chunk_size)
            self.round += 1
        return "stop"

    def update_timings(self) -> None:
        stats, lane = self.stats, self.lane
        stats.loop_s = time.monotonic() - self.t0
        stats.env_steps_per_s = stats.env_steps_produced / stats.loop_s
        stats.weights_s = lane.fetch_s
        stats.swap_pause_p99_ms, stats.swap_pause_max_ms = lane.swap_pause_ms(0.99), lane.swap_pause_ms(1.0)
        if self.cfg.pipeline.sharded:
            stats.wait_s = self.envs.parked_s
            stats.inference_batches = self.envs.inference_batches
            stats.num_shards, stats.num_envs = self.envs.num_shards, self.envs.num_envs
            stats.inference_queue = len(self.envs.batcher)
        stats.busy_s = stats.loop_s - stats.wait_s - stats.send_s
