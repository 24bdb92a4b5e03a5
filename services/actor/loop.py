"""The actor: receives episodes, trains, publishes every new policy version.

    data plane --> receive lane --(bounded queue)--> training lane --> publish lane --> weight_control
                   (thread: backpressure             (main thread)     (inline, or a thread in
                    when the queue is full)                             swimlane mode)

Training lane, per update: take rollout batches until the global batch
(num_rollout_workers x num_envs episodes) is complete; drop and count episodes
older than the staleness bound eta; train (PPO/GRPO with the decoupled loss for
steps from older versions), either on the whole batch or, in streamer mode, by
backpropagating each batch as it arrives and stepping once per global batch;
publish the new version. The last version is marked final; then the actor drains
the data plane until every rollout has sent END, so produced = trained + dropped.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dvla import telemetry
from dvla.algo.staleness import lag_stats, stale_episodes
from dvla.checkpoint import save_checkpoint
from dvla.config import RunConfig, to_yaml
from dvla.counters import EpisodeLedger
from dvla.dataplane import TrajectoryReceiver, free_port, init_dataplane, shutdown_dataplane
from dvla.membership import Heartbeat, join
from dvla.metrics import MetricsLog, plot_metrics
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient
from dvla.service_main import resolve_device
from dvla.types import TrajectoryBatch

from .lanes import PublishLane, ReceiveLane
from .learner import Learner, Samples

log = logging.getLogger("dvla.actor")


@dataclass
class ActorStats:
    ledger: EpisodeLedger = field(default_factory=EpisodeLedger)
    policy_version: int = -1
    env_steps_trained: int = 0
    updates: int = 0
    env_steps_per_s: float = 0.0
    busy_s: float = 0.0  # training
    wait_s: float = 0.0  # waiting for episodes
    weights_s: float = 0.0  # publishing (on the publish lane's thread in swimlane mode)
    loop_s: float = 0.0

    def report(self) -> dict:
        s = self.ledger.snapshot()
        out = {k: v for k, v in self.__dict__.items() if k != "ledger"}
        return out | {"episodes_received": s["received"], "episodes_queued": s["queued"],
                      "episodes_in_training": s["in_training"], "episodes_trained": s["trained"],
                      "episodes_dropped": s["dropped"]}


class Trainer:
    """The training lane: global batches in, new versions out."""

    def __init__(self, cfg: RunConfig, learner: Learner, inbox: ReceiveLane, stats: ActorStats):
        self.cfg, self.learner, self.inbox, self.stats = cfg, learner, inbox, stats
        self.global_episodes = cfg.pipeline.num_rollout_workers * cfg.env.num_envs
        self.ended = False  # every rollout sent END

    def _next_fresh(self) -> TrajectoryBatch | None:
        """Next batch with stale episodes dropped (and counted); None at END."""
        while True:
            b = self.inbox.take()
            if b is None:
                self.ended = True
                return None
            stale = stale_episodes(b, self.stats.policy_version, self.cfg.pipeline.staleness, self.cfg.algo.name == "grpo")
            if stale.any():
                self.stats.ledger.drop(int(stale.sum()))
                b = b.select(~stale)
            if b.num_episodes:
                return b

    def update(self) -> dict | None:
        """One optimizer update; None if the rollouts ended before a global batch was complete."""
        version = self.stats.policy_version
        batches, samples, stream_stats, n_eps = [], [], [], 0
        t_start = time.monotonic()
        micro_s = 0.0  # compute spent on micro-batches while the global batch fills
        while n_eps < self.global_episodes:
            b = self._next_fresh()
            if b is None:
                self.stats.ledger.drop(n_eps)  # a partial global batch is never trained on
                return None
            t = time.monotonic()
            batches.append(b)
            n_eps += b.num_episodes
            with telemetry.span("training.micro_batch", version=version, episodes=b.num_episodes, worker=b.worker_rank):
                s = self.learner.prepare(b, version)
                samples.append(s)
                if self.cfg.pipeline.streamer:
                    stream_stats.append(self.learner.accumulate(s))
            micro_s += time.monotonic() - t
        t_batch = time.monotonic()
        batch = TrajectoryBatch.concat(batches)
        record = {"check/behaviour_logp_gap": self.learner.behaviour_gap(batch, version)}
        if self.cfg.pipeline.streamer:
            # the first pass streamed in with the data; the remaining epochs run as usual,
            # so every mode does the same optimisation work per update
            with telemetry.span("training.optimizer_step", version=version + 1):
                grad_norm = self.learner.step_accumulated()
            record |= {k: sum(d[k] for d in stream_stats) / len(stream_stats) for k in stream_stats[0]}
            record |= {"loss/grad_norm": grad_norm, "train/samples": float(sum(len(s) for s in samples))}
            if self.cfg.algo.update_epochs > 1:
                with telemetry.span("training.optimizer_step", version=version + 1, epochs=self.cfg.algo.update_epochs - 1):
                    record |= self.learner.update(Samples.concat(samples), epochs=self.cfg.algo.update_epochs - 1)
        else:
            with telemetry.span("training.optimizer_step", version=version + 1, epochs=self.cfg.algo.update_epochs):
                record |= self.learner.update(Samples.concat(samples))
        t_end = time.monotonic()
        self.stats.updates += 1
        self.stats.ledger.train(batch.num_episodes)
        self.stats.env_steps_trained += batch.num_steps
        return record | lag_stats(batch, version) | {
            "success_rate": float(batch.success.float().mean()),
            "return_mean": float(batch.returns().mean()),
            "episode_length": float(batch.episode_steps().float().mean()),
            "versions_used": sorted(int(v) for v in batch.versions[batch.step_mask()].unique()),
            "time/wait_s": t_batch - t_start - micro_s,
            "time/train_s": t_end - t_batch + micro_s,
        }

    def drain(self) -> None:
        """After the last update: count whatever still arrives as dropped, until END."""
        while not self.ended:
            b = self.inbox.take()
            if b is None:
                self.ended = True
            else:
                self.stats.ledger.drop(b.num_episodes)


def run_actor(cfg: RunConfig, control: str, worker_id: str, run_dir: Path, stop: threading.Event) -> ActorStats:
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
    stats = ActorStats()
    client = ControlClient(control, cfg.control)
    metrics = MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tensorboard")
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

        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg.policy, spec).to(device)
        learner = Learner(policy, cfg.algo, device, seed=cfg.seed)
        inbox = ReceiveLane(TrajectoryReceiver(sources=list(range(1, reg.world_size))), cfg.pipeline.queue_batches,
                            stats.ledger, stop).start()
        trainer = Trainer(cfg, learner, inbox, stats)
        publisher = PublishLane(client, worker_id, background=cfg.pipeline.background_weights)
        heartbeat = Heartbeat(client, worker_id, stats.report, cfg.control.heartbeat_s).start()
        publisher.submit(0, policy.export_weights())
        stats.policy_version = 0
        log.info("published v0; mode %s, %d updates", cfg.pipeline.mode, cfg.pipeline.num_updates)
        t0 = time.monotonic()
        while stats.updates < cfg.pipeline.num_updates and not stop.is_set():
            record = trainer.update()
            if record is None:
                raise RuntimeError(f"every rollout ended before update {stats.updates + 1}")
            if cfg.pipeline.slow_actor_s:
                time.sleep(cfg.pipeline.slow_actor_s)
            t_pub = time.monotonic()
            publisher.submit(stats.updates, policy.export_weights(), final=stats.updates == cfg.pipeline.num_updates)
            stats.policy_version = stats.updates
            now = time.monotonic()
            stats.env_steps_per_s = stats.env_steps_trained / (now - t0)
            stats.busy_s += record["time/train_s"]
            stats.wait_s += record["time/wait_s"]
            stats.weights_s = sum(publisher.publish_s)
            stats.loop_s = now - t0
            ledger = stats.ledger.snapshot()
            metrics.write({
                "version": stats.policy_version, "update": stats.updates, "env_steps": stats.env_steps_trained,
                "episodes": ledger["trained"], "episodes_received": ledger["received"],
                "episodes_dropped": ledger["dropped"], "episodes_queued": ledger["queued"],
                "env_steps_per_s": stats.env_steps_per_s, "wall_s": now - t0, "time/publish_s": now - t_pub,
                "time/receive_blocked_s": inbox.blocked_s, **record,
            })
        publisher.flush()
        trainer.drain()
        save_checkpoint(run_dir / "checkpoint", policy.export_weights(), learner.optimizer.state_dict(),
                        stats.policy_version, stats.report(), cfg, policy)
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "training.png",
                     title=f"{cfg.name}: {cfg.env.task} ({cfg.algo.name}, {cfg.pipeline.mode})")
        log.info("done: %d updates; episodes %s", stats.updates, stats.ledger.snapshot())
        return stats
    finally:
        stop.set()
        if heartbeat is not None:
            heartbeat.stop()
        metrics.close()
        shutdown_dataplane()
        client.close()
