"""Nothing lost under load: a slow actor (backpressure) and a slow rollout (the actor waits).

While the run goes on, every Admin.Status snapshot must balance: the actor's
own ledger exactly (received = queued + in training + trained + dropped), and
across workers nothing may be negative. At the end everything produced was
received, and trained + dropped = produced.
"""

from __future__ import annotations

import time

import pytest

from dvla.config import load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics
from dvla.rpc.client import ControlClient

pytestmark = pytest.mark.slow


def run_and_watch(cfg, run_dir, resume=None):
    """Run to the end, taking an Admin.Status snapshot every 0.1 s: (snapshots, final status, metrics)."""
    launcher = Launcher(cfg, run_dir, resume=resume)
    snapshots = []
    try:
        address = launcher.start()
        client = ControlClient(address, cfg.control)
        actor = next(c for c in launcher.children if c.name == "actor")
        while actor.proc.poll() is None:
            snapshots.append(client.status())
            time.sleep(0.1)
        rc = launcher.wait()
        final = client.status()
        client.close()
    finally:
        launcher.stop_all()
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    return snapshots, final, read_metrics(run_dir / "metrics.jsonl")


def check_snapshot(st, queue_episodes: int) -> None:
    actor = next((w.stats for w in st.workers if w.rank == 0), None)
    if actor is None:
        return
    s = actor
    assert s.episodes_received == s.episodes_queued + s.episodes_in_training + s.episodes_trained + s.episodes_dropped
    assert s.episodes_queued <= queue_episodes  # the bounded queue really is bounded
    t = st.totals
    assert t.episodes_unsent >= 0 and t.episodes_on_wire >= 0 and t.episodes_in_flight >= 0


@pytest.mark.parametrize("slow", ["pipeline.slow_actor_s=0.4", "pipeline.slow_rollout_s=0.01"])
def test_counters_balance_with_a_slow_stage(tmp_path, slow):
    n, eta, envs = 5, 1, 4
    cfg = load_config(
        None,
        [
            "pipeline.mode=swimlane",
            f"env.num_envs={envs}",
            "env.max_episode_steps=10",
            "pipeline.num_rollout_workers=2",
            "pipeline.num_shards=2",
            f"pipeline.num_updates={n}",
            f"pipeline.max_staleness={eta}",
            "pipeline.queue_batches=1",
            "control.heartbeat_s=0.1",
            "telemetry.exporter=none",
            "control.port=0",
            slow,
        ],
    )
    snapshots, final, rows = run_and_watch(cfg, tmp_path)
    assert len(snapshots) > 10
    for st in snapshots:
        # the queue holds one shard batch, the receive lane one more while it waits for room
        check_snapshot(st, queue_episodes=2 * (envs // 2))
    t = final.totals
    assert t.episodes_produced == t.episodes_sent == t.episodes_received
    assert t.episodes_trained + t.episodes_dropped == t.episodes_produced
    assert t.episodes_in_flight == 0 and t.episodes_queued == 0 and t.episodes_in_training == 0
    assert t.episodes_trained == n * 2 * envs
    assert max(r["staleness_max"] for r in rows) <= eta
