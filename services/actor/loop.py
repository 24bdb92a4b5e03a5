"""The actor: receives episodes, trains, publishes every new policy version.

    rollouts --(episodes, data plane)--> receive --> staleness filter --> learner
    learner --(weights v+1)--> weight_control --(v+1)--> rollouts

Per update the actor takes one rollout epoch from each worker (the global
batch), drops episodes whose oldest step is more than max_staleness versions
behind (counted), trains, and publishes. After the last update it publishes a
final version, then keeps receiving until every rollout has sent END, so every
episode produced is either trained on or counted as dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from dvla.checkpoint import save_checkpoint
from dvla.config import RunConfig, to_yaml
from dvla.dataplane import TrajectoryReceiver, free_port, init_dataplane, shutdown_dataplane
from dvla.membership import Heartbeat, join
from dvla.service_main import resolve_device
from dvla.metrics import MetricsLog, plot_metrics
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient
from dvla.types import TrajectoryBatch

from .learner import Learner

log = logging.getLogger("dvla.actor")


@dataclass
class ActorStats:
    policy_version: int = -1
    episodes_received: int = 0
    episodes_trained: int = 0
    episodes_dropped: int = 0
    env_steps_trained: int = 0
    updates: int = 0
    env_steps_per_s: float = 0.0
    received_from: dict = field(default_factory=dict)  # rank -> episodes

    def report(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "received_from"}


def split_stale(batches: list[TrajectoryBatch], version: int, max_staleness: int) -> tuple[list, list]:
    """Keep batches whose oldest real step is at most max_staleness versions behind `version`."""
    fresh, stale = [], []
    for b in batches:
        oldest = int(b.versions[b.step_mask()].min())
        (fresh if version - oldest <= max_staleness else stale).append(b)
    return fresh, stale


def episode_metrics(b: TrajectoryBatch, version: int) -> dict:
    lag = (version - b.versions[b.step_mask()]).float()
    return {
        "success_rate": float(b.success.float().mean()),
        "return_mean": float(b.returns().mean()),
        "episode_length": float(b.lengths.float().mean()),
        "staleness_min": float(lag.min()), "staleness_mean": float(lag.mean()), "staleness_max": float(lag.max()),
    }


def run_actor(cfg: RunConfig, control: str, worker_id: str, run_dir: Path, stop: threading.Event) -> ActorStats:
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    stats = ActorStats()
    client = ControlClient(control, cfg.control)
    metrics = MetricsLog(run_dir / "metrics.jsonl")
    heartbeat = None
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        port = cfg.dataplane.port or free_port(cfg.dataplane.host)
        rendezvous = f"{cfg.dataplane.host}:{port}"
        reg = join(client, "actor", worker_id, rendezvous_address=rendezvous, stop=stop)
        log.info("rank 0 of %d; waiting for %d rollout(s) at %s", reg.world_size, reg.world_size - 1, rendezvous)
        init_dataplane(rendezvous, 0, reg.world_size, cfg.dataplane.backend, cfg.dataplane.timeout_s)
        spec = client.env_spec(client.world())
        if spec is None:
            raise RuntimeError("the data plane formed but no rollout reported an env spec")
        heartbeat = Heartbeat(client, worker_id, stats.report, cfg.control.heartbeat_s).start()

        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg.policy, spec).to(device)
        learner = Learner(policy, cfg.algo, device, seed=cfg.seed)
        client.publish(0, policy.export_weights(), publisher_id=worker_id)
        stats.policy_version = 0
        receiver = TrajectoryReceiver(sources=list(range(1, reg.world_size)))
        pending: list[TrajectoryBatch] = []
        t0 = time.monotonic()
        log.info("published v0 (%d tensors); training %d updates", len(policy.export_weights()), cfg.pipeline.num_updates)

        while stats.updates < cfg.pipeline.num_updates and not stop.is_set():
            t_wait = time.monotonic()
            while len(pending) < cfg.pipeline.num_rollout_workers:
                src, b = receiver.recv()
                if b is None:
                    raise RuntimeError(f"rollout rank {src} ended before the actor finished (update {stats.updates + 1})")
                stats.episodes_received += b.num_episodes
                stats.received_from[src] = stats.received_from.get(src, 0) + b.num_episodes
                pending.append(b)
            take, pending = pending[:cfg.pipeline.num_rollout_workers], pending[cfg.pipeline.num_rollout_workers:]
            fresh, stale = split_stale(take, stats.policy_version, cfg.pipeline.max_staleness)
            stats.episodes_dropped += sum(b.num_episodes for b in stale)
            if not fresh:
                continue
            batch = TrajectoryBatch.concat(fresh)
            t_train = time.monotonic()
            record = episode_metrics(batch, stats.policy_version)
            record["check/behaviour_logp_gap"] = learner.behaviour_gap(batch, stats.policy_version)
            record["versions_used"] = sorted({int(v) for v in batch.versions[batch.step_mask()].unique()})
            record |= learner.update(batch)
            stats.updates += 1
            stats.episodes_trained += batch.num_episodes
            stats.env_steps_trained += batch.num_steps
            final = stats.updates == cfg.pipeline.num_updates
            t_pub = time.monotonic()
            client.publish(stats.updates, policy.export_weights(), final=final, publisher_id=worker_id)
            stats.policy_version = stats.updates
            now = time.monotonic()
            stats.env_steps_per_s = stats.env_steps_trained / (now - t0)
            metrics.write({
                "version": stats.policy_version, "update": stats.updates, "env_steps": stats.env_steps_trained,
                "episodes": stats.episodes_trained, "episodes_dropped": stats.episodes_dropped,
                "env_steps_per_s": stats.env_steps_per_s, "wall_s": now - t0,
                "time/wait_s": t_train - t_wait, "time/train_s": t_pub - t_train, "time/publish_s": now - t_pub,
                **record,
            })
        # Account for everything still on the wire: received after the last update = dropped.
        while receiver.open_sources:
            src, b = receiver.recv()
            if b is not None:
                stats.episodes_received += b.num_episodes
                stats.episodes_dropped += b.num_episodes
                stats.received_from[src] = stats.received_from.get(src, 0) + b.num_episodes
        stats.episodes_dropped += sum(b.num_episodes for b in pending)
        save_checkpoint(run_dir / "checkpoint", policy.export_weights(), learner.optimizer.state_dict(),
                        stats.policy_version, stats.report(), cfg)
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "training.png", title=f"{cfg.name}: {cfg.env.task} ({cfg.algo.name})")
        log.info("done: %d updates, %d episodes trained, %d dropped", stats.updates, stats.episodes_trained,
                 stats.episodes_dropped)
        return stats
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        metrics.close()
        shutdown_dataplane()
        client.close()
