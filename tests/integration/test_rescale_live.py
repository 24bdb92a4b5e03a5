"""Rescale and checkpoint against a live run of real processes, with the counters checked before and after.

One rollout worker becomes two (a standby worker admitted while both sample, or
one the launcher starts while the run is paused; the data plane re-forms in a
new epoch), one worker's env shards go from 2 to 1 and back (swimlane), then
two become one again (the leaver finishes, sends what it holds, and exits 0).
Through it all: produced = trained + dropped at the end, every version 1..N is
trained exactly once, and the leaver's episodes stay in the totals.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from dvla.cli import main
from dvla.config import load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics
from dvla.proto.v1 import common_pb2 as pb
from dvla.rpc.client import ControlClient

pytestmark = pytest.mark.slow


def worker(status, worker_id: str):
    return next((w for w in status.workers if w.worker_id == worker_id), None)


def admin(capsys, address: str, *argv: str) -> dict:
    assert main(["admin", *argv, "--control", address, "--json"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out  # the launcher's thread may have said "rescale: started ..." meanwhile
    return json.loads("\n".join(line for line in out.splitlines() if not line.startswith("rescale: started")))


@pytest.mark.parametrize("mode", ["sync", "swimlane"])
def test_rescale_up_and_down_and_checkpoint_on_request(tmp_path: Path, mode: str, capsys, wait_for):
    n = 60  # long enough (~40 s) for a joiner to build its envs while the run goes on
    cfg = load_config(
        None,
        [
            f"pipeline.mode={mode}",
            "env.num_envs=4",
            "env.max_episode_steps=12",
            "pipeline.num_rollout_workers=1",
            f"pipeline.num_updates={n}",
            "pipeline.num_shards=2",
            "pipeline.slow_actor_s=0.5",
            "control.heartbeat_s=0.2",
            "telemetry.exporter=none",
            "checkpoint.every_updates=0",
            "control.port=0",
        ],
    )
    launcher = Launcher(cfg, tmp_path, progress="off")
    rc: list[int] = []
    try:
        address = launcher.start()
        client = ControlClient(address, cfg.control)
        if mode == "sync":
            # A second worker started beside the run waits on standby (the run wants one); rescaling
            # admits it at once, so the world re-forms while both keep sampling (lockstep: the old worker
            # may be waiting for the next version, which must not hold up the re-forming).
            wait_for(lambda: client.status().has_version, timeout_s=150)  # rollout-0 holds the slot
            launcher.spawn_rollout()
            wait_for(lambda: worker(client.status(), "rollout-1") is not None, timeout_s=150)
            assert worker(client.status(), "rollout-1").membership == pb.STANDBY
        waiter = threading.Thread(target=lambda: rc.append(launcher.wait()), daemon=True)
        waiter.start()  # follows rescales: starts the rollout processes the target asks for
        wait_for(lambda: client.status().latest_version >= 2)

        # --- up: 1 -> 2 rollout workers
        if mode == "swimlane":
            # the launcher starts the joiner; its envs take a while to build, so hold the run meanwhile
            admin(capsys, address, "pause")
        up = admin(capsys, address, "rescale", "--rollouts", "2")
        assert up["target_rollouts"] == 2 and up["standby_admitted"] == (mode == "sync")
        if mode == "swimlane":
            wait_for(
                lambda: (lambda w: w and w.stats.dataplane_epoch >= 1)(worker(client.status(), "rollout-1")),
                timeout_s=150,
            )
            admin(capsys, address, "resume")
        joined = wait_for(
            lambda: (
                lambda s: s if (worker(s, "rollout-1") and worker(s, "rollout-1").stats.episodes_sent > 0) else None
            )(client.status()),
            timeout_s=150,
        )
        assert joined.epoch >= 1 and joined.episodes_per_update == 8
        assert worker(joined, "rollout-1").membership == pb.MEMBER and worker(joined, "rollout-1").rank == 2

        def grew() -> bool:  # an update of the grown world trained, before the shards change it again
            rows = read_metrics(tmp_path / "metrics.jsonl")
            return any(r["episodes"] - p["episodes"] == 8 for p, r in zip(rows, rows[1:]))

        wait_for(grew, timeout_s=150)

        # --- env shards of one worker: 2 -> 1 -> 2 (sharded modes only)
        if mode == "swimlane":
            r = admin(capsys, address, "rescale", "--worker", "rollout-0", "--shards", "1")
            assert r["episodes_per_update"] == 6
            wait_for(lambda: worker(client.status(), "rollout-0").stats.num_shards == 1, timeout_s=60)
            before = worker(client.status(), "rollout-0").stats.episodes_sent
            wait_for(lambda: worker(client.status(), "rollout-0").stats.episodes_sent > before, timeout_s=60)
            admin(capsys, address, "rescale", "--worker", "rollout-0", "--shards", "2")
            wait_for(lambda: worker(client.status(), "rollout-0").stats.num_shards == 2, timeout_s=60)
        else:
            assert main(["admin", "rescale", "--worker", "rollout-0", "--shards", "1", "--control", address]) == 2
            assert "in-process" in capsys.readouterr().err

        # --- a checkpoint on request, written after the update under way
        ck = admin(capsys, address, "checkpoint", "--timeout", "120")
        assert ck["done"] and Path(ck["path"]).is_dir() and (Path(ck["path"]) / "state.json").is_file()
        assert int(ck["version"]) >= 2

        # --- down: 2 -> 1; the leaver sends what it holds, then exits 0
        down = admin(capsys, address, "rescale", "--rollouts", "1")
        assert down["leaving"] == ["rollout-1"]
        leaver = next((c for c in launcher.children if c.name == "rollout-1"), None)
        assert leaver is not None, [c.name for c in launcher.children]
        assert leaver.proc.wait(120) == 0
        left = wait_for(
            lambda: (lambda s: s if worker(s, "rollout-1").membership == pb.LEFT else None)(client.status())
        )
        assert left.episodes_per_update == 4 and worker(left, "rollout-1").stats.episodes_sent > 0

        waiter.join(300)
        final = client.status()
        client.close()
    finally:
        launcher.stop_all()
    assert rc == [0], "\n".join(c.tail() for c in launcher.children)
    t = final.totals
    assert final.latest_version == n and final.state == pb.FINISHED
    assert t.episodes_produced == t.episodes_trained + t.episodes_dropped and t.episodes_in_flight == 0
    assert t.episodes_produced == sum(w.stats.episodes_produced for w in final.workers if w.role == pb.ROLLOUT)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["version"] for r in rows] == list(range(1, n + 1))
    assert {r["episodes"] - p["episodes"] for p, r in zip(rows, rows[1:])} >= {8}  # updates grew with the world
    assert [c.name for c in launcher.children if c.name.startswith("rollout")] == ["rollout-0", "rollout-1"]
