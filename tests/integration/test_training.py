"""The three services as real processes: a short run end to end, and learning."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dvla.config import load_config
from dvla.launch import Launcher, _port_free
from dvla.metrics import read_metrics
from dvla.rpc.client import ControlClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def run_services(cfg, run_dir: Path):
    """Run to completion; returns (exit code, final Admin status, metrics rows)."""
    launcher = Launcher(cfg, run_dir, progress=False)
    try:
        address = launcher.start()
        rc = launcher.wait()
        client = ControlClient(address, cfg.control)
        status = client.status()
        client.close()
    finally:
        launcher.stop_all()
    for c in launcher.children:
        assert c.proc.poll() is not None, f"{c.name} still running"
    return rc, status, read_metrics(run_dir / "metrics.jsonl"), launcher


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_sync_run_two_rollouts(tmp_path, algo):
    n = 3
    cfg = load_config(
        None,
        [
            f"algo.name={algo}",
            "env.num_envs=4",
            "algo.group_size=2",
            "env.max_episode_steps=15",
            "pipeline.num_rollout_workers=2",
            f"pipeline.num_updates={n}",
            "control.heartbeat_s=0.2",
        ],
    )
    rc, status, rows, launcher = run_services(cfg, tmp_path)
    logs = "\n".join(c.tail() for c in launcher.children)
    assert rc == 0, logs
    # the actor reached version N and marked it final
    assert status.latest_version == n and status.versions[-1].final
    assert [r["version"] for r in rows] == list(range(1, n + 1))
    # lockstep: update k trained only on episodes sampled by version k-1, and those
    # episodes' log-probs match the weights of that version: the rollouts ran
    # exactly the versions they fetched
    for r in rows:
        assert r["versions_used"] == [r["version"] - 1]
        assert r["check/behaviour_logp_gap"] < 1e-4
    # nothing lost: every episode produced was received; trained + dropped = produced
    t = status.totals
    workers = {w.worker_id: w.stats for w in status.workers}
    sent = sum(s.episodes_sent for wid, s in workers.items() if wid.startswith("rollout"))
    assert sent == t.episodes_produced == t.episodes_received
    assert t.episodes_trained + t.episodes_dropped == t.episodes_produced
    assert t.episodes_in_flight == 0
    assert t.episodes_trained == n * 2 * 4
    # outputs
    ckpt = f"checkpoints/v{n:06d}"  # the final checkpoint (smaller ones only every checkpoint.every_updates)
    for name in ("metrics.jsonl", "training.png", "config.yaml", f"{ckpt}/weights.safetensors", f"{ckpt}/state.json"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / ckpt / "state.json").read_text())["version"] == n
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))  # curves for tensorboard --logdir


@pytest.mark.parametrize("mode", ["disaggregated", "train_async", "rollout_async", "streamer", "swimlane"])
def test_every_mode_trains_end_to_end(tmp_path, mode):
    n, eta = 4, 1
    cfg = load_config(
        None,
        [
            f"pipeline.mode={mode}",
            "env.num_envs=4",
            "env.max_episode_steps=15",
            "pipeline.num_rollout_workers=2",
            f"pipeline.num_updates={n}",
            f"pipeline.max_staleness={eta}",
            "control.heartbeat_s=0.2",
        ],
    )
    rc, status, rows, launcher = run_services(cfg, tmp_path)
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    assert status.latest_version == n and status.versions[-1].final
    assert [r["version"] for r in rows] == list(range(1, n + 1))
    bound = cfg.pipeline.max_staleness_in_force
    for r in rows:
        trained_on = r["version"] - 1
        # every step came from a version the actor published, at most eta behind
        assert all(max(0, trained_on - bound) <= v <= trained_on for v in r["versions_used"]), r["versions_used"]
        assert r["staleness_max"] <= bound
    t = status.totals
    assert t.episodes_produced == t.episodes_received == t.episodes_trained + t.episodes_dropped
    assert t.episodes_in_flight == 0 and t.episodes_trained == n * 2 * 4


def test_dvla_run_cli_and_sigterm_stops_everything(tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "dvla.cli",
        "run",
        "--preset",
        "smoke",
        f"out_dir={tmp_path}",
        "name=cli",
        "pipeline.num_updates=1000",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    metrics = tmp_path / "cli" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(read_metrics(metrics)) < 2:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    assert len(read_metrics(metrics)) >= 2, "no training progress within 120 s"
    cfg = load_config(tmp_path / "cli" / "config.yaml")
    children = _children_of(proc.pid)
    assert len(children) == 3  # weight_control, actor, rollout
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    time.sleep(0.5)
    alive = [pid for pid in children if _alive(pid)]
    assert not alive, f"orphans left: {alive}\n{out}"
    port = int(
        open(tmp_path / "cli" / "logs" / "weight_control.log").read().split("listening on ")[1].split(":")[1].split()[0]
    )
    assert _port_free(cfg.control.host, port)


def test_bad_config_fails_at_start(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "dvla.cli", "run", "algo.lr=-3", f"out_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "'algo.lr'" in r.stderr
    assert not any(tmp_path.iterdir())


def _children_of(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(p.name))
            except (OSError, IndexError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except OSError:
        return False
