"""dvla bench --repeat: rounds of runs become one row per mode, with ratios taken within each round."""

from __future__ import annotations

import pytest

from dvla.bench import combine


def run(mode: str, throughput: float, round_: int) -> dict:
    return {"mode": mode, "throughput": throughput, "round": round_}


def test_each_mode_gets_its_median_run_and_the_median_of_its_ratios_within_rounds():
    # the machine is fast in round 2 and slow in round 3: the ratios within a round stay near 1.1
    rounds = [
        [run("sync", 500.0, 1), run("swimlane", 550.0, 1)],
        [run("sync", 700.0, 2), run("swimlane", 780.0, 2)],
        [run("sync", 400.0, 3), run("swimlane", 430.0, 3)],
    ]
    sync, swim = combine(rounds)
    assert (sync["mode"], sync["round"], sync["speedup"]) == ("sync", 1, 1.0)
    assert (swim["round"], swim["throughput"]) == (1, 550.0)  # the median run
    assert swim["speedup"] == pytest.approx(1.1)  # 1.10, 1.11, 1.075: the median
    assert swim["speedup_runs"] == "1.10 / 1.11 / 1.07"
    # across rounds the throughputs alone would say anything from 0.61x (430 / 700) to 1.95x (780 / 400)


def test_two_rounds_give_the_mean_of_their_ratios_and_without_sync_first_there_is_no_ratio():
    sync, swim = combine([[run("sync", 500.0, 1), run("swimlane", 685.0, 1)],
                          [run("sync", 500.0, 2), run("swimlane", 505.0, 2)]])  # fmt: skip
    assert swim["speedup"] == pytest.approx(1.19) and swim["throughput"] == 505.0  # the lower of the middle two
    rows = combine([[run("swimlane", 500.0, 1)], [run("swimlane", 600.0, 2)]])
    assert "speedup" not in rows[0] and rows[0]["throughput"] == 500.0
