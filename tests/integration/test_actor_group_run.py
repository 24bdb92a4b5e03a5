"""`dvla run pipeline.num_actors=2`: real services, two actor ranks, rollouts routed to their home actor.

M=3 rollouts to K=2 actors: rollout ranks 2 and 4 are homed to actor rank 0, rank 3 to actor rank 1,
so in lockstep rank 0 receives 2 rounds per update and rank 1 one; rank 0 hands one whole GRPO
group to rank 1 (3 groups each), and each rank counts what it received as trained. Every episode is
received exactly once, the counters balance across the two actors, and a resumed group continues
the version numbering.
"""

from __future__ import annotations

import pytest
from test_accounting import run_and_watch  # noqa: I001 (a sibling test module)

from dvla.config import load_config
from dvla.launch import placement
from dvla.metrics import read_metrics

pytestmark = pytest.mark.slow


def test_three_rollouts_feed_two_actor_ranks_and_the_group_resumes(tmp_path):
    envs, n = 4, 3
    overrides = [
        "algo.name=grpo",
        "algo.group_size=2",
        f"env.num_envs={envs}",
        "env.max_episode_steps=10",
        "pipeline.num_rollout_workers=3",
        "pipeline.num_actors=2",
        "pipeline.placement=disaggregated",  # each actor rank a core of its own, where the node has them
        f"pipeline.num_updates={n}",
        "control.heartbeat_s=0.1",
        "telemetry.exporter=none",
    ]
    cfg = load_config(None, overrides)
    snapshots, final, _ = run_and_watch(cfg, tmp_path / "a")

    actors = sorted((w for w in final.workers if w.worker_id.startswith("actor")), key=lambda w: w.rank)
    assert [w.rank for w in actors] == [0, 1]
    assert any(len([w for w in s.workers if w.worker_id.startswith("actor")]) == 2 for s in snapshots)
    rollouts = sorted(w.rank for w in final.workers if w.worker_id.startswith("rollout"))
    assert rollouts == [2, 3, 4]
    t = final.totals
    assert t.episodes_produced == t.episodes_sent == t.episodes_received
    assert t.episodes_trained + t.episodes_dropped == t.episodes_produced
    # lockstep: each update trains one round of every rollout, two homed to rank 0 and one to rank 1
    assert actors[0].stats.episodes_trained == n * 2 * envs
    assert actors[1].stats.episodes_trained == n * envs
    rows = read_metrics(tmp_path / "a" / "metrics.jsonl")
    assert [r["version"] for r in rows] == list(range(1, n + 1))
    assert all(r["train/samples"] > 0 for r in rows)
    rank1 = read_metrics(tmp_path / "a" / "actor-rank1" / "metrics.jsonl")  # rank 1's own, beside rank 0's
    # 2 + 1 rounds of 2 groups: rank 0 hands one group to rank 1 in every update, and 3 groups each train
    assert [r["group/units_moved"] for r in rows] == [r["group/units_moved"] for r in rank1] == [1.0] * n
    for k, slot in enumerate(placement(cfg).actors):  # the cores dvla run gave each rank are the ones it ran on
        name = "actor" if k == 0 else f"actor-{k}"
        text = (tmp_path / "a" / "logs" / f"{name}.log").read_text()
        assert f"cores {sorted(slot.cores)}, {len(slot.cores)} intra-op threads" in text
    ckpt = tmp_path / "a" / "checkpoints" / f"v{n:06d}"
    assert (ckpt / "optimizer" / ".metadata").is_file() and (ckpt / "weights.safetensors").is_file()

    more = load_config(None, [*overrides, f"pipeline.num_updates={n + 2}"])
    _, final, _ = run_and_watch(more, tmp_path / "b", resume=ckpt)
    rows = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["version"] for r in rows] == [n + 1, n + 2]
    assert final.latest_version == n + 2


def test_rescaling_the_rollouts_of_an_actor_group(tmp_path, capsys, wait_for):
    """Two actor ranks, two rollouts (one each); rescaled to three, rank 0 is home to two of them and the
    group evens every update out; back to two, the leaver's episodes stay in the totals."""
    import threading

    from test_rescale_live import admin, worker

    from dvla.launch import Launcher
    from dvla.proto.v1 import common_pb2 as pb
    from dvla.rpc.client import ControlClient

    n = 40
    cfg = load_config(
        None,
        [
            "env.num_envs=4",
            "env.max_episode_steps=12",
            "pipeline.num_rollout_workers=2",
            "pipeline.num_actors=2",
            f"pipeline.num_updates={n}",
            "pipeline.slow_actor_s=0.3",
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
        waiter = threading.Thread(target=lambda: rc.append(launcher.wait()), daemon=True)
        waiter.start()  # follows rescales: starts the rollout processes the target asks for
        wait_for(lambda: client.status().latest_version >= 2, timeout_s=150)
        admin(capsys, address, "pause")  # while the joiner builds its envs
        assert admin(capsys, address, "rescale", "--rollouts", "3")["target_rollouts"] == 3
        wait_for(lambda: (lambda w: w and w.stats.dataplane_epoch >= 1)(worker(client.status(), "rollout-2")), 150)
        admin(capsys, address, "resume")
        joined = wait_for(
            lambda: (lambda s: s if (lambda w: w and w.stats.episodes_sent > 0)(worker(s, "rollout-2")) else None)(
                client.status()
            ),
            timeout_s=150,
        )
        assert joined.episodes_per_update == 12 and worker(joined, "rollout-2").rank == 4  # homed to actor rank 0
        wait_for(lambda: client.status().latest_version >= joined.latest_version + 3, timeout_s=150)

        down = admin(capsys, address, "rescale", "--rollouts", "2")
        assert down["leaving"] == ["rollout-2"]
        leaver = next(c for c in launcher.children if c.name == "rollout-2")
        assert leaver.proc.wait(120) == 0
        waiter.join(300)
        final = client.status()
        client.close()
    finally:
        launcher.stop_all()
    assert rc == [0], "\n".join(c.tail() for c in launcher.children)
    t = final.totals
    assert final.latest_version == n and final.state == pb.FINISHED
    assert t.episodes_produced == t.episodes_trained + t.episodes_dropped and t.episodes_in_flight == 0
    assert worker(final, "rollout-2").stats.episodes_sent > 0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    rank1 = read_metrics(tmp_path / "actor-rank1" / "metrics.jsonl")
    assert [r["version"] for r in rows] == [r["version"] for r in rank1] == list(range(1, n + 1))
    # with three rollouts (8 episodes on rank 0, 4 on rank 1) two episodes change rank per update
    assert {r["group/units_moved"] for r in rows} == {0.0, 2.0}
    assert [r["group/units_moved"] for r in rows] == [r["group/units_moved"] for r in rank1]
