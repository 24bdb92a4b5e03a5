"""The rollout worker: ManiSkill3 envs plus a frozen inference copy of the policy.

    weight_control --versions--> [weights] --> inference copy (v) --+
    env shards <--action chunks-- [sampling: shards + inference] <--+--rounds--> data plane --> actor

Lanes (dvla/lanes/), and what wires them here:
  sampling   consumes env shards, the inference copy and the directives; produces one batch per
             shard round into the data plane. Waits for shards, batches, admission control
             (round r starts once version >= r - max_staleness: 0 is the lockstep baseline).
             Thread: main. Owns the shards, the recorders, the production counters.
  weights    consumes version announcements from weight_control; produces the inference copy,
             swapped in between two inference batches. Thread: its own in swimlane mode, else
             the sampling thread (inside admission control). Owns the two policy copies.
  epochs     between rounds, when weight_control announces a new data-plane epoch (a rescale):
             rounds under way finish and are sent, then EPOCH_END, leave, re-form or exit.
  heartbeat  reports this worker's numbers, reads the directives (pause, epoch, shards).
             Thread: its own (dvla/membership.py).

The run ends when the actor marks a version final: the worker sends END, so the
actor can account for everything in flight. When the connection to the actor
breaks (it died), rounds under way finish and are held; the worker waits up to
control.lost_after_s for the actor to come back (a new epoch around its new
rendezvous), follows its versions from its checkpoint and sends what it held.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import time

import torch

from dvla import telemetry
from dvla.algo.algorithms import algorithm
from dvla.algo.batching import DynamicBatcher
from dvla.config import RunConfig
from dvla.dataplane import DataPlane
from dvla.envs import make_env_batch
from dvla.lanes.epochs import EpochCycle
from dvla.lanes.sampling import Sampler
from dvla.lanes.shards import ShardPool
from dvla.lanes.weights import WeightLane
from dvla.membership import Heartbeat, RunFinished, join
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient
from dvla.service_main import give_up, resolve_device
from dvla.types import Membership, World

log = logging.getLogger("dvla.rollout")


def episode_seeds(cfg: RunConfig, worker_id: str, round_: int, shard: int, k: int) -> tuple[list[int], list[int]]:
    """Reset seeds and group ids of one shard's round (k envs). A GRPO group shares its reset seed.

    Ids hash (seed, worker, round, shard, group), so no two workers, rounds or
    shards share one however the world is rescaled; the reset seed is the id's
    low 31 bits.
    """
    g = algorithm(cfg.algo.name).group_size(cfg.algo.group_size)
    groups = []
    for i in range(k):
        key = f"{cfg.seed}/{worker_id}/{round_}/{shard}/{i // g}".encode()
        groups.append(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 2)
    return [x % (1 << 31) for x in groups], groups


def run_rollout(cfg: RunConfig, control: str, worker_id: str, stop: threading.Event) -> dict:
    device = resolve_device(cfg.device)
    torch.set_num_threads(1)  # one process per env shard: intra-op threads would only fight over cores
    cfg = cfg.with_shards_for(len(os.sched_getaffinity(0)), 1)  # started on its own: its cores are its own
    p = cfg.pipeline
    pool = (ShardPool.processes(cfg.env, p.num_shards, cfg.policy.chunk_size, cfg.telemetry) if p.sharded
            else ShardPool.local(make_env_batch(cfg.env, device)))  # fmt: skip
    client = ControlClient(control, cfg.control)
    report = Report(pool, sharded=p.sharded)
    telemetry.observe_worker("rollout", worker_id, report)
    heartbeat = plane = None
    worker_key = secrets.randbits(63) or 1  # this process's own: a restart under the same id counts afresh
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        try:
            reg = join(client, "rollout", worker_id, env_spec=pool.spec, num_envs=cfg.env.num_envs,
                       num_shards=p.num_shards if p.sharded else 0, stop=stop, worker_key=worker_key)  # fmt: skip
        except RunFinished as e:
            log.info("%s", e)
            return report()
        heartbeat = Heartbeat(client, worker_id, report, cfg.control.heartbeat_s,
                              lost_after_s=cfg.control.lost_after_s, on_lost=give_up).start()  # fmt: skip
        # connected when the first epoch forms: an actor that died meanwhile only cancels that epoch
        d = cfg.dataplane
        plane = DataPlane(reg.rendezvous_address, is_host=False, backend=d.backend, timeout_s=d.timeout_s,
                          connect_now=False, connect_timeout_s=d.connect_timeout_s)  # fmt: skip
        lane = WeightLane(client, lambda: build_policy(cfg.policy, pool.spec).to(device).eval(), stop)
        if p.background_weights:
            lane.start_thread()
        torch.manual_seed(cfg.seed + reg.rank)
        sampler = Sampler(
            pool, lane, heartbeat, lambda r, s, k: episode_seeds(cfg, worker_id, r, s, k),
            max_staleness=p.max_staleness_in_force,
            batcher=DynamicBatcher(p.max_batch or cfg.env.num_envs, p.batch_timeout_s), device=device,
            generator=torch.Generator(device=device).manual_seed(cfg.seed + reg.rank), stop=stop,
            step_delay_s=p.slow_rollout_s, worker_key=worker_key, actor_wait_s=cfg.control.lost_after_s or None,
        )  # fmt: skip
        report.attach(sampler, lane)
        cycle = EpochCycle(plane, heartbeat, stop, give_up=lambda: lane.final)
        first = World(reg.epoch, reg.rank, reg.world_size, reg.num_actors, reg.rendezvous_address)
        sampler.run_epochs(cycle, first, on_epoch=report.in_epoch)
        if heartbeat.directives.membership == Membership.EVICTED:
            raise Evicted(
                f"weight_control evicted rollout '{worker_id}' (no heartbeat from it within control.evict_after_s): "
                "the run went on without it; start it again to rejoin"
            )
        c = sampler.counts
        log.info("done: %d episodes, %d env steps, versions %s", c.episodes_sent, c.env_steps_produced,
                 lane.versions_used)  # fmt: skip
        return report()
    finally:
        stop.set()  # ends the weight lane's watch
        if plane is not None:
            plane.close()
        report.dataplane_epoch = -1
        if heartbeat is not None:
            heartbeat.stop()
        pool.close()
        client.close()


class Evicted(RuntimeError):
    """weight_control evicted this worker (it looked dead): exit non-zero so that a supervisor restarts it."""


class Report:
    """This worker's numbers for the heartbeat and the metrics, read from the lanes when asked."""

    def __init__(self, pool: ShardPool, sharded: bool):
        self.pool, self.sharded = pool, sharded
        self.sampler: Sampler | None = None
        self.lane: WeightLane | None = None
        self.dataplane_epoch = -1
        self.t0 = time.monotonic()

    def in_epoch(self, epoch: int) -> None:
        self.dataplane_epoch = epoch

    def attach(self, sampler: Sampler, lane: WeightLane) -> None:
        self.sampler, self.lane, self.t0 = sampler, lane, time.monotonic()

    def __call__(self) -> dict:
        pool = self.pool
        out = {
            "num_envs": pool.num_envs,
            "num_shards": pool.num_shards if self.sharded else 0,
            "dataplane_epoch": self.dataplane_epoch,
        }
        if self.sampler is None:
            return out
        c, lane, loop_s = self.sampler.counts, self.lane, time.monotonic() - self.t0
        return out | {
            "env_steps_produced": c.env_steps_produced,
            "episodes_produced": c.episodes_produced,
            "episodes_sent": c.episodes_sent,
            "policy_version": lane.version,
            "env_steps_per_s": c.env_steps_produced / max(loop_s, 1e-9),
            "busy_s": loop_s - pool.parked_s - c.send_s,
            "wait_s": pool.parked_s,
            "send_s": c.send_s,
            "weights_s": lane.fetch_s,
            "swap_pause_p99_ms": lane.swap_pause_ms(0.99),
            "swap_pause_max_ms": lane.swap_pause_ms(1.0),
            "inference_batches": c.inference_batches,
            "inference_queue": len(self.sampler.batcher),
            "loop_s": loop_s,
        }
