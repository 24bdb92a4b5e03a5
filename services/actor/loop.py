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
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from dvla import actorgroup, telemetry
from dvla.algo.group import Solo
from dvla.algo.learner import Learner
from dvla.checkpoint import check_can_continue, config_text, load_checkpoint, restore_training, restore_weights
from dvla.config import RunConfig
from dvla.counters import EpisodeLedger
from dvla.dataplane import DataPlane
from dvla.lanes.epochs import EpochCycle
from dvla.lanes.publish import OffThread, PublishLane
from dvla.lanes.receive import ReceiveLane
from dvla.lanes.training import Progress, Trainer
from dvla.membership import Heartbeat, join
from dvla.metrics import SUPERSEDED, MetricsLog, plot_metrics
from dvla.net import free_port
from dvla.placement import actor_threads
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient
from dvla.service_main import give_up, resolve_device
from dvla.types import World

from .report import ActorReport, CheckpointDuty

log = logging.getLogger("dvla.actor")


def run_actor(
    cfg: RunConfig,
    control: str,
    worker_id: str,
    run_dir: Path,
    stop: threading.Event,
    resume: Path | None = None,
    busy_neighbours: int = 0,
) -> dict:
    """Train cfg.pipeline.num_updates updates; with `resume` (a checkpoint or run folder), continue from it:
    its weights, optimizer and RNG states, its version N published first, updates N+1 onwards.
    busy_neighbours: env-stepping processes sharing this rank's cores while it trains (see follow_cores)."""
    p, run_dir = cfg.pipeline, Path(run_dir)
    cores = CoreShare(set(os.sched_getaffinity(0)), busy_neighbours)
    follow_cores(cores)  # the cores placement gave this rank, not the node's
    ckpt = open_run_dir(cfg, run_dir, resume)
    ledger = EpisodeLedger()
    progress = Progress(updates=ckpt.updates, env_steps_trained=ckpt.env_steps_trained) if ckpt else Progress()
    report = ActorReport(ledger, progress)
    client = ControlClient(control, cfg.control)
    heartbeat = plane = metrics = None
    try:
        client.wait_healthy(cfg.control.rpc_timeout_s)
        reg, plane, group = join_actor_group(cfg, client, worker_id, stop)
        # updates after the checkpoint are trained again: their records from a dead actor move aside
        metrics = MetricsLog(*metrics_paths(run_dir, reg.rank), after_update=progress.updates)
        if metrics.superseded:
            log.info("%d metrics records of updates after %d (trained again now) moved to %s",
                     metrics.superseded, progress.updates, metrics.path.with_name(SUPERSEDED))  # fmt: skip
        heartbeat = Heartbeat(client, worker_id, report, cfg.control.heartbeat_s, senders=report.senders,
                              broken=report.broken, lost_after_s=cfg.control.lost_after_s,
                              on_lost=give_up).start()  # fmt: skip
        telemetry.observe_worker("actor", worker_id, report)
        log.info("actor rank %d of %d; waiting for %d rollout(s) at %s", reg.rank, reg.num_actors,
                 reg.world_size - reg.num_actors, reg.rendezvous_address)  # fmt: skip
        log.info("placed on %s, cores %s, %d intra-op threads", resolve_device(cfg.device),
                 sorted(os.sched_getaffinity(0)), torch.get_num_threads())  # fmt: skip
        finished = threading.Event()  # the final version is published: no data-plane epoch is formed after it
        cycle = EpochCycle(plane, heartbeat, stop, give_up=finished.is_set)
        world = cycle.enter(World(reg.epoch, reg.rank, reg.world_size, reg.num_actors, reg.rendezvous_address))
        if world is None:
            raise RuntimeError("stopped before the data plane formed")
        report.dataplane_epoch = world.epoch
        homes = [len(world.rollouts_of(a)) for a in range(world.actors)]
        if len(set(homes)) > 1:
            log.info("rollouts per actor rank %s: the group evens every global batch out between its ranks", homes)
        policy, learner = build_learner(cfg, client, ckpt, group)
        checkpoints = CheckpointDuty(run_dir, cfg, ckpt, report, heartbeat)
        checkpoints.attach(policy, learner)
        start_version, ckpt = (ckpt.version if ckpt else 0), None  # its tensors are in the policy and optimizer
        inbox = report.inbox = ReceiveLane(cycle, world, p.queue_batches, ledger, stop).start()
        configured = p.num_rollout_workers * cfg.env.num_envs  # until weight_control counts the world
        streamer = p.streamer and group.size == 1  # a group backpropagates each global batch once it is in
        if p.streamer and not streamer:
            log.info("an actor group backpropagates whole global batches: streaming per batch is one rank's")
        trainer = Trainer(
            learner, inbox, ledger, progress, max_staleness=p.max_staleness_in_force, streamer=streamer,
            # a group rank without rollouts (evicted) takes share 0: the others hand it its part of theirs
            episodes_per_update=lambda: 0 if group.size > 1 and inbox.homeless else (
                heartbeat.directives.episodes_per_update or configured // reg.num_actors),
            # between two steps a checkpoint may be written while waiting; a group writes them together only
            idle=lambda: group.size == 1 and checkpoints.if_requested(heartbeat.checkpoint_request),
        )  # fmt: skip
        # used on actor rank 0 only: one version, one whole policy; with policy.frozen, partial after the first
        lane = PublishLane(client, worker_id, trained=policy.trained_names())
        if reg.rank == 0:
            heartbeat.on_rejoin = lane.republish_in_background  # a restarted weight_control holds no version
        publisher = OffThread(lane.submit) if p.background_weights and reg.rank == 0 else lane
        actor = Actor(cfg, trainer, publisher, lane, policy, checkpoints, heartbeat, report, metrics, finished)
        actor.cores = cores
        actor.train(start_version, stop=stop)
        plot_metrics(metrics.path, metrics.path.with_name("training.png"),
                     title=f"{cfg.name}: {cfg.env.task} ({cfg.algo.name}, {p.mode})")  # fmt: skip
        log.info("done: %d updates; episodes %s", progress.updates, ledger.snapshot())
        return report()
    finally:
        stop.set()
        if plane is not None:
            plane.close()
        report.dataplane_epoch = -1  # before the last heartbeat, as the rollouts do
        if heartbeat is not None:
            heartbeat.stop()
        if metrics is not None:
            metrics.close()
        client.close()
        actorgroup.leave()


@dataclass
class CoreShare:
    start: set[int]  # the cores this rank started on
    busy_neighbours: int  # env-stepping processes that share them (0: they are its own)
    seen: frozenset[int] = frozenset()  # the cores at the last look


def follow_cores(share: CoreShare) -> None:
    """Intra-op threads for the cores this process has now: placement=auto moves running processes between
    cores (dvla/autoplace.py), and a thread pool sized for other cores would idle or oversubscribe. On the
    cores it started on it shares them with share.busy_neighbours physics processes (dvla/placement.py:
    actor_threads); moved onto fewer, they are its own."""
    cores = set(os.sched_getaffinity(0))
    n = actor_threads(len(cores), share.busy_neighbours if cores >= share.start else 0)
    if n != torch.get_num_threads() or cores != share.seen:
        log.info("now on %d core(s)%s: %d intra-op thread(s)", len(cores),
                 f" beside {share.busy_neighbours} env process(es)" if n < len(cores) else "", n)  # fmt: skip
        torch.set_num_threads(n)
        share.seen = frozenset(cores)


class Actor:
    """The training lane's loop, in named steps: next global batch, update, publish, checkpoint if due, log."""

    def __init__(self, cfg, trainer, publisher, lane, policy, checkpoints, heartbeat, report, metrics, finished):
        self.cfg, self.trainer, self.publisher, self.lane, self.policy = cfg, trainer, publisher, lane, policy
        self.checkpoints, self.heartbeat, self.report, self.metrics = checkpoints, heartbeat, report, metrics
        self.finished, self.progress, self.group = finished, trainer.progress, trainer.learner.group
        self.cores = CoreShare(set(os.sched_getaffinity(0)), 0)  # run_actor: with the neighbours it was told of

    def train(self, start_version: int, stop: threading.Event) -> None:
        p, progress = self.cfg.pipeline, self.progress
        weights = self.group.full_weights(self.policy)  # actor rank 0 publishes; in a group, all gather
        if weights is not None:
            self.publisher.submit(start_version, weights)
        progress.version, start_steps, t0 = start_version, progress.env_steps_trained, time.monotonic()
        log.info("published v%d; mode %s, updates %d..%d", start_version, p.mode, progress.updates + 1, p.num_updates)
        while progress.updates < p.num_updates and not stop.is_set():
            batch = self.trainer.next_global_batch()
            if batch is None:
                raise RuntimeError(f"every rollout ended before update {progress.updates + 1}")
            follow_cores(self.cores)
            record = self.trainer.update(batch)
            if p.slow_actor_s:
                time.sleep(p.slow_actor_s)
            publish_s = self.publish(final=progress.updates == p.num_updates)
            checkpoint_s = self.checkpoints.if_due(self.checkpoint_request())
            self.log(record, start_steps, t0, publish_s, checkpoint_s)
        self.publisher.flush()
        self.trainer.drain()
        self.checkpoints.write(self.checkpoint_request(), final=True)  # with the counters after the drain

    def checkpoint_request(self) -> int:
        """The newest Admin.Checkpoint request; in a group, the newest any rank has heard of, so that
        every rank writes (a collective) at the same update."""
        request = torch.tensor([self.heartbeat.checkpoint_request], dtype=torch.int64)
        return int(self.group.all_reduce(request, "max"))

    def publish(self, final: bool) -> float:
        """Hand the new version to the publish lane; the seconds the training lane spent on it."""
        t = time.monotonic()
        weights = self.group.full_weights(self.policy)  # a collective in a group: gathered on rank 0
        if weights is not None:
            self.publisher.submit(self.progress.updates, weights, final=final)
        self.progress.version = self.progress.updates
        if final:
            self.finished.set()
        return time.monotonic() - t

    def log(self, record: dict, start_steps: int, t0: float, publish_s: float, checkpoint_s: float) -> None:
        inbox, report = self.trainer.inbox, self.report
        report.after_update(record, start_steps, t0, self.lane.publish_s, inbox.epoch, inbox.queue.qsize())
        p, ledger = self.progress, report.ledger.snapshot()
        self.metrics.write({
            "version": p.version, "update": p.updates, "env_steps": p.env_steps_trained,
            "episodes": ledger["trained"], "episodes_received": ledger["received"],
            "episodes_dropped": ledger["dropped"], "episodes_queued": ledger["queued"],
            "env_steps_per_s": report.env_steps_per_s, "wall_s": time.monotonic() - t0, "time/publish_s": publish_s,
            "time/checkpoint_s": checkpoint_s, "time/receive_blocked_s": inbox.blocked_s, **record,
        })  # fmt: skip


def open_run_dir(cfg: RunConfig, run_dir: Path, resume: Path | None):
    """The checkpoint to resume from (checked before joining: a bad one fails fast), and config.yaml written."""
    ckpt = load_checkpoint(resume) if resume is not None else None
    if ckpt is not None:
        check_can_continue(ckpt, cfg.pipeline.num_updates)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "config.yaml").exists():
        (run_dir / "config.yaml").write_text(config_text(cfg, str(ckpt.path.resolve()) if ckpt else ""))
    return ckpt


def join_actor_group(cfg: RunConfig, client: ControlClient, worker_id: str, stop: threading.Event) -> tuple:
    """Register as an actor rank; (registration, data plane, actor group). Rank 0 hosts the data plane's
    store, which the actor group (K > 1: DDP or FSDP over the actor ranks) forms on too."""
    host = cfg.dataplane.host
    # this process's own key: started again under the same id (from a checkpoint), it replaces the dead one
    reg = join(client, "actor", worker_id, rendezvous_address=f"{host}:{cfg.dataplane.port or free_port(host)}",
               stop=stop, worker_key=secrets.randbits(63) or 1)  # fmt: skip
    d = cfg.dataplane
    if reg.rank == 0:
        plane = DataPlane(reg.rendezvous_address, is_host=True, backend=d.backend, timeout_s=d.timeout_s,
                          connect_timeout_s=d.connect_timeout_s)  # fmt: skip
    else:
        reg, plane = reach_rank0(cfg, client, reg, stop)
    if reg.num_actors == 1:
        return reg, plane, Solo()
    actorgroup.form(reg.rank, reg.num_actors, timeout_s=d.timeout_s, store=plane.store)
    a = cfg.actor
    return reg, plane, actorgroup.DistGroup(a.strategy, resolve_device(cfg.device), a.param_dtype, a.reduce_dtype)


def reach_rank0(cfg: RunConfig, client: ControlClient, reg, stop: threading.Event) -> tuple:
    """Actor rank k > 0: connect to the store actor rank 0 hosts. A group started again together may find the
    dead rank 0's address still registered (the new one has not registered yet): ask weight_control again
    every few seconds, for up to control.lost_after_s (0: dataplane.timeout_s)."""
    d = cfg.dataplane
    deadline = time.monotonic() + (cfg.control.lost_after_s or d.timeout_s)
    while True:
        try:
            plane = DataPlane(reg.rendezvous_address, is_host=False, backend=d.backend, timeout_s=d.timeout_s,
                              connect_timeout_s=d.connect_timeout_s, store_wait_s=5.0)  # fmt: skip
            return reg, plane
        except dist.DistError as e:
            if stop.is_set() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"actor rank {reg.rank}: actor rank 0's store at {reg.rendezvous_address} did not answer "
                    f"within control.lost_after_s={cfg.control.lost_after_s:g} s: is actor rank 0 running?"
                ) from e
            log.warning("actor rank %d: actor rank 0's store at %s does not answer (started again?); asking "
                        "weight_control for its address again", reg.rank, reg.rendezvous_address)  # fmt: skip
            time.sleep(1.0)
            reg = client.register_again()


def metrics_paths(run_dir: Path, rank: int) -> tuple[Path, Path]:
    """Actor rank 0 writes the run's metrics; another rank, its own beside them."""
    folder = run_dir if rank == 0 else run_dir / f"actor-rank{rank}"
    return folder / "metrics.jsonl", folder / "tensorboard"


def build_learner(cfg: RunConfig, client: ControlClient, ckpt, group) -> tuple:
    """The policy for the rollouts' env spec, and its learner; restored from `ckpt` when resuming."""
    spec = client.env_spec(client.world())
    if spec is None:
        raise RuntimeError("the data plane formed but no rollout reported an env spec")
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    policy = build_policy(cfg.policy, spec).to(device)
    if ckpt is not None:
        restore_weights(ckpt, policy)  # before the group wraps (and shards) the policy
    learner = Learner(policy, cfg.algo, device, seed=cfg.seed, group=group)
    if ckpt is not None:
        restore_training(
            ckpt,
            learner,
            load_optimizer_dir=lambda d: actorgroup.load_optimizer(policy, learner.optimizer, d),
            load_optimizer_state=(lambda s: actorgroup.load_optimizer_state(policy, learner.optimizer, s))
            if group.collective_forward  # FSDP: sharded parameters
            else None,
        )
        log.info("resumed from %s: v%d, %d updates, %d env steps trained", ckpt.path, ckpt.version, ckpt.updates,
                 ckpt.env_steps_trained)  # fmt: skip
    return policy, learner
