"""The rollout worker: ManiSkill3 envs plus a frozen inference copy of the policy.

    weight_control --(version v, chunks)--> weight lane --> inference copy (v)
    env batch <--(actions)-- inference copy      sampler --> episodes --> data plane --> actor

One rollout epoch = every env runs one whole episode. Admission control: epoch e
may start only once weight_control holds a version >= e - max_staleness, so
max_staleness=0 is the lockstep `sync` baseline. While the run is paused
(Admin.Pause, seen through the heartbeat) no epoch starts; one under way is
finished and sent, so a pause never cuts an episode. The run ends when the actor
marks a version final; the worker then sends END so the actor can account for
everything in flight.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import torch

from dvla import telemetry
from dvla.config import RunConfig
from dvla.dataplane import TrajectorySender, init_dataplane, shutdown_dataplane
from dvla.envs import make_env_batch
from dvla.membership import Heartbeat, join
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
    busy_s: float = 0.0
    wait_s: float = 0.0
    send_s: float = 0.0
    weights_s: float = 0.0
    swap_pause_p99_ms: float = 0.0
    swap_pause_max_ms: float = 0.0
    inference_batches: int = 0
    loop_s: float = 0.0
    versions_used: list[int] = field(default_factory=list)

    def report(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "versions_used"}


def episode_seeds(cfg: RunConfig, rank: int, epoch: int) -> tuple[list[int], list[int]]:
    """Reset seeds and group ids for one epoch; a GRPO group shares its seed, which is also its id."""
    n, g = cfg.env.num_envs, (cfg.algo.group_size if cfg.algo.name == "grpo" else 1)
    base = (cfg.seed * 1_000_003 + epoch * cfg.pipeline.num_rollout_workers + (rank - 1)) * n
    seeds = [base + i // g for i in range(n)]
    return seeds, seeds


def run_rollout(cfg: RunConfig, control: str, worker_id: str, stop: threading.Event) -> RolloutStats:
    device = resolve_device(cfg.device)
    torch.set_num_threads(1)  # one process per env shard: intra-op threads would only fight over cores
    p = cfg.pipeline
    if p.sharded:
        envs = ShardedSampler(cfg.env, p.num_shards, p.max_batch or cfg.env.num_envs, p.batch_timeout_s, device,
                              cfg.telemetry, cfg.policy.chunk_size)
    else:
        envs = make_env_batch(cfg.env, device)
    stats = RolloutStats(num_envs=cfg.env.num_envs)
    client = ControlClient(control, cfg.control)
    heartbeat = None
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        reg = join(client, "rollout", worker_id, env_spec=envs.spec, stop=stop)
        log.info("rank %d of %d, rendezvous %s", reg.rank, reg.world_size, reg.rendezvous_address)
        init_dataplane(reg.rendezvous_address, reg.rank, reg.world_size, cfg.dataplane.backend, cfg.dataplane.timeout_s)
        heartbeat = Heartbeat(client, worker_id, stats.report, cfg.control.heartbeat_s).start()
        sender = TrajectorySender(dst=0)
        torch.manual_seed(cfg.seed + reg.rank)
        lane = WeightLane(client, lambda: build_policy(cfg.policy, envs.spec).to(device).eval(), stop,
                          background=p.background_weights).start()
        t0 = time.monotonic()

        def emit(batch, epoch: int) -> None:
            batch.worker_rank, batch.epoch = reg.rank, epoch
            stats.env_steps_produced += batch.num_steps
            stats.episodes_produced += batch.num_episodes
            stats.policy_version = lane.version
            # Report "produced" before the batch can reach the actor: otherwise Admin.Status could sum
            # the actor's fresh "received" with this worker's older report, and in flight would go negative.
            heartbeat.beat()
            t = time.monotonic()
            with telemetry.span("sampling.send", episodes=batch.num_episodes, epoch=epoch):
                sender.send(batch)
            stats.send_s += time.monotonic() - t
            stats.episodes_sent += batch.num_episodes
            update_timings()

        def update_timings() -> None:
            stats.loop_s = time.monotonic() - t0
            stats.env_steps_per_s = stats.env_steps_produced / stats.loop_s
            stats.weights_s = lane.fetch_s
            stats.swap_pause_p99_ms, stats.swap_pause_max_ms = lane.swap_pause_ms(0.99), lane.swap_pause_ms(1.0)
            if p.sharded:
                stats.wait_s = envs.parked_s
                stats.inference_batches = envs.inference_batches
            stats.busy_s = stats.loop_s - stats.wait_s - stats.send_s

        if p.sharded:
            k = envs.shards[0].num_envs

            def seeds_for(round_: int, shard: int) -> tuple[list[int], list[int]]:
                seeds, groups = episode_seeds(cfg, reg.rank, round_)
                return seeds[shard * k:(shard + 1) * k], groups[shard * k:(shard + 1) * k]
            envs.run(lane, seeds_for, p.staleness, emit, stop, p.slow_rollout_s, paused=lambda: heartbeat.paused)
        else:
            generator = torch.Generator(device=device).manual_seed(cfg.seed + reg.rank)
            epoch = 0
            # admission control: never run further ahead of the actor than max_staleness versions
            while not stop.is_set():
                t = time.monotonic()
                while heartbeat.paused and not stop.is_set() and not lane.final:
                    time.sleep(0.05)  # a safe point: no episode is being recorded
                # v0 at least: a rollout never samples with weights it did not fetch
                admitted = lane.wait_loaded(max(0, epoch - p.staleness)) and not lane.final
                stats.wait_s += time.monotonic() - t
                if not admitted:
                    break
                seeds, groups = episode_seeds(cfg, reg.rank, epoch)
                emit(collect_episodes(envs, lane, seeds, groups, generator, device, p.slow_rollout_s), epoch)
                stats.inference_batches += -(-envs.spec.max_episode_steps // cfg.policy.chunk_size)
                epoch += 1
        sender.send_end()
        update_timings()
        stats.versions_used = list(lane.versions_used)
        log.info("done: %d episodes, %d env steps, versions %s", stats.episodes_sent, stats.env_steps_produced,
                 stats.versions_used)
        return stats
    finally:
        stop.set()  # ends the weight lane's watch
        if heartbeat is not None:
            heartbeat.stop()
        envs.close()
        shutdown_dataplane()
        client.close()
