"""Faults in a run of real processes: rollouts and the actor killed (SIGKILL) mid-run, and the run goes on.

- under `dvla run` (dvla chaos): a random rollout is killed every few seconds; weight_control evicts
  it, the data plane re-forms without it, the launcher starts it again and it rejoins; the actor is
  killed once and started again from its newest checkpoint; the run completes every update, and the
  ledger balances with `lost`;
- with the services started by hand, as on a cluster: one rollout is killed, the others and the
  actor go on, and the same worker started again by hand rejoins; the actor is killed, the rollouts
  wait, and the actor started again by hand with --resume continues from its checkpoint; an actor
  that never comes back makes the rollouts exit with a clear message within control.lost_after_s.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvla.admin import format_status
from dvla.chaos import run_chaos
from dvla.checkpoint import config_text
from dvla.config import load_config
from dvla.metrics import SUPERSEDED, read_metrics
from dvla.net import free_port
from dvla.proto.v1 import common_pb2 as pb
from dvla.rpc.client import ControlClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
FAST = [
    "pipeline.mode=train_async",
    "env.num_envs=4",
    "env.max_episode_steps=12",
    "pipeline.num_rollout_workers=2",
    "control.heartbeat_s=0.5",
    "control.evict_after_s=3",
    "telemetry.exporter=none",
    "checkpoint.every_updates=0",
    "control.port=0",
]


def test_a_chaos_run_survives_rollouts_killed_at_random_the_actor_and_weight_control_once(tmp_path: Path):
    overrides = ["pipeline.num_updates=50", "pipeline.slow_actor_s=0.5", "checkpoint.every_updates=5"]
    cfg = load_config(None, [*FAST, *overrides])
    # weight_control dies right after the actor's death is seen: the new one knows of it from the ledger
    report = run_chaos(cfg, every_s=8.0, seed=1, out=tmp_path / "run", actor_at=0.5, control_at=0.5)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "run" / "logs").glob("*.log")))
    assert report.rc == 0, logs
    rollouts = [f for f in report.faults if f.kind == "rollout killed"]
    actors = [f for f in report.faults if f.kind == "actor killed"]
    controls = [f for f in report.faults if f.kind == "weight_control killed"]
    assert len(rollouts) >= 2 and len(actors) == 1 and len(controls) == 1, report.table()
    assert report.versions_ok and report.balanced, report.table()
    # a rollout: detected within the eviction deadline (plus a sweep and a status poll); the actor: missing
    # after 5 heartbeats, or already started again; weight_control: started again and answering; every fault
    # was over (the worker back, sending in a new epoch; the actor back from its checkpoint, publishing
    # versions it trained; every worker registered again with weight_control) before the run ended
    assert all(f.detect_s is not None and f.detect_s < 3 + 2 for f in rollouts + actors), report.table()
    # weight_control: the launcher's backoff (1 s) and a new process importing and serving (~5 s here)
    assert controls[0].detect_s is not None and controls[0].detect_s < 20, report.table()
    assert all(f.recover_s is not None for f in report.faults), report.table()
    actor_log = (tmp_path / "run" / "logs" / "actor.log").read_text()
    assert "actor started again" in actor_log and "resumed from" in actor_log
    # the new weight_control read its predecessor's ledger; the workers that came back to it are in recover_s
    # (live ones "registered again", restarted ones as new processes: which, depends on the timing)
    assert "restored the ledger" in (tmp_path / "run" / "logs" / "weight_control.log").read_text()
    kill_order = [f.kind for f in report.faults if f.kind != "rollout killed"]
    assert kill_order == ["actor killed", "weight_control killed"], report.table()
    t = report.totals
    assert t["episodes_lost"] >= 0 and t["episodes_produced"] >= 50 * 4
    restarts = (tmp_path / "run" / "logs" / f"{report.faults[0].worker_id}.log").read_text()
    assert "started again" in restarts
    faults_csv = (tmp_path / "run" / "faults.csv").read_text()
    assert faults_csv.count("rollout killed") == len(rollouts) and faults_csv.count("actor killed") == 1
    # no rollout died of the actor's death (the launcher restarts only those the chaos killed)
    rollout_logs = (tmp_path / "run" / "logs").glob("rollout-*")
    restarted = sum(log.read_text().count("started again ----") for log in rollout_logs)
    assert restarted == len(rollouts), logs


def test_an_actor_group_trains_on_when_a_rank_loses_its_rollouts_and_restarts_together_when_a_rank_dies(
    tmp_path: Path,
):
    """Two actor ranks, one rollout homed to each: a rollout killed leaves its rank without any, and the
    group trains on (the other rank hands it half of its share); actor rank 1 killed restarts the whole
    group from the newest checkpoint."""
    overrides = ["pipeline.num_actors=2", "pipeline.num_updates=30", "pipeline.slow_actor_s=0.3",
                 "checkpoint.every_updates=5"]  # fmt: skip
    cfg = load_config(None, [*FAST, *overrides])
    # a rollout fault early (the first lands once v1 is out): the run's length depends on the placement the
    # launcher measures (pipeline.placement=auto), and a later first fault could miss the window before the end
    report = run_chaos(cfg, every_s=20.0, seed=2, out=tmp_path / "run", actor_at=0.6, actor_rank=1)
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "run" / "logs").glob("*.log")))
    assert report.rc == 0, logs
    kinds = [f.kind for f in report.faults]
    assert kinds.count("rollout killed") >= 1 and kinds.count("actor killed") == 1, report.table()
    assert report.versions_ok and report.balanced and all(f.recover_s is not None for f in report.faults), (
        report.table()
    )
    # ranks go by registration order: either actor process may hold rank 1
    assert re.fullmatch(r"actor(-[01])? \(rank 1\)", report.faults[kinds.index("actor killed")].worker_id)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert any(r["group/units_moved"] > 0 for r in rows)  # a rank without rollouts was handed episodes
    for name in ("actor", "actor-1"):  # both ranks started again, from the checkpoint
        text = (tmp_path / "run" / "logs" / f"{name}.log").read_text()
        assert "started again" in text and "resumed from" in text, text[-2000:]


def test_services_started_by_hand_go_on_when_a_rollout_dies_and_take_it_back_when_restarted(tmp_path: Path):
    n = 40
    port = free_port("127.0.0.1")
    # a deadline long past the assertion below: the actor's report of the broken connection evicts r1, not silence
    late = "control.evict_after_s=20"
    overrides = [f"pipeline.num_updates={n}", "pipeline.slow_actor_s=0.4", late, f"control.port={port}"]
    cfg = load_config(None, [*FAST, *overrides])
    config = tmp_path / "config.yaml"
    config.write_text(config_text(cfg, ""))
    address = f"127.0.0.1:{port}"
    logs: dict[str, Path] = {}

    def start(name: str, *args: str) -> subprocess.Popen:
        logs[name] = tmp_path / f"{name}.log"
        with open(logs[name], "a") as f:
            return subprocess.Popen(
                [sys.executable, "-m", *args, "--config", str(config)],
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                stdout=f,
                stderr=subprocess.STDOUT,
            )

    def rollout(worker_id: str) -> subprocess.Popen:
        return start(worker_id, "services.rollout", "--control", address, "--worker-id", worker_id)

    procs = {"wc": start("wc", "services.weight_control")}
    client = ControlClient(address, cfg.control)
    try:
        client.wait_healthy(60)
        procs["actor"] = start("actor", "services.actor", "--control", address, "--run-dir", str(tmp_path / "run"),
                               "--worker-id", "actor-0")  # fmt: skip
        procs["r0"], procs["r1"] = rollout("r0"), rollout("r1")

        def status():
            return client.status()

        def worker(s, wid):
            return next(w for w in s.workers if w.worker_id == wid)

        deadline = time.monotonic() + 150
        while status().latest_version < 3:
            assert time.monotonic() < deadline and procs["actor"].poll() is None, logs["actor"].read_text()[-3000:]
            time.sleep(0.2)
        procs["r1"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        while worker(status(), "r1").membership != pb.EVICTED:
            assert time.monotonic() - killed < 10, "r1 was not evicted"
            time.sleep(0.1)
        detected = time.monotonic() - killed
        s = status()
        assert s.episodes_per_update == 4 and worker(s, "r0").membership == pb.MEMBER  # the run goes on with r0
        v = s.latest_version
        while status().latest_version < v + 2:  # training goes on without r1
            assert time.monotonic() - killed < 60, logs["actor"].read_text()[-3000:]
            time.sleep(0.2)
        procs["r1"] = rollout("r1")  # started again by hand, under the same id
        while not (lambda w: w.membership == pb.MEMBER and w.stats.episodes_sent > 0)(worker(status(), "r1")):
            assert time.monotonic() - killed < 120, logs["r1"].read_text()[-3000:]
            time.sleep(0.2)
        assert status().episodes_per_update == 8
        assert procs["actor"].wait(timeout=180) == 0, logs["actor"].read_text()[-3000:]
        assert procs["r0"].wait(timeout=60) == 0 and procs["r1"].wait(timeout=60) == 0
        final = status()
    finally:
        client.close()
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    t = final.totals
    assert final.state == pb.FINISHED and final.latest_version == n
    assert t.episodes_produced == t.episodes_trained + t.episodes_dropped + t.episodes_lost, t
    assert t.episodes_in_flight == 0 and t.episodes_on_wire == 0, t
    assert [r["version"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == list(range(1, n + 1))
    assert detected < 5  # a heartbeat of the actor's after its receive lane saw the connection break
    assert "connection to its rank" in logs["wc"].read_text() and "evicted rollout 'r1'" in logs["wc"].read_text()
    assert "is lost" in logs["actor"].read_text() or "was evicted" in logs["actor"].read_text()


class Services:
    """weight_control, an actor and rollouts started by hand as separate processes, as on a cluster."""

    def __init__(self, tmp_path: Path, overrides: list[str]):
        self.tmp_path, self.port = tmp_path, free_port("127.0.0.1")
        self.cfg = load_config(None, [*FAST, *overrides, f"control.port={self.port}"])
        self.config = tmp_path / "config.yaml"
        self.config.write_text(config_text(self.cfg, ""))
        self.address = f"127.0.0.1:{self.port}"
        self.run_dir = tmp_path / "run"
        self.logs: dict[str, Path] = {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.procs["wc"] = self.start("wc", "services.weight_control")
        self.client = ControlClient(self.address, self.cfg.control)
        self.client.wait_healthy(60)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        self.logs[name] = self.tmp_path / f"{name}.log"
        with open(self.logs[name], "a") as f:
            p = subprocess.Popen(
                [sys.executable, "-m", *args, "--config", str(self.config)],
                cwd=ROOT,
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = p
        return p

    def actor(self, *args: str) -> subprocess.Popen:
        return self.start("actor", "services.actor", "--control", self.address, "--run-dir", str(self.run_dir),
                          "--worker-id", "actor-0", *args)  # fmt: skip

    def rollout(self, worker_id: str) -> subprocess.Popen:
        return self.start(worker_id, "services.rollout", "--control", self.address, "--worker-id", worker_id)

    def tails(self, chars: int = 2500) -> str:
        """Every process's last log lines and weight_control's status: what a failure message needs."""
        try:
            status = format_status(self.client.status())
        except Exception as e:  # weight_control itself may be what failed
            status = f"(no status: {e})"
        logs = "\n".join(f"----- {k}\n{p.read_text()[-chars:]}" for k, p in self.logs.items())
        return f"{logs}\n----- status\n{status}"

    def wait_for(self, what, timeout_s: float, log: str = "actor"):
        deadline = time.monotonic() + timeout_s
        while not (found := what(self.client.status())):
            assert time.monotonic() < deadline, self.logs[log].read_text()[-3000:]
            time.sleep(0.2)
        return found

    def kill_once_training(self, victim: str, at_version: int) -> float:
        """Start the actor and two rollouts, SIGKILL `victim` once `at_version` is out; when it was killed."""
        self.actor()
        self.rollout("r0"), self.rollout("r1")
        self.wait_for(lambda s: s.latest_version >= at_version, 150)
        self.procs[victim].send_signal(signal.SIGKILL)
        return time.monotonic()

    def close(self) -> None:
        self.client.close()
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()


def test_services_by_hand_go_on_when_the_actor_dies_and_continue_from_its_checkpoint(tmp_path: Path):
    n = 30
    svc = Services(tmp_path, [f"pipeline.num_updates={n}", "pipeline.slow_actor_s=0.4", "checkpoint.every_updates=5",
                              "control.lost_after_s=60"])  # fmt: skip
    try:
        svc.actor()
        svc.rollout("r0"), svc.rollout("r1")
        svc.wait_for(lambda s: s.latest_version >= 12, 150)
        svc.procs["actor"].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        svc.procs["actor"].wait()
        missing = svc.wait_for(lambda s: list(s.actors_missing), 15)  # 5 heartbeats of 0.5 s, and a poll
        assert missing[0].worker_id == "actor-0"
        assert "ACTOR MISSING: actor-0" in format_status(svc.client.status())
        assert svc.procs["r0"].poll() is None and svc.procs["r1"].poll() is None  # the rollouts wait for it
        svc.actor("--resume", "auto")  # started again as a supervisor would: from the run folder's newest checkpoint
        svc.wait_for(lambda s: s if s.actor_incarnation == 1 and s.latest_version >= 11 else None, 90)
        recovered = time.monotonic() - killed
        assert svc.procs["actor"].wait(timeout=180) == 0, svc.logs["actor"].read_text()[-3000:]
        assert svc.procs["r0"].wait(timeout=60) == 0 and svc.procs["r1"].wait(timeout=60) == 0
        final = svc.client.status()
    finally:
        svc.close()
    t = final.totals
    assert final.state == pb.FINISHED and final.latest_version == n and final.actor_incarnation == 1
    assert t.episodes_produced == t.episodes_trained + t.episodes_dropped + t.episodes_lost, t
    assert t.episodes_in_flight == 0 and t.episodes_on_wire == 0 and t.episodes_lost >= 0, t
    records = read_metrics(svc.run_dir / "metrics.jsonl")  # one record per update ...
    assert [(r["update"], r["version"]) for r in records] == [(u, u) for u in range(1, n + 1)]
    assert read_metrics(svc.run_dir / SUPERSEDED)  # ... the dead actor's of the updates redone are set aside
    actor_log = svc.logs["actor"].read_text()
    assert "resumed from" in actor_log and ("checkpoints/v000010" in actor_log or "checkpoints/v000015" in actor_log)
    assert "started afresh" in svc.logs["wc"].read_text()
    assert "following its versions from its checkpoint" in svc.logs["r0"].read_text()
    assert recovered < 60


def test_rollouts_exit_with_a_clear_message_when_the_actor_never_comes_back(tmp_path: Path):
    svc = Services(tmp_path, ["pipeline.num_updates=200", "pipeline.slow_actor_s=0.3", "control.lost_after_s=6"])
    try:
        killed = svc.kill_once_training("actor", at_version=2)
        codes = [svc.procs[r].wait(timeout=60) for r in ("r0", "r1")]
        waited = time.monotonic() - killed
        alive = svc.procs["wc"].poll() is None  # weight_control stays, and says what is wrong
        status = svc.client.status()
    finally:
        svc.close()
    assert codes == [3, 3]
    assert 6 <= waited < 6 + 15
    for r in ("r0", "r1"):
        assert "giving up" in svc.logs[r].read_text() and "actor" in svc.logs[r].read_text()
    assert alive and [a.worker_id for a in status.actors_missing] == ["actor-0"]


def test_a_restarted_weight_control_takes_the_workers_back_and_the_run_completes(tmp_path: Path):
    n = 30
    ledger = tmp_path / "control-state.json"
    svc = Services(tmp_path, [f"pipeline.num_updates={n}", "pipeline.slow_actor_s=0.4", "control.lost_after_s=60",
                              f"control.state_path={ledger}"])  # fmt: skip
    try:
        svc.actor()
        svc.rollout("r0"), svc.rollout("r1")
        svc.wait_for(lambda s: s.latest_version >= 5, 150)
        svc.procs["wc"].send_signal(signal.SIGKILL)
        svc.procs["wc"].wait()
        time.sleep(3)  # the workers find it gone, and retry
        assert ledger.is_file()  # the ledger the old one kept: every worker live
        svc.start("wc", "services.weight_control", "--state-path", str(ledger))  # on the same port
        svc.client.wait_healthy(60)
        back = svc.wait_for(lambda s: s if s.latest_version > 5 and len(s.workers) == 3 else None, 90)
        assert back.epoch >= 1  # the world re-formed after the epoch the workers were in
        try:
            assert svc.procs["actor"].wait(timeout=180) == 0, svc.tails()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the actor did not finish within 180 s:\n{svc.tails()}") from None
        assert svc.procs["r0"].wait(timeout=60) == 0 and svc.procs["r1"].wait(timeout=60) == 0
        final = svc.client.status()
    finally:
        svc.close()
    assert final.state == pb.FINISHED and final.latest_version == n
    t = final.totals  # every worker's counters are its own, so the new weight_control's totals hold
    assert t.episodes_produced == t.episodes_trained + t.episodes_dropped + t.episodes_lost, t
    assert t.episodes_in_flight == 0, t
    assert [r["version"] for r in read_metrics(svc.run_dir / "metrics.jsonl")] == list(range(1, n + 1))
    for name in ("actor", "r0", "r1"):
        assert "registered again" in svc.logs[name].read_text(), name
    assert "restored the ledger" in svc.logs["wc"].read_text()


def test_every_process_exits_with_a_clear_message_when_weight_control_never_comes_back(tmp_path: Path):
    svc = Services(tmp_path, ["pipeline.num_updates=200", "pipeline.slow_actor_s=0.3", "control.lost_after_s=8"])
    try:
        killed = svc.kill_once_training("wc", at_version=2)
        codes = {name: svc.procs[name].wait(timeout=60) for name in ("actor", "r0", "r1")}
        waited = time.monotonic() - killed
    finally:
        svc.close()
    assert codes == {"actor": 3, "r0": 3, "r1": 3}, {k: svc.logs[k].read_text()[-2000:] for k in codes}
    assert 8 <= waited < 8 + 20
    for name in codes:
        assert "has not answered for" in svc.logs[name].read_text() and "giving up" in svc.logs[name].read_text()
