"""placement=auto in an asynchronous mode: a real run measures both core splits, keeps the faster, and says so."""

from __future__ import annotations

import json

import pytest
from test_training import run_services  # tests/integration is on sys.path (rootdir import mode)

from dvla.config import load_config
from dvla.metrics import plot_placement
from dvla.proto.v1 import common_pb2 as pb

pytestmark = pytest.mark.slow


def test_a_swimlane_run_measures_its_placements_and_keeps_the_fastest(tmp_path):
    n = 16
    cfg = load_config(
        None,
        [
            "pipeline.mode=swimlane",
            "env.num_envs=4",
            "env.max_episode_steps=12",
            "pipeline.num_rollout_workers=2",
            f"pipeline.num_updates={n}",
            "pipeline.auto_window_updates=2",
            "pipeline.auto_recheck_windows=1",
            "pipeline.auto_cut_below=0",  # measure both splits whatever their CPU says (the bound: unit tests)
            "control.heartbeat_s=0.2",
        ],
    )
    rc, status, rows, launcher = run_services(cfg, tmp_path)
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    decisions = [json.loads(line) for line in (tmp_path / "placement.jsonl").read_text().splitlines()]
    assert decisions[0]["placement"] == "colocated" and decisions[0]["reason"].startswith("planned")
    chose = next(d for d in decisions if d["reason"].startswith("chose"))
    rates = chose["rates"]
    assert set(rates) == {"disaggregated", "colocated"} and all(r > 0 for r in rates.values())
    assert chose["placement"] == max(rates, key=rates.get)  # the faster of the two measured
    # the CPU time of each stage's process tree (the rollouts' env shards included), in cores kept busy (a
    # window whose rows all arrived between two looks of the launcher has one snapshot only: no figure)
    busy = [d["busy"] for d in decisions if d["busy"]]
    assert busy and all(0 < b["rollout"] <= 2.2 and 0 < b["actor"] <= 2.2 for b in busy)
    assert any(d["reason"].startswith(("checking", "back to", "chose colocated: now", "chose disaggregated: now"))
               for d in decisions[decisions.index(chose) + 1 :])  # fmt: skip
    # weight_control knows the last word, for `dvla admin status`
    last = decisions[-1]
    assert (status.placement.placement, status.placement.update) == (last["placement"], last["update"])
    assert status.placement.reason == last["reason"]
    # the actor followed its cores when it was moved (its intra-op threads)
    log = (tmp_path / "logs" / "actor.log").read_text()
    assert "now on 1 core(s)" in log  # disaggregated, measured second
    # colocated beside the two rollouts' env shards: one intra-op thread, not a pool spinning on their cores
    assert "now on 2 core(s) beside 2 env process(es): 1 intra-op thread(s)" in log
    # pipeline.num_shards=0 (auto): two rollouts on 2 cores, so one env shard process each
    assert [w.stats.num_shards for w in status.workers if w.role == pb.ROLLOUT] == [1, 1]
    assert plot_placement(tmp_path).exists()
    assert [r["version"] for r in rows] == list(range(1, n + 1))
