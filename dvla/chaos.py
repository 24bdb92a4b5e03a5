"""`dvla chaos`: a real run with faults injected at random times, and the evidence of how it coped.

A `dvla run` (weight_control, actor and rollouts as separate processes) trains
while a random rollout worker is killed (SIGKILL: no goodbye, like an OOM kill or
a node gone) every `every_s` seconds, give or take half that, until 50% of the
updates are done (a restarted worker takes a while to rejoin); with `actor_at`,
the actor is killed once too, when that share of the updates is done, and with
`control_at` weight_control. For each fault it measures, from the status API:

    rollout  detected   kill -> weight_control shows the worker evicted (the data plane re-forms without it)
             recovered  kill -> the worker, restarted by the launcher, sends episodes in a new epoch
    actor    detected   kill -> weight_control shows the actor missing, or a new actor process registered
             recovered  kill -> the new actor (from the newest checkpoint) has published a version it trained
    control  detected   kill -> the launcher started weight_control again and it answers
             recovered  kill -> every worker registered with it again and a new version is published

At the end the ledger must balance (produced = trained + dropped + lost, nothing
in flight) and every update 1..N must be in the metrics with its version (an
actor started again from a checkpoint redoes the updates after it: the last
record of each counts). Results: a table on stdout, faults.csv and chaos.json in
the run folder.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import statistics
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from dvla.checkpoint import CHECKPOINTS, list_checkpoints
from dvla.config import RunConfig
from dvla.launch import Launcher, new_run_dir
from dvla.metrics import SUPERSEDED, read_metrics
from dvla.proto.v1 import common_pb2 as pb

LAST_FAULT_AT = 0.5  # no rollout fault after this share of the updates: a restarted one needs ~20-30 s to rejoin


@dataclass
class Fault:
    kind: str  # "rollout killed", "actor killed" or "weight_control killed"
    worker_id: str
    at_version: int
    t_kill: float  # seconds since the run started
    detect_s: float | None = None
    recover_s: float | None = None


@dataclass
class ChaosReport:
    run_dir: str
    rc: int
    faults: list[Fault]
    versions_ok: bool  # every update 1..N in the metrics, with its version (the last record of each)
    totals: dict[str, int]
    wall_s: float
    return_first: float
    return_last: float
    updates_redone: int = 0  # records of updates trained again by an actor started from a checkpoint

    @property
    def balanced(self) -> bool:
        t = self.totals
        return (
            t.get("episodes_in_flight", -1) == 0
            and t["episodes_produced"] == t["episodes_trained"] + t["episodes_dropped"] + t["episodes_lost"]
        )

    @property
    def survived(self) -> bool:
        return self.rc == 0 and self.versions_ok and self.balanced

    def table(self) -> str:
        def stat(xs: list[float]) -> str:
            return f"{statistics.median(xs):.1f} / {max(xs):.1f}" if xs else "-"

        t = self.totals
        rows = [
            "| fault | injected | survived | detect s (median / max) | recover s (median / max) | episodes lost |",
            "|---|---|---|---|---|---|",
        ]
        for kind in sorted({f.kind for f in self.faults}, reverse=True) or ["rollout killed"]:
            fs = [f for f in self.faults if f.kind == kind]
            detect = [f.detect_s for f in fs if f.detect_s is not None]
            recover = [f.recover_s for f in fs if f.recover_s is not None]
            rows.append(
                f"| {kind} (SIGKILL) | {len(fs)} | {'yes' if self.survived else 'NO'} "
                f"| {stat(detect)} | {stat(recover)} | {t.get('episodes_lost', 0)} of "
                f"{t.get('episodes_produced', 0)} (all faults) |"
            )
        undetected = sum(f.detect_s is None for f in self.faults)
        unrecovered = sum(f.recover_s is None for f in self.faults)
        lines = rows + [
            "",
            f"run: exit {self.rc}, {self.wall_s:.0f} s, updates 1..N all trained, each at its version: "
            f"{self.versions_ok} ({self.updates_redone} redone after a restart from a checkpoint); "
            f"return {self.return_first:.2f} -> {self.return_last:.2f}",
            f"ledger: produced {t['episodes_produced']} = trained {t['episodes_trained']} + dropped "
            f"{t['episodes_dropped']} + lost {t['episodes_lost']} + in flight {t['episodes_in_flight']}",
        ]
        if undetected or unrecovered:
            lines.append(f"not detected: {undetected}; not recovered before the run ended: {unrecovered}")
        return "\n".join(lines)


def run_chaos(
    cfg: RunConfig,
    every_s: float = 20.0,
    seed: int = 0,
    out: Path | None = None,
    actor_at: float | None = None,
    control_at: float | None = None,
    actor_rank: int = 0,
) -> ChaosReport:
    """Run `cfg` under `dvla run` and kill a random rollout worker every ~every_s seconds (0: never); with
    actor_at, the actor too, once, when that share of the updates is done (after a checkpoint); with
    control_at, weight_control once. actor_rank: which rank of an actor group (pipeline.num_actors) to
    kill; the launcher restarts the whole group."""
    for name, at in (("actor_at", actor_at), ("control_at", control_at)):
        if at is not None and not 0 < at < 1:
            raise ValueError(f"{name} is a share of the updates, in (0, 1); got {at}")
    if actor_at is not None and not cfg.checkpoint.every_updates:
        raise ValueError("killing the actor needs checkpoints to restart from: set checkpoint.every_updates > 0")
    p = cfg.pipeline
    p = replace(
        p,
        rollout_restarts=max(p.rollout_restarts, 1000),
        actor_restarts=max(p.actor_restarts, 1),
        control_restarts=max(p.control_restarts, 1),
    )
    cfg = replace(cfg, pipeline=p)
    run_dir = Path(out) if out is not None else new_run_dir(cfg)
    launcher = Launcher(cfg, run_dir, progress="off")
    rng = random.Random(seed)
    faults: list[Fault] = []
    rc: list[int] = []
    t0 = time.monotonic()
    from dvla.rpc.client import ControlClient, RpcFailed

    try:
        client = ControlClient(launcher.start(), cfg.control)
        waiter = threading.Thread(target=lambda: rc.append(launcher.wait()), daemon=True)
        waiter.start()
        next_fault = t0 + every_s * rng.uniform(0.5, 1.5) if every_s else float("inf")
        open_faults: list[Fault] = []
        actor = _ActorFault(actor_at, cfg.pipeline.num_updates, actor_rank)
        control = _ControlFault(control_at, cfg.pipeline.num_updates)
        while waiter.is_alive():
            time.sleep(0.2)
            now = time.monotonic()
            try:
                s = client.status()
            except RpcFailed:
                continue  # weight_control is down: it is started again
            workers = {w.worker_id: w for w in s.workers}
            control.follow(s, now - t0)
            if control.due(s, actor, open_faults):
                f = control.kill(launcher, s, now - t0)
                faults.append(f)
                print(f"chaos: killed weight_control at v{s.latest_version} ({f.t_kill:.0f} s)", flush=True)
                continue
            for f in list(open_faults):
                w = workers.get(f.worker_id)
                if f.kind == "actor killed":
                    actor.follow(f, s, now - t0)
                    if f.recover_s is not None:
                        open_faults.remove(f)
                elif f.detect_s is None and w is not None and w.membership == pb.EVICTED:
                    f.detect_s = now - t0 - f.t_kill
                elif f.detect_s is not None and w is not None and w.membership == pb.MEMBER and w.stats.episodes_sent:
                    f.recover_s = now - t0 - f.t_kill
                    open_faults.remove(f)
            if actor.due(s, launcher) and not control.before(actor, s):  # weight_control's turn, if it came first
                f = actor.kill(launcher, s, now - t0)
                faults.append(f)
                open_faults.append(f)
                print(f"chaos: killed the actor at v{s.latest_version} ({f.t_kill:.0f} s)", flush=True)
                continue
            near_end = s.latest_version >= cfg.pipeline.num_updates * LAST_FAULT_AT
            if now < next_fault or near_end or s.latest_version < 1 or actor.open or control.open or control.waiting(s):
                continue  # (weight_control's turn waits for open faults to be detected: start no new one meanwhile)
            victims = [
                c
                for c in launcher.children
                if c.name.startswith("rollout-")
                and c.proc.poll() is None
                and (w := workers.get(c.name)) is not None
                and w.membership == pb.MEMBER
                and w.stats.episodes_sent > 0
            ]
            if not victims:
                continue
            victim = rng.choice(victims)
            os.kill(victim.proc.pid, signal.SIGKILL)
            f = Fault("rollout killed", victim.name, s.latest_version, now - t0)
            faults.append(f)
            open_faults.append(f)
            print(f"chaos: killed {victim.name} at v{s.latest_version} ({f.t_kill:.0f} s)", flush=True)
            next_fault = now + every_s * rng.uniform(0.5, 1.5)
        waiter.join()
        final = client.status()
        client.close()
    finally:
        launcher.stop_all()
    records = read_metrics(run_dir / "metrics.jsonl")
    rows = sorted({r["update"]: r for r in records}.values(), key=lambda r: r["update"])  # the last of each
    n = len(rows) // 10 or 1
    report = ChaosReport(
        run_dir=str(run_dir),
        rc=rc[0] if rc else 1,
        faults=faults,
        versions_ok=[(r["update"], r["version"]) for r in rows]
        == [(u, u) for u in range(1, cfg.pipeline.num_updates + 1)],
        totals=_totals(final),
        wall_s=time.monotonic() - t0,
        return_first=sum(r["return_mean"] for r in rows[:n]) / n if rows else 0.0,
        return_last=sum(r["return_mean"] for r in rows[-n:]) / n if rows else 0.0,
        updates_redone=len(records) - len(rows) + len(read_metrics(run_dir / SUPERSEDED)),
    )
    with open(run_dir / "faults.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(asdict(Fault("", "", 0, 0.0))))
        w.writeheader()
        w.writerows(asdict(f) for f in faults)
    (run_dir / "chaos.json").write_text(
        json.dumps(asdict(report) | {"survived": report.survived, "balanced": report.balanced}, indent=2)
    )
    return report


class _ActorFault:
    """The one actor kill: when it is due, and how the run came back from it."""

    def __init__(self, at: float | None, num_updates: int, rank: int = 0):
        self.at_version = None if at is None else max(1, round(at * num_updates))
        self.rank = rank
        self.open = False
        self._incarnation = 0
        self._low: int | None = None  # the lowest version held since the new actor registered

    def due(self, s, launcher) -> bool:
        if self.at_version is None or s.latest_version < self.at_version or s.latest_version < 1:
            return False
        return (
            bool(list_checkpoints(launcher.run_dir / CHECKPOINTS))
            and all(a.proc.poll() is None for a in launcher.actors())
            and self._process(launcher, s) is not None
        )

    def _process(self, launcher, s):
        """The launcher's child that holds actor rank `rank` (ranks go by registration, not by start order)."""
        ids = [
            w.worker_id for w in s.workers if w.role == pb.ACTOR and w.rank == self.rank and w.membership == pb.MEMBER
        ]
        return next((c for c in launcher.actors() if ids and c.argv[c.argv.index("--worker-id") + 1] == ids[0]), None)

    def kill(self, launcher, s, t: float) -> Fault:
        victim = self._process(launcher, s)
        os.kill(victim.proc.pid, signal.SIGKILL)
        self.at_version, self.open, self._incarnation = None, True, s.actor_incarnation
        worker_id = victim.argv[victim.argv.index("--worker-id") + 1]
        return Fault("actor killed", f"{worker_id} (rank {self.rank})", s.latest_version, t)

    def follow(self, f: Fault, s, t: float) -> None:
        restarted = s.actor_incarnation > self._incarnation
        if f.detect_s is None and (restarted or len(s.actors_missing)):
            f.detect_s = t - f.t_kill
        if restarted and s.has_version:
            self._low = s.latest_version if self._low is None else min(self._low, s.latest_version)
            if s.latest_version > self._low:  # it trained and published a version of its own
                f.recover_s, self.open = t - f.t_kill, False


class _ControlFault:
    """The one weight_control kill: when it is due, and how the run came back from it."""

    def __init__(self, at: float | None, num_updates: int):
        self.at_version = None if at is None else max(1, round(at * num_updates))
        self.open = False
        self.fault: Fault | None = None

    def waiting(self, s) -> bool:
        """Its version is out but it has not been killed yet (it waits for the faults it would hide)."""
        return self.at_version is not None and s.latest_version >= self.at_version

    def before(self, actor: _ActorFault, s) -> bool:
        """Its version came before the actor kill's: it goes first. At the same version the actor goes first, and
        weight_control dies once that is detected, while the actor is down or coming back: the new weight_control
        knows of the dead actor only from its predecessor's ledger (control.state_path)."""
        return self.waiting(s) and (actor.at_version is None or self.at_version < actor.at_version)

    def due(self, s, actor: _ActorFault, open_faults: list[Fault]) -> bool:
        # each open fault is detected first, so that its detection is measured by the weight_control that saw it
        if not self.waiting(s) or any(f.detect_s is None for f in open_faults):
            return False
        if actor.at_version is not None and actor.at_version <= self.at_version:
            return False  # the actor's kill is due first, or at the same version (see before())
        down = {f.worker_id for f in open_faults}  # evicted, to be started again: they register with the new one
        return all(w.membership == pb.MEMBER or w.worker_id in down for w in s.workers if w.role == pb.ROLLOUT)

    def kill(self, launcher, s, t: float) -> Fault:
        wc = next(c for c in launcher.children if c.name == "weight_control")
        os.kill(wc.proc.pid, signal.SIGKILL)
        self.at_version, self.open = None, True
        self.fault = Fault("weight_control killed", "weight_control", s.latest_version, t)
        return self.fault

    def follow(self, s, t: float) -> None:
        f = self.fault
        if not self.open or f is None or s.uptime_s > t - f.t_kill:
            return  # still the old weight_control's answer
        if f.detect_s is None:
            f.detect_s = t - f.t_kill
        members = [w for w in s.workers if w.role == pb.ROLLOUT and w.membership == pb.MEMBER]
        if len(members) >= s.target_rollouts and s.has_version and s.latest_version > f.at_version:
            f.recover_s, self.open = t - f.t_kill, False


def _totals(status) -> dict[str, int]:
    if status is None:
        return {}
    t = status.totals
    return {f.name: getattr(t, f.name) for f in t.DESCRIPTOR.fields}
