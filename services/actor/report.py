"""What the actor reports (heartbeat, metrics), and its checkpoint duty, kept out of the wiring."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from dvla import actorgroup
from dvla.checkpoint import CHECKPOINTS, OPTIMIZER_DIR, Checkpointer, checkpoint_name
from dvla.config import RunConfig
from dvla.counters import EpisodeLedger
from dvla.lanes.training import Progress
from dvla.ports import Control

log = logging.getLogger("dvla.actor")


class ActorReport:
    """The actor's numbers for the heartbeat and the metrics; the lanes write, the heartbeat reads."""

    def __init__(self, ledger: EpisodeLedger, progress: Progress):
        self.ledger, self.progress = ledger, progress
        self.env_steps_per_s = self.busy_s = self.wait_s = self.weights_s = self.loop_s = 0.0
        self.checkpoint_request_done, self.checkpoint_version, self.checkpoint_path = 0, -1, ""
        self.dataplane_epoch = -1
        self.staleness_mean, self.staleness_max = 0.0, 0
        self.batches_queued = 0
        self.inbox = None  # the receive lane, once it runs: it keeps what each rollout had sent

    def senders(self) -> list:
        return self.inbox.senders() if self.inbox is not None else []

    def broken(self) -> list[tuple[int, int]]:
        return self.inbox.broken() if self.inbox is not None else []

    def after_update(
        self, record: dict, start_steps: int, t0: float, publish_s: list[float], epoch: int, queued: int
    ) -> None:
        now, p = time.monotonic(), self.progress
        self.env_steps_per_s = (p.env_steps_trained - start_steps) / (now - t0)
        self.busy_s += record["time/train_s"]
        self.wait_s += record["time/wait_s"]
        self.weights_s, self.loop_s = sum(publish_s), now - t0
        self.staleness_mean, self.staleness_max = record["staleness_mean"], int(record["staleness_max"])
        self.dataplane_epoch, self.batches_queued = epoch, queued

    def __call__(self) -> dict:
        s, p = self.ledger.snapshot(), self.progress
        return {
            "policy_version": p.version,
            "env_steps_trained": p.env_steps_trained,
            "updates": p.updates,
            "env_steps_per_s": self.env_steps_per_s,
            "busy_s": self.busy_s,
            "wait_s": self.wait_s,
            "weights_s": self.weights_s,
            "loop_s": self.loop_s,
            "checkpoint_request_done": self.checkpoint_request_done,
            "checkpoint_version": self.checkpoint_version,
            "checkpoint_path": self.checkpoint_path,
            "dataplane_epoch": self.dataplane_epoch,
            "staleness_mean": self.staleness_mean,
            "staleness_max": self.staleness_max,
            "batches_queued": self.batches_queued,
            "episodes_received": s["received"],
            "episodes_queued": s["queued"],
            "episodes_in_training": s["in_training"],
            "episodes_trained": s["trained"],
            "episodes_dropped": s["dropped"],
        }


class CheckpointDuty:
    """Writes checkpoints when due (periodic, Admin.Checkpoint, the end) and acknowledges requests."""

    def __init__(self, run_dir: Path, cfg: RunConfig, resumed, report: ActorReport, control: Control):
        """resumed: the checkpoint this run continues (None: a new run)."""
        resumed_from = str(resumed.path.resolve()) if resumed is not None else ""
        self.checkpointer = Checkpointer(run_dir / CHECKPOINTS, cfg, resumed_from=resumed_from)
        self.report, self.control = report, control
        self.prior_wall_s = resumed.wall_s if resumed is not None else 0.0
        self.policy = self.learner = None
        self.t0 = time.monotonic()

    def attach(self, policy, learner) -> None:
        self.policy, self.learner, self.t0 = policy, learner, time.monotonic()

    def write(self, request: int, final: bool = False) -> float:
        """Write one now; returns the seconds it took. In an actor group every rank calls it at the same
        update: rank 0 writes the checkpoint with the gathered weights, every rank its optimizer shard."""
        t, ck, r = time.monotonic(), self.checkpointer, self.report
        asked = request > ck.request_done
        p, group = r.progress, self.learner.group
        weights = group.full_weights(self.policy)
        shards = None
        if group.size > 1:
            shards = lambda folder: actorgroup.save_optimizer(self.policy, self.learner.optimizer, folder)  # noqa: E731
            if group.rank != 0:
                shards(ck.staging(p.version) / OPTIMIZER_DIR)  # beside rank 0's, which writes the rest
                ck.mark_written(p.version, ck.root / checkpoint_name(p.version), p.updates, request)
                return time.monotonic() - t
        path = ck.save(
            p.version,
            self.policy,
            self.learner,
            updates=p.updates,
            env_steps_trained=p.env_steps_trained,
            counters=r.ledger.snapshot(),
            request=request,
            wall_s=self.prior_wall_s + t - self.t0,
            final=final,
            weights=weights,
            write_optimizer=shards,
        )
        r.checkpoint_request_done, r.checkpoint_version, r.checkpoint_path = ck.request_done, ck.last_version, str(path)
        # Admin.Checkpoint waits for this acknowledgement, and learns of it now
        self.control.acknowledge(
            checkpoint_request_done=ck.request_done, checkpoint_version=ck.last_version, checkpoint_path=str(path)
        )
        log.info("checkpoint v%d written to %s%s", p.version, path, f" (request {request})" if asked else "")
        return time.monotonic() - t

    def if_due(self, request: int) -> float:
        """After an update: periodic or requested."""
        return self.write(request) if self.checkpointer.due(self.report.progress.updates, request) else 0.0

    def if_requested(self, request: int) -> None:
        """While waiting for episodes (a paused run, a slow world): weights and optimizer are between two
        steps, so a requested checkpoint need not wait for the next update."""
        if request > self.checkpointer.request_done:
            self.write(request)
