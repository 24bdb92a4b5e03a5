"""Traces and metrics of a real run: one trace leads from each rollout round to the actor step that trained it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dvla.config import load_config
from dvla.launch import Launcher

pytestmark = pytest.mark.slow


def read(folder: Path, metrics: bool) -> list[dict]:
    files = [f for f in folder.glob("*.jsonl") if f.name.endswith(".metrics.jsonl") == metrics]
    return [json.loads(line) for f in files for line in f.read_text().splitlines()]


def test_rollout_rounds_and_training_share_traces_and_every_service_exports_metrics(tmp_path: Path):
    cfg = load_config(
        None,
        [
            "pipeline.mode=swimlane",
            "env.num_envs=4",
            "env.max_episode_steps=10",
            "pipeline.num_rollout_workers=1",
            "pipeline.num_shards=2",
            "pipeline.num_updates=4",
            "control.port=0",
            "control.heartbeat_s=0.2",
            "telemetry.exporter=json",
            "telemetry.metrics_interval_s=0.5",
        ],
    )
    launcher = Launcher(cfg, tmp_path, progress="off")
    try:
        launcher.start()
        assert launcher.wait() == 0, "\n".join(c.tail() for c in launcher.children)
    finally:
        launcher.stop_all()
    spans = read(tmp_path / "traces", metrics=False)
    rounds = {s["span_id"]: s for s in spans if s["name"] == "sampling.round"}
    trained = [s for s in spans if s["name"] == "training.micro_batch"]
    assert rounds and len(trained) >= 4
    for s in trained:  # every batch trained on is a child of the round that sampled it, in the same trace
        parent = rounds[s["parent_span_id"]]
        assert parent["trace_id"] == s["trace_id"] and parent["service"].startswith("rollout")
    steps = [s for s in spans if s["name"] == "training.optimizer_step"]
    linked = {link["span_id"] for s in steps for link in s["links"]}
    assert {s["parent_span_id"] for s in trained} <= linked  # each step links to the rounds it trained on

    points = read(tmp_path / "traces", metrics=True)
    by_service = {}
    for p in points:
        by_service.setdefault(p["service"].split("-")[0], set()).add(p["name"])
    assert {"dvla.throughput", "dvla.lane.busy_fraction", "dvla.episodes"} <= by_service["actor"]
    assert {"dvla.staleness.mean", "dvla.queue.depth"} <= by_service["actor"]
    assert {"dvla.throughput", "dvla.queue.depth", "dvla.lane.busy_fraction"} <= by_service["rollout"]
    assert {"dvla.control.versions_held", "dvla.control.workers_alive"} <= by_service["weight_control"]
    trained_total = max(
        p["value"] for p in points if p["name"] == "dvla.episodes" and p["attributes"].get("kind") == "trained"
    )
    assert trained_total == 4 * 4  # the last export holds the final count: 4 updates x 4 episodes
