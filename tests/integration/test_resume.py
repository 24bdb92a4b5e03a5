"""Checkpoints of a live run (periodic, on request, final) and a second run resumed from one, as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dvla.checkpoint import inspect_checkpoint, resume_config
from dvla.config import load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics
from dvla.rpc.client import ControlClient

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# control.port=0: a free port, so no other run on this machine (their admin calls) can reach these
BASE = [
    "env.num_envs=4",
    "env.max_episode_steps=15",
    "control.heartbeat_s=0.2",
    "telemetry.exporter=none",
    "checkpoint.every_updates=2",
    "control.port=0",
]


def run_to_end(cfg, run_dir: Path, resume: Path | None = None, during=lambda client: None):
    """Launch, call during(client) while it runs, wait; returns (rc, status, what during returned, first
    version's weights as weight_control holds them, launcher)."""
    launcher = Launcher(cfg, run_dir, progress="off", resume=resume)
    try:
        client = ControlClient(launcher.start(), cfg.control)
        try:
            seen = during(client)
            rc = launcher.wait()
            status = client.status()
            first = client.fetch(min(v.version for v in status.versions)) if status.versions else None
        finally:
            client.close()
    finally:
        launcher.stop_all()
    return rc, status, seen, first, launcher


def balanced(status) -> bool:
    t = status.totals
    return t.episodes_produced == t.episodes_trained + t.episodes_dropped and t.episodes_in_flight == 0


def actor_stats(status):
    return next(w.stats for w in status.workers if w.worker_id == "actor-0")


def test_checkpoints_on_request_and_periodically_then_a_resumed_run_continues(tmp_path):
    # -- the first run: 3 updates, periodic checkpoints every 2, one asked for while it runs
    cfg = load_config(
        None,
        BASE + ["pipeline.num_updates=3", "pipeline.slow_actor_s=0.5", f"out_dir={tmp_path}", "name=first"],
        preset="smoke",
    )
    first_dir = tmp_path / "first"

    def ask_for_a_checkpoint(client):
        deadline = time.monotonic() + 120
        while client.status().latest_version < 1:
            assert time.monotonic() < deadline, "no version 1 within 120 s"
            time.sleep(0.1)
        return client.checkpoint(wait=True, timeout_s=60)

    rc, status, reply, _, launcher = run_to_end(cfg, first_dir, during=ask_for_a_checkpoint)
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    assert reply.done and reply.request == 1 and 1 <= reply.version <= 3
    assert Path(reply.path) == first_dir / "checkpoints" / f"v{reply.version:06d}"
    ckpts = sorted(p.name for p in (first_dir / "checkpoints").iterdir())
    assert {"v000002", "v000003"} <= set(ckpts) and ckpts == sorted({f"v{reply.version:06d}", "v000002", "v000003"})
    final = json.loads((first_dir / "checkpoints/v000003/state.json").read_text())
    assert (final["version"], final["updates"], final["final"], final["request"]) == (3, 3, True, 1)
    stats = actor_stats(status)
    assert (stats.checkpoint_version, stats.checkpoint_request_done) == (3, 1)
    assert stats.checkpoint_path == str(first_dir / "checkpoints" / "v000003")
    assert balanced(status)

    # -- resumed from the run folder (its newest checkpoint, v3) with more updates, as `dvla run --resume` does
    info = inspect_checkpoint(first_dir)
    assert info.path == first_dir / "checkpoints" / "v000003"
    src = info.path.resolve()
    cfg2 = resume_config(info, ["pipeline.num_updates=6", "name=second"])
    second_dir = tmp_path / "second"
    rc, status, _, first_published, launcher = run_to_end(cfg2, second_dir, resume=info.path)
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)

    # versions and updates continue: v3 published first, then 4..6, the last one final
    assert [v.version for v in status.versions] == [3, 4, 5, 6] and status.versions[-1].final
    version, _, weights = first_published
    saved = load_file(str(info.path / "weights.safetensors"))
    assert version == 3 and weights.keys() == saved.keys()
    assert all(torch.equal(weights[k], saved[k]) for k in saved)
    rows = read_metrics(second_dir / "metrics.jsonl")
    assert [r["update"] for r in rows] == [4, 5, 6] and [r["version"] for r in rows] == [4, 5, 6]
    assert rows[0]["env_steps"] > info.env_steps_trained
    for r in rows:  # lockstep (sync mode) still: update k trained on episodes of version k-1 only
        assert r["versions_used"] == [r["version"] - 1]
    assert balanced(status)
    actor_log = (second_dir / "logs" / "actor.log").read_text()
    assert f"resumed from {src}: v3, 3 updates" in actor_log
    assert (second_dir / "config.yaml").read_text().startswith(f"# resumed from {src}\n")

    # its own checkpoints: periodic v4, periodic and final v6
    assert sorted(p.name for p in (second_dir / "checkpoints").iterdir()) == ["v000004", "v000006"]
    end = inspect_checkpoint(second_dir)
    assert (end.version, end.updates, end.state["final"], end.state["resumed_from"]) == (6, 6, True, str(src))
    assert end.env_steps_trained == rows[-1]["env_steps"]
    assert end.wall_s > info.wall_s

    # -- and once more through the command line, from the second run's folder
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "dvla.cli",
            "run",
            "--resume",
            str(second_dir),
            "pipeline.num_updates=7",
            "--no-progress",
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    third_dir = tmp_path / "second-2"  # a new folder: the resumed one is never written to
    assert f"run folder: {third_dir} (resumed from {(second_dir / 'checkpoints/v000006').resolve()})" in r.stdout
    assert [(x["update"], x["version"]) for x in read_metrics(third_dir / "metrics.jsonl")] == [(7, 7)]
    assert inspect_checkpoint(third_dir).version == 7
    assert sorted(p.name for p in (second_dir / "checkpoints").iterdir()) == ["v000004", "v000006"]
