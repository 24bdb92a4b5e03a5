"""dvla bench --scaling end to end on a tiny budget: real runs with 1 and 2 rollouts, the model calibrated on
the first, and every output written with finite, positive predictions."""

from __future__ import annotations

import csv
import math

import pytest

from dvla.bench_scaling import run_scaling_bench
from dvla.scaling import GRID_ACTORS, GRID_WORKERS

pytestmark = pytest.mark.slow


def test_scaling_bench_measures_calibrates_and_predicts(tmp_path):
    out = run_scaling_bench(
        [2, 1],
        [
            "policy.mlp.hidden_sizes=[64, 64]",
            "env.num_envs=4",
            "env.max_episode_steps=10",
            "pipeline.num_shards=1",
            "pipeline.num_updates=4",
            "control.port=0",
        ],
        tmp_path,
        preset="smoke",
    )
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    measured = [r for r in rows if r["kind"] == "measured"]
    assert [int(r["workers"]) for r in measured] == [1, 2]
    for r in measured:
        for key in ("throughput", "round_s", "publish_s", "fetch_s", "version_bytes"):
            assert float(r[key]) > 0, key
        for key in ("predicted_throughput", "predicted_steady_throughput", "predicted_delivery_mean_s",
                    "predicted_actor_s", "predicted_round_s"):  # fmt: skip
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (key, value)
    grid = [r for r in rows if r["kind"] == "grid"]
    assert len(grid) == 2 * len(GRID_WORKERS) * len(GRID_ACTORS)  # node cache on and off
    for r in grid:
        for key in ("steady_throughput", "delivery_mean_s", "delivery_max_s"):
            value = float(r[key])
            assert math.isfinite(value) and value > 0, (key, value)
    md = (out / "scaling.md").read_text()
    assert "## Calibration (the 1-rollout run)" in md and "Assumptions:" in md and "| 256 | 8 |" in md
    assert (out / "scaling.png").stat().st_size > 10_000
    assert (out / "workers-1" / "metrics.jsonl").is_file() and (out / "workers-2" / "metrics.jsonl").is_file()
