"""Faults in a run of real processes: rollouts killed (SIGKILL) mid-run, and the run goes on.

- under `dvla run` (dvla chaos): a random rollout is killed every few seconds; weight_control evicts
  it, the data plane re-forms without it, the launcher starts it again and it rejoins; the run
  completes every update, each version trained once, and the ledger balances with `lost`;
- with the services started by hand, as on a cluster: one rollout is killed, the others and the
  actor go on, and the same worker started again by hand rejoins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvla.chaos import run_chaos
from dvla.checkpoint import config_text
from dvla.config import load_config
from dvla.metrics import read_metrics
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


def test_a_chaos_run_survives_rollouts_killed_at_random_and_its_ledger_balances(tmp_path: Path):
    cfg = load_config(None, [*FAST, "pipeline.num_updates=50", "pipeline.slow_actor_s=0.5"])
    report = run_chaos(cfg, every_s=8.0, seed=1, out=tmp_path / "run")
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((tmp_path / "run" / "logs").glob("*.log")))
    assert report.rc == 0, logs
    assert len(report.faults) >= 2, report.table()
    assert report.versions_ok and report.balanced, report.table()
    # detected within the eviction deadline (plus a sweep and a status poll); every fault was over
    # (its worker back, sending in a new epoch) before the run ended
    assert all(f.detect_s is not None and f.detect_s < 3 + 2 for f in report.faults), report.table()
    assert all(f.recover_s is not None for f in report.faults), report.table()
    t = report.totals
    assert t["episodes_lost"] >= 0 and t["episodes_produced"] >= 50 * 4
    restarts = (tmp_path / "run" / "logs" / f"{report.faults[0].worker_id}.log").read_text()
    assert "started again" in restarts
    assert (tmp_path / "run" / "faults.csv").read_text().count("rollout killed") == len(report.faults)


def test_services_started_by_hand_go_on_when_a_rollout_dies_and_take_it_back_when_restarted(tmp_path: Path):
    n = 40
    port = free_port("127.0.0.1")
    cfg = load_config(None, [*FAST, f"pipeline.num_updates={n}", "pipeline.slow_actor_s=0.4", f"control.port={port}"])
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
    assert detected < 3 + 2
    assert "evicted rollout 'r1'" in logs["wc"].read_text()
    assert "is lost" in logs["actor"].read_text() or "was evicted" in logs["actor"].read_text()
