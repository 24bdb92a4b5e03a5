"""dvla bench end to end on a tiny budget: every output exists and the table is sane."""

from __future__ import annotations

import csv

import pytest

from dvla.bench import run_bench

pytestmark = pytest.mark.slow


def test_bench_writes_table_csv_and_chart(tmp_path):
    out = run_bench(
        ["sync", "swimlane"],
        [
            "policy.mlp.hidden_sizes=[64, 64]",
            "env.num_envs=4",
            "env.max_episode_steps=10",
            "pipeline.num_updates=3",
            "telemetry.exporter=none",
        ],
        tmp_path,
        repeat=2,
    )
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [r["mode"] for r in rows] == ["sync", "swimlane"]
    assert all((out / f"{m}-{k}" / "metrics.jsonl").exists() for m in ("sync", "swimlane") for k in (1, 2))
    assert rows[0]["speedup_runs"] == "1.00 / 1.00" and rows[1]["speedup_runs"].count(" / ") == 1
    runs = list(csv.DictReader(open(out / "bench-runs.csv")))
    assert [(r["mode"], r["round"]) for r in runs] == [
        ("sync", "1"),
        ("swimlane", "1"),
        ("sync", "2"),
        ("swimlane", "2"),
    ]
    for r in rows:
        assert float(r["throughput"]) > 0 and 0 < float(r["efficiency"]) < 5
        assert float(r["staleness_max"]) <= 1
    assert float(rows[0]["speedup"]) == 1.0
    md = (out / "bench.md").read_text()
    assert "| swimlane | auto: colocated |" in md and "Publish stall" in md  # 3 updates: still on the first split
    assert [r["placement"] for r in rows] == ["colocated", "auto: colocated"]
    assert (out / "bench.png").stat().st_size > 10_000


def test_bench_refuses_unknown_modes(tmp_path):
    with pytest.raises(ValueError, match="unknown mode"):
        run_bench(["turbo"], [], tmp_path)
    with pytest.raises(ValueError, match="--repeat must be >= 1"):
        run_bench(["sync"], [], tmp_path, repeat=0)


def test_bench_accepts_a_vla_preset(tmp_path):
    out = run_bench(
        ["sync"],
        [
            "env.num_envs=2",
            "env.max_episode_steps=8",
            "env.image_size=32",
            "pipeline.num_updates=2",
            "pipeline.num_shards=1",
            "telemetry.exporter=none",
        ],
        tmp_path,
        preset="pickcube-vla-tiny",
    )
    rows = list(csv.DictReader(open(out / "bench.csv")))
    assert [r["mode"] for r in rows] == ["sync"] and float(rows[0]["throughput"]) > 0
    md = (out / "bench.md").read_text()
    assert "vla-tiny (discrete head, chunks of 4)" in md and "Publish stall" in md
