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
import queue
import threading
import time
from typing import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dvla import telemetry
from dvla.algo.staleness import lag_stats, stale_episodes
from dvla.checkpoint import CHECKPOINTS, Checkpointer, check_can_continue, config_text, load_checkpoint, restore
from dvla.config import RunConfig
from dvla.counters import EpisodeLedger
from dvla.dataplane import free_port
from dvla.dataplane.world import DataPlane
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
    checkpoint_request_done: int = 0  # newest Admin.Checkpoint request written
    checkpoint_version: int = -1  # newest checkpoint of this run (-1: none yet)
    checkpoint_path: str = ""
    dataplane_epoch: int = -1
    staleness_mean: float = 0.0  # of the last update
    staleness_max: int = 0
    batches_queued: int = 0

    def report(self) -> dict:
        s = self.ledger.snapshot()
        out = {k: v for k, v in self.__dict__.items() if k != "ledger"}
        return out | {"episodes_received": s["received"], "episodes_queued": s["queued"],
                      "episodes_in_training": s["in_training"], "episodes_trained": s["trained"],
                      "episodes_dropped": s["dropped"]}


class Trainer:
    """The training lane: global batches in, new versions out."""

    def __init__(self, cfg: RunConfig, learner: Learner, inbox: ReceiveLane, stats: ActorStats,
                 episodes_per_update: Callable[[], int] = lambda: 0, idle: Callable[[], None] = lambda: None):
        """episodes_per_update(): one round of every active env in the world, as weight_control counts
        them after a rescale (0: unknown, then num_rollout_workers x num_envs from the config).
        idle(): called while waiting for episodes (e.g. when the run is paused), between optimizer steps."""
        self.cfg, self.learner, self.inbox, self.stats = cfg, learner, inbox, stats
        self.idle = idle
        self._configured_episodes = cfg.pipeline.num_rollout_workers * cfg.env.num_envs
        self._episodes_per_update = episodes_per_update
        self.ended = False  # every rollout sent END

    @property
    def global_episodes(self) -> int:
        """Episodes per update: a round of the world as it is now, so rescaling never starves an update."""
        return self._episodes_per_update() or self._configured_episodes

    def _next_fresh(self, timeout_s: float | None = None) -> TrajectoryBatch | None:
        """Next batch with stale episodes dropped (and counted); None at END; queue.Empty after timeout_s."""
        while True:
            b = self.inbox.take(timeout_s)
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
            try:
                b = self._next_fresh(timeout_s=0.25)  # then look at global_episodes again: it follows rescales
            except queue.Empty:
                self.idle()
                continue
            if b is None:
                self.stats.ledger.drop(n_eps)  # a partial global batch is never trained on
                return None
            t = time.monotonic()
            batches.append(b)
            n_eps += b.num_episodes
            # a child of the rollout round that produced it: one trace from sampling to training
            with telemetry.span("training.micro_batch", parent=b.trace_context, version=version,
                                episodes=b.num_episodes, worker=b.worker_rank):
                s = self.learner.prepare(b, version)
                samples.append(s)
                if self.cfg.pipeline.streamer:
                    stream_stats.append(self.learner.accumulate(s))
            micro_s += time.monotonic() - t
        t_batch = time.monotonic()
        batch = TrajectoryBatch.concat(batches)
        rounds = [b.trace_context for b in batches]  # the optimizer step links to every round it trains on
        record = {"check/behaviour_logp_gap": self.learner.behaviour_gap(batch, version)}
        if self.cfg.pipeline.streamer:
            # the first pass streamed in with the data; the remaining epochs run as usual,
            # so every mode does the same optimisation work per update
            with telemetry.span("training.optimizer_step", links=rounds, version=version + 1):
                grad_norm = self.learner.step_accumulated()
            record |= {k: sum(d[k] for d in stream_stats) / len(stream_stats) for k in stream_stats[0]}
            record |= {"loss/grad_norm": grad_norm, "train/samples": float(sum(len(s) for s in samples))}
            if self.cfg.algo.update_epochs > 1:
                with telemetry.span("training.optimizer_step", links=rounds, version=version + 1,
                                    epochs=self.cfg.algo.update_epochs - 1):
                    record |= self.learner.update(Samples.concat(samples), epochs=self.cfg.algo.update_epochs - 1)
        else:
            with telemetry.span("training.optimizer_step", links=rounds, version=version + 1,
                                epochs=self.cfg.algo.update_epochs):
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


def run_actor(cfg: RunConfig, control: str, worker_id: str, run_dir: Path, stop: threading.Event,
              resume: Path | None = None) -> ActorStats:
    """Train cfg.pipeline.num_updates updates; with `resume` (a checkpoint or run folder), continue from it:
    its weights, optimizer and RNG states, its version N published first, updates N+1 onwards."""
    device = resolve_device(cfg.device)
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(resume) if resume is not None else None  # a bad checkpoint fails before joining
    if ckpt is not None:
        check_can_continue(ckpt, cfg.pipeline.num_updates)
    resumed_from = str(ckpt.path.resolve()) if ckpt is not None else ""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(config_text(cfg, resumed_from))
    stats = ActorStats()
    if ckpt is not None:
        stats.updates, stats.env_steps_trained = ckpt.updates, ckpt.env_steps_trained
    start_version, start_steps, prior_wall_s = ((ckpt.version, ckpt.env_steps_trained, ckpt.wall_s) if ckpt
                                                else (0, 0, 0.0))
    checkpointer = Checkpointer(run_dir / CHECKPOINTS, cfg, resumed_from=resumed_from)
    client = ControlClient(control, cfg.control)
    metrics = MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tensorboard")
    heartbeat = plane = None
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        port = cfg.dataplane.port or free_port(cfg.dataplane.host)
        rendezvous = f"{cfg.dataplane.host}:{port}"
        plane = DataPlane(rendezvous, is_host=True, backend=cfg.dataplane.backend, timeout_s=cfg.dataplane.timeout_s)
        reg = join(client, "actor", worker_id, rendezvous_address=rendezvous, stop=stop)
        heartbeat = Heartbeat(client, worker_id, stats.report, cfg.control.heartbeat_s).start()
        telemetry.observe_worker("actor", worker_id, stats.report)
        log.info("rank 0 of %d; waiting for %d rollout(s) at %s", reg.world_size, reg.world_size - 1, rendezvous)
        world = (reg.epoch, 0, reg.world_size)
        # a rescale while the first world fills starts a newer epoch: give this one up and form that one
        while not plane.form(world[0], 0, world[2], abort=lambda: stop.is_set() or heartbeat.directives.epoch > world[0]):
            world = heartbeat.next_world(world[0], stop)
            if world is None:
                raise RuntimeError("stopped before the data plane formed")
        stats.dataplane_epoch = world[0]
        spec = client.env_spec(client.world())
        if spec is None:
            raise RuntimeError("the data plane formed but no rollout reported an env spec")

        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg.policy, spec).to(device)
        learner = Learner(policy, cfg.algo, device, seed=cfg.seed)
        if ckpt is not None:
            restore(ckpt, policy, learner)
            log.info("resumed from %s: v%d, %d updates, %d env steps trained", resumed_from, ckpt.version,
                     ckpt.updates, ckpt.env_steps_trained)
            ckpt = None  # the tensors are in the policy and optimizer now
        finished = threading.Event()  # the final version is published: no data-plane epoch is formed after it
        inbox = ReceiveLane(plane, (world[0], world[2]), cfg.pipeline.queue_batches, stats.ledger, stop,
                            next_world=lambda e: heartbeat.next_world(e, stop, give_up=finished.is_set),
                            moved_on=lambda e: heartbeat.directives.epoch > e, finished=finished.is_set).start()
        trainer = Trainer(cfg, learner, inbox, stats, episodes_per_update=lambda: heartbeat.directives.episodes_per_update,
                          idle=lambda: serve_checkpoint_request())
        publisher = PublishLane(client, worker_id, background=cfg.pipeline.background_weights)
        publisher.submit(start_version, policy.export_weights())
        stats.policy_version = start_version
        log.info("published v%d; mode %s, updates %d..%d", start_version, cfg.pipeline.mode, stats.updates + 1,
                 cfg.pipeline.num_updates)
        t0 = time.monotonic()

        def checkpoint(request: int, final: bool = False) -> float:
            """Write one now; returns the seconds it took."""
            t = time.monotonic()
            asked = request > checkpointer.request_done
            path = checkpointer.save(stats.policy_version, policy, learner, updates=stats.updates,
                                     env_steps_trained=stats.env_steps_trained, counters=stats.ledger.snapshot(),
                                     request=request, wall_s=prior_wall_s + t - t0, final=final)
            stats.checkpoint_request_done = checkpointer.request_done
            stats.checkpoint_version, stats.checkpoint_path = checkpointer.last_version, str(path)
            heartbeat.beat()  # the status API (and a waiting Admin.Checkpoint) learns of it now
            log.info("checkpoint v%d written to %s%s", stats.policy_version, path,
                     f" (request {request})" if asked else "")
            return time.monotonic() - t

        def serve_checkpoint_request() -> None:
            """While waiting for episodes (a paused run, a slow world): weights and optimizer are between
            two steps, so a requested checkpoint need not wait for the next update."""
            request = heartbeat.checkpoint_request
            if request > checkpointer.request_done:
                checkpoint(request)

        while stats.updates < cfg.pipeline.num_updates and not stop.is_set():
            record = trainer.update()
            if record is None:
                raise RuntimeError(f"every rollout ended before update {stats.updates + 1}")
            if cfg.pipeline.slow_actor_s:
                time.sleep(cfg.pipeline.slow_actor_s)
            t_pub = time.monotonic()
            publisher.submit(stats.updates, policy.export_weights(), final=stats.updates == cfg.pipeline.num_updates)
            stats.policy_version = stats.updates
            if stats.updates == cfg.pipeline.num_updates:
                finished.set()
            t_published = time.monotonic()
            request = heartbeat.checkpoint_request
            checkpoint_s = checkpoint(request) if checkpointer.due(stats.updates, request) else 0.0
            now = time.monotonic()
            stats.env_steps_per_s = (stats.env_steps_trained - start_steps) / (now - t0)
            stats.busy_s += record["time/train_s"]
            stats.wait_s += record["time/wait_s"]
            stats.weights_s = sum(publisher.publish_s)
            stats.loop_s = now - t0
            stats.staleness_mean, stats.staleness_max = record["staleness_mean"], int(record["staleness_max"])
            stats.dataplane_epoch, stats.batches_queued = inbox.epoch, inbox.queue.qsize()
            ledger = stats.ledger.snapshot()
            metrics.write({
                "version": stats.policy_version, "update": stats.updates, "env_steps": stats.env_steps_trained,
                "episodes": ledger["trained"], "episodes_received": ledger["received"],
                "episodes_dropped": ledger["dropped"], "episodes_queued": ledger["queued"],
                "env_steps_per_s": stats.env_steps_per_s, "wall_s": now - t0, "time/publish_s": t_published - t_pub,
                "time/checkpoint_s": checkpoint_s, "time/receive_blocked_s": inbox.blocked_s, **record,
            })
        publisher.flush()
        trainer.drain()
        checkpoint(heartbeat.checkpoint_request, final=True)  # with the counters after the drain
        plot_metrics(run_dir / "metrics.jsonl", run_dir / "training.png",
                     title=f"{cfg.name}: {cfg.env.task} ({cfg.algo.name}, {cfg.pipeline.mode})")
        log.info("done: %d updates; episodes %s", stats.updates, stats.ledger.snapshot())
        return stats
    finally:
        stop.set()
        if plane is not None:
            plane.close()
        stats.dataplane_epoch = -1  # before the last heartbeat, as the rollouts do
        if heartbeat is not None:
            heartbeat.stop()
        metrics.close()
        client.close()
