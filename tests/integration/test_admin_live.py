"""Admin verbs against a live run of real processes, with the counters checked before and after."""

from __future__ import annotations

import time

import pytest

from dvla.cli import main
from dvla.config import load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics
from dvla.proto.v1 import common_pb2 as pb
from dvla.rpc.client import ControlClient

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["sync", "swimlane"])
def test_pause_holds_everything_still_and_resume_loses_nothing(tmp_path, mode, capsys, wait_for):
    n = 8
    cfg = load_config(
        None,
        [
            f"pipeline.mode={mode}",
            "env.num_envs=4",
            "env.max_episode_steps=15",
            "pipeline.num_rollout_workers=2",
            f"pipeline.num_updates={n}",
            "pipeline.num_shards=2",
            "pipeline.slow_actor_s=0.3",
            "control.heartbeat_s=0.2",
            "telemetry.exporter=none",
        ],
    )
    launcher = Launcher(cfg, tmp_path, progress=False)
    try:
        address = launcher.start()
        client = ControlClient(address, cfg.control)
        wait_for(lambda: client.status().latest_version >= 2)
        assert main(["admin", "pause", "--control", address]) == 0
        assert capsys.readouterr().out.strip() == "run paused"

        # A safe point: nothing moves, and every episode produced has reached the actor. Most are trained
        # or dropped; the actor may hold part of a global batch (a rollout finished its round before it
        # saw the pause, another had not started one), which it trains once the rounds resume.
        def quiet():
            a = client.status()
            time.sleep(1.5)  # several heartbeats
            b = client.status()
            t = b.totals
            return (
                b
                if (
                    a.totals == t
                    and a.latest_version == b.latest_version
                    and t.episodes_unsent == 0
                    and t.episodes_on_wire == 0
                    and t.episodes_in_flight == t.episodes_queued + t.episodes_in_training
                )
                else None
            )

        held = wait_for(quiet, timeout_s=90, every_s=0)
        assert held.state == pb.PAUSED and held.latest_version < n
        t = held.totals
        assert (
            t.episodes_produced == t.episodes_trained + t.episodes_dropped + t.episodes_queued + t.episodes_in_training
        )
        assert t.episodes_queued + t.episodes_in_training < 2 * 4  # less than one global batch is held
        time.sleep(2.0)
        later = client.status()
        assert later.totals == held.totals and later.latest_version == held.latest_version

        assert main(["admin", "resume", "--control", address]) == 0
        assert capsys.readouterr().out.strip() == "run running"
        rc = launcher.wait()
        final = client.status()
        client.close()
    finally:
        launcher.stop_all()
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    t = final.totals
    assert final.latest_version == n and final.state == pb.FINISHED
    assert t.episodes_produced == t.episodes_trained + t.episodes_dropped and t.episodes_in_flight == 0
    assert t.episodes_trained > held.totals.episodes_trained  # it went on after the resume
    assert [r["version"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, n + 1))
