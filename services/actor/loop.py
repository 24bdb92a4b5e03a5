"""The actor: receives episodes, trains, publishes every new policy version.

    data plane --> [receive] --(bounded queue)--> [training] --> [publish] --> weight_control

Lanes (dvla/lanes/), and what wires them here:
  receive    consumes rollout batches from the data plane; produces them on a bounded queue
             (full: it stops receiving, rollouts block in send). Re-forms the data plane at
             each new epoch while training goes on. Thread: its own. Owns the queue.
  training   consumes the queue until one round of every active env is in (a global batch);
             drops and counts episodes older than max_staleness; produces one update. Thread:
             main. Owns the policy, the optimizer and Progress (version, updates, env steps).
  publish    consumes each new version's weights; produces it in weight_control. Thread:
             main in the lockstep modes, its own in swimlane (newest version first).
  heartbeat  reports ActorReport; reads the directives (episodes per update, checkpoint
             requests, epochs). Thread: its own.
The episode ledger (received = queued + in training + trained + dropped) is shared by
receive and training, under its own lock.

The last version is marked final; then the actor drains the data plane until
every rollout has sent END, so produced = trained + dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from pathlib import Path

import torch

from dvla import telemetry
from dvla.algo.learner import Learner
from dvla.checkpoint import check_can_continue, config_text, load_checkpoint, restore
from dvla.config import RunConfig
from dvla.counters import EpisodeLedger
from dvla.dataplane import DataPlane
from dvla.lanes.epochs import EpochCycle
from dvla.lanes.publish import OffThread, PublishLane
from dvla.lanes.receive import ReceiveLane
from dvla.lanes.training import Progress, Trainer
from dvla.membership import Heartbeat, join
from dvla.metrics import MetricsLog, plot_metrics
from dvla.net import free_port
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient
from dvla.service_main import resolve_device
from dvla.types import World

from .report import ActorReport, CheckpointDuty

log = logging.getLogger("dvla.actor")


def run_actor(
    cfg: RunConfig, control: str, worker_id: str, run_dir: Path, stop: threading.Event, resume: Path | None = None
) -> dict:
    """Train cfg.pipeline.num_updates updates; with `resume` (a checkpoint or run folder), continue from it:
    its weights, optimizer and RNG states, its version N published first, updates N+1 onwards."""
    p, run_dir = cfg.pipeline, Path(run_dir)
    ckpt = load_checkpoint(resume) if resume is not None else None  # a bad checkpoint fails before joining
    if ckpt is not None:
        check_can_continue(ckpt, p.num_updates)
    resumed_from = str(ckpt.path.resolve()) if ckpt is not None else ""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(config_text(cfg, resumed_from))
    ledger = EpisodeLedger()
    progress = Progress(updates=ckpt.updates, env_steps_trained=ckpt.env_steps_trained) if ckpt else Progress()
    start_version, start_steps = (ckpt.version, ckpt.env_steps_trained) if ckpt else (0, 0)
    report = ActorReport(ledger, progress)
    client = ControlClient(control, cfg.control)
    metrics = MetricsLog(run_dir / "metrics.jsonl", tensorboard_dir=run_dir / "tensorboard")
    heartbeat = plane = None
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        rendezvous = f"{cfg.dataplane.host}:{cfg.dataplane.port or free_port(cfg.dataplane.host)}"
        plane = DataPlane(rendezvous, is_host=True, backend=cfg.dataplane.backend, timeout_s=cfg.dataplane.timeout_s)
        reg = join(client, "actor", worker_id, rendezvous_address=rendezvous, stop=stop)
        heartbeat = Heartbeat(client, worker_id, report, cfg.control.heartbeat_s, senders=report.senders).start()
        telemetry.observe_worker("actor", worker_id, report)
        log.info("rank 0 of %d; waiting for %d rollout(s) at %s", reg.world_size, reg.world_size - 1, rendezvous)
        finished = threading.Event()  # the final version is published: no data-plane epoch is formed after it
        cycle = EpochCycle(plane, heartbeat, stop, give_up=finished.is_set)
        world = cycle.enter(World(reg.epoch, 0, reg.world_size))
        if world is None:
            raise RuntimeError("stopped before the data plane formed")
        report.dataplane_epoch = world.epoch
        spec = client.env_spec(client.world())
        if spec is None:
            raise RuntimeError("the data plane formed but no rollout reported an env spec")

        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        policy = build_policy(cfg.policy, spec).to(device)
        learner = Learner(policy, cfg.algo, device, seed=cfg.seed)
        if ckpt is not None:
            restore(ckpt, policy, learner)
            log.info(
                "resumed from %s: v%d, %d updates, %d env steps trained",
                resumed_from,
                ckpt.version,
                ckpt.updates,
                ckpt.env_steps_trained,
            )
        checkpoints = CheckpointDuty(run_dir, cfg, resumed_from, report, heartbeat, ckpt.wall_s if ckpt else 0.0)
        checkpoints.attach(policy, learner)
        ckpt = None  # the tensors are in the policy and optimizer now
        inbox = report.inbox = ReceiveLane(cycle, world, p.queue_batches, ledger, stop).start()
        configured = p.num_rollout_workers * cfg.env.num_envs  # until weight_control counts the world
        trainer = Trainer(
            learner,
            inbox,
            ledger,
            progress,
            max_staleness=p.staleness,
            streamer=p.streamer,
            episodes_per_update=lambda: heartbeat.directives.episodes_per_update or configured,
            idle=lambda: checkpoints.if_requested(heartbeat.checkpoint_request),
        )
        lane = PublishLane(client, worker_id)
        publisher = OffThread(lane.submit) if p.background_weights else lane
        publisher.submit(start_version, policy.export_weights())
        progress.version = start_version
        log.info("published v%d; mode %s, updates %d..%d", start_version, p.mode, progress.updates + 1, p.num_updates)
        t0 = time.monotonic()

        while progress.updates < p.num_updates and not stop.is_set():
            batch = trainer.next_global_batch()
            if batch is None:
                raise RuntimeError(f"every rollout ended before update {progress.updates + 1}")
            record = trainer.update(batch)
            if p.slow_actor_s:
                time.sleep(p.slow_actor_s)
            t_pub = time.monotonic()
            final = progress.updates == p.num_updates
            publisher.submit(progress.updates, policy.export_weights(), final=final)
            progress.version = progress.updates
            if final:
                finished.set()
            publish_s = time.monotonic() - t_pub
            checkpoint_s = checkpoints.if_due(heartbeat.checkpoint_request)
            report.after_update(record, start_steps, t0, lane.publish_s, inbox.epoch, inbox.queue.qsize())
            log_update(metrics, report, record, time.monotonic() - t0, publish_s, checkpoint_s, inbox.blocked_s)
        publisher.flush()
        trainer.drain()
        checkpoints.write(heartbeat.checkpoint_request, final=True)  # with the counters after the drain
        plot_metrics(
            run_dir / "metrics.jsonl",
            run_dir / "training.png",
            title=f"{cfg.name}: {cfg.env.task} ({cfg.algo.name}, {p.mode})",
        )
        log.info("done: %d updates; episodes %s", progress.updates, ledger.snapshot())
        return report()
    finally:
        stop.set()
        if plane is not None:
            plane.close()
        report.dataplane_epoch = -1  # before the last heartbeat, as the rollouts do
        if heartbeat is not None:
            heartbeat.acks = replace(heartbeat.acks, left_dataplane=True)
            heartbeat.stop()
        metrics.close()
        client.close()


def log_update(
    metrics: MetricsLog,
    report: ActorReport,
    record: dict,
    wall_s: float,
    publish_s: float,
    checkpoint_s: float,
    receive_blocked_s: float,
) -> None:
    p, ledger = report.progress, report.ledger.snapshot()
    metrics.write(
        {
            "version": p.version,
            "update": p.updates,
            "env_steps": p.env_steps_trained,
            "episodes": ledger["trained"],
            "episodes_received": ledger["received"],
            "episodes_dropped": ledger["dropped"],
            "episodes_queued": ledger["queued"],
            "env_steps_per_s": report.env_steps_per_s,
            "wall_s": wall_s,
            "time/publish_s": publish_s,
            "time/checkpoint_s": checkpoint_s,
            "time/receive_blocked_s": receive_blocked_s,
            **record,
        }
    )
