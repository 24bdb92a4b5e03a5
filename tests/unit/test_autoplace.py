"""The auto placer against runs whose speed under each placement is known (and changes)."""

from __future__ import annotations

import pytest

from dvla.autoplace import AutoPlacer, actor_cores, cpu_candidates, describe, most_rate


def drive(placer: AutoPlacer, speed, updates: int, steps_per_update: int = 1000):
    """Feed `updates` updates to `placer`; speed(placement, update) is env steps/s under the placement in
    force. Returns the placement in force at each update."""
    wall, steps, seen = 0.0, 0, []
    for u in range(1, updates + 1):
        steps += steps_per_update
        wall += steps_per_update / speed(placer.current, u)
        seen.append(placer.current)
        placer.observe(u, wall, steps)
    return seen


def test_it_measures_every_candidate_then_keeps_the_fastest():
    p = AutoPlacer(["disaggregated", "colocated"], window_updates=3, settle_updates=1, warmup_updates=2)
    seen = drive(p, lambda c, u: {"disaggregated": 500.0, "colocated": 1000.0}[c], 30)
    assert seen[:6] == ["disaggregated"] * 5 + ["colocated"]  # 2 warm-up updates, then a window of 3
    assert p.current == "colocated"
    assert p.rates == pytest.approx({"disaggregated": 500.0, "colocated": 1000.0})
    chose = [d for d in p.decisions if d.reason.startswith("chose")]
    assert chose and chose[0].placement == "colocated" and "disaggregated 500" in chose[0].reason
    assert chose[0].reason.endswith("env steps/s")


def test_a_planned_placement_that_is_fastest_stays_without_a_move():
    p = AutoPlacer(["disaggregated", "colocated"], window_updates=2)
    drive(p, lambda c, u: {"disaggregated": 900.0, "colocated": 600.0}[c], 12)
    assert p.current == "disaggregated"
    verdict = next(d for d in p.decisions if d.reason.startswith("chose"))
    assert verdict.placement == "disaggregated"


def test_it_rechecks_and_follows_a_run_whose_stage_times_drift():
    # the actor's share grows (e.g. contacts make rollouts cheaper per update than training): after update 40
    # the split with an actor core of its own becomes the faster one
    def speed(c, u):
        if u <= 40:
            return {"disaggregated": 500.0, "colocated": 1000.0}[c]
        return {"disaggregated": 1200.0, "colocated": 700.0}[c]

    p = AutoPlacer(["disaggregated", "colocated"], window_updates=2, recheck_windows=3)
    seen = drive(p, speed, 80)
    assert seen[10:40].count("colocated") > 20 and seen[60:].count("disaggregated") > 15
    verdicts = [d for d in p.decisions if d.reason.startswith(("chose", "back to"))]
    assert verdicts[-1].placement == "disaggregated"  # (the run may end in a check of the other)
    assert any(d.reason.startswith("checking disaggregated again") for d in p.decisions)
    assert any(d.reason.startswith("chose disaggregated: now faster") for d in p.decisions)


def test_a_recheck_that_loses_goes_back():
    p = AutoPlacer(["disaggregated", "colocated"], window_updates=2, recheck_windows=2)
    drive(p, lambda c, u: {"disaggregated": 500.0, "colocated": 1000.0}[c], 60)
    assert p.current == "colocated"
    backs = [d.update for d in p.decisions if d.reason.startswith("back to colocated")]
    assert len(backs) >= 2 and backs[1] - backs[0] > 2 * 2 * 2  # checks grow rarer while nothing changes


def test_candidates_and_their_descriptions():
    assert cpu_candidates(1, 1) == ["colocated"]
    assert cpu_candidates(2, 1) == ["colocated", "disaggregated"]
    assert cpu_candidates(8, 1) == ["colocated", "disaggregated", "6:2", "4:4"]
    assert cpu_candidates(8, 2) == ["colocated", "disaggregated", "4:4"]
    assert cpu_candidates(2, 2) == ["colocated", "disaggregated"]  # two actor ranks share their one core
    assert describe("disaggregated", 2, 1) == "actor 1 core, rollouts 1"
    assert describe("4:4", 8, 1) == "actor 4 cores, rollouts 4"
    assert describe("colocated", 2, 1) == "every process on any of 2 cores"
    with pytest.raises(ValueError):
        AutoPlacer([])


def test_a_running_process_tree_moves_to_other_cores_every_thread_and_child():
    import os
    import subprocess
    import sys
    import time

    from dvla.launch import set_tree_affinity

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    code = (
        "import subprocess, sys, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent, child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True), None
    try:
        child = int(parent.stdout.readline())
        time.sleep(0.2)
        moved = set_tree_affinity(parent.pid, {cores[-1]})
        tids = [int(t) for p in (parent.pid, child) for t in os.listdir(f"/proc/{p}/task")]
        assert moved >= 3 and len(tids) >= 3  # main thread, its sleeper thread, the child
        assert all(os.sched_getaffinity(t) == {cores[-1]} for t in tids)
        set_tree_affinity(parent.pid, set(cores))
        assert all(os.sched_getaffinity(t) == set(cores) for t in tids)
    finally:
        parent.kill()
        if child is not None:
            os.kill(child, 9)
        parent.wait()


def test_a_window_far_below_the_best_is_cut_after_one_update():
    # measured on 2 cores (the default preset): colocated 496 env steps/s, disaggregated 220; five updates of
    # the slow split in a 30-update run cost swimlane a fifth of its speed
    p = AutoPlacer(["colocated", "disaggregated"], window_updates=4)
    seen = drive(p, lambda c, u: {"disaggregated": 220.0, "colocated": 496.0}[c], 120)
    assert seen[6:8] == ["disaggregated"] * 2 and seen[8] == "colocated"  # settle + one update, not 1 + 4
    assert seen.count("disaggregated") == 6  # three looks in 120 updates (exploring and two checks), 2 each
    chose = next(d for d in p.decisions if d.reason.startswith("chose"))
    assert chose.placement == "colocated" and "disaggregated cut short after 1 update(s)" in chose.reason


def test_a_close_contender_runs_its_whole_window():
    p = AutoPlacer(["colocated", "disaggregated"], window_updates=4)
    seen = drive(p, lambda c, u: {"disaggregated": 450.0, "colocated": 496.0}[c], 20)
    assert seen[6:11] == ["disaggregated"] * 5  # settle + a whole window: within 70% of the best
    assert not any("cut short" in d.reason for d in p.decisions)
    no_cut = AutoPlacer(["colocated", "disaggregated"], window_updates=4, cut_below=0)
    seen = drive(no_cut, lambda c, u: {"disaggregated": 220.0, "colocated": 496.0}[c], 20)
    assert seen[6:11] == ["disaggregated"] * 5


def drive_cpu(placer: AutoPlacer, speed, cost, updates: int, steps_per_update: int = 1000):
    """drive() with CPU time: cost(update) = (rollout, actor) CPU seconds per env step, whatever the placement."""
    wall, steps, cpu, seen = 0.0, 0, {"rollout": 0.0, "actor": 0.0}, []
    for u in range(1, updates + 1):
        steps += steps_per_update
        wall += steps_per_update / speed(placer.current, u)
        r, a = cost(u)
        cpu = {"rollout": cpu["rollout"] + r * steps_per_update, "actor": cpu["actor"] + a * steps_per_update}
        seen.append(placer.current)
        placer.observe(u, wall, steps, (wall, dict(cpu)))
    return seen


def test_most_rate_bounds_a_split_by_the_cpu_each_stage_used():
    # colocated at 496 env steps/s, the rollouts keeping 1.79 of 2 cores busy and the actor 0.2: a split that
    # leaves the rollouts one core runs at most 496 / 1.79 (measured on this machine: 220-242)
    busy = {"rollout": 1.79, "actor": 0.2}
    assert most_rate("disaggregated", 496.0, busy, 2, 1) == pytest.approx(496 / 1.79)
    assert most_rate("colocated", 496.0, busy, 2, 1) == pytest.approx(496 * 2 / 1.99)
    assert most_rate("6:2", 100.0, {"rollout": 2.0, "actor": 1.0}, 8, 1) == pytest.approx(200.0)  # actor-bound
    assert most_rate("disaggregated", 496.0, {"rollout": 1.79}, 2, 1) is None  # nothing to bound it with
    assert actor_cores("4:4", 8, 1) == 4 and actor_cores("colocated", 8, 1) is None


def test_a_split_that_cannot_reach_the_cut_is_never_run():
    p = AutoPlacer(["colocated", "disaggregated"], window_updates=4, cores=2, num_actors=1)
    seen = drive_cpu(p, lambda c, u: {"disaggregated": 220.0, "colocated": 496.0}[c],
                     lambda u: (1.79 / 496, 0.2 / 496), 120)  # fmt: skip
    assert seen.count("disaggregated") == 0
    chose = next(d for d in p.decisions if d.reason.startswith("chose"))
    assert chose.placement == "colocated" and not chose.switch
    assert "not run: disaggregated (at most 277 env steps/s)" in chose.reason
    assert "rollouts kept 1.8 cores busy, the actor 0.2" in chose.reason
    kept = [d for d in p.decisions if d.reason.startswith("kept colocated")]
    assert len(kept) >= 2 and not any(d.switch for d in kept)  # every check passed without a move
    assert p.most == {"disaggregated": pytest.approx(277, abs=1)}


def test_a_split_within_reach_is_measured_and_a_grown_actor_brings_one_into_reach():
    # balanced: the actor keeps 0.85 cores busy, so a core of its own may pay: it is measured
    p = AutoPlacer(["colocated", "disaggregated"], window_updates=4, cores=2, num_actors=1)
    seen = drive_cpu(p, lambda c, u: {"disaggregated": 247.0, "colocated": 200.0}[c],
                     lambda u: (1.1 / 200, 0.85 / 200), 20)  # fmt: skip
    assert p.current == "disaggregated" and seen.count("disaggregated") >= 5 and not p.most

    # the actor's share grows as the run goes: the split out of reach at first is checked (and wins) later
    def speed(c, u):
        return {"disaggregated": 220.0, "colocated": 496.0}[c] if u <= 30 else {"disaggregated": 400.0,
                                                                                   "colocated": 330.0}[c]  # fmt: skip

    def cost(u):
        return (1.79 / 496, 0.2 / 496) if u <= 30 else (1.0 / 330, 1.0 / 330)

    p = AutoPlacer(["colocated", "disaggregated"], window_updates=2, recheck_windows=3, cores=2, num_actors=1)
    seen = drive_cpu(p, speed, cost, 90)
    assert seen[:30].count("disaggregated") == 0 and seen[60:].count("disaggregated") > 20
    assert any(d.reason.startswith("chose disaggregated: now faster") for d in p.decisions)


def test_the_cpu_time_of_a_process_tree_counts_its_children():
    import os
    import subprocess
    import sys

    from dvla.launch import tree_cpu_s

    burn = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass\\nprint(1, flush=True)\\n"
    code = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen([sys.executable, '-c', '{burn}time.sleep(60)'], stdout=subprocess.PIPE)\n"
        "print(child.pid, flush=True)\n"
        "child.stdout.readline()\n"  # the child has burnt its 0.6 s
        "print('done', flush=True)\n"
        "time.sleep(60)\n"
    )
    parent, child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True), None
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "done"
        assert tree_cpu_s([child]) >= 0.55  # the child's busy loop
        assert tree_cpu_s([parent.pid]) >= 0.55  # the parent, which only waited, counts its child's time
        assert tree_cpu_s([]) == 0.0
    finally:
        parent.kill()
        if child is not None:
            os.kill(child, 9)
        parent.wait()


def test_cores_busy_come_from_the_snapshots_own_clock_even_when_rows_arrive_in_batches():
    # rows read two at a time share one snapshot, taken after the second: busy stays the true 1.5 and 0.5
    p = AutoPlacer(["colocated", "disaggregated"], window_updates=4, warmup_updates=1, cores=2, num_actors=1)
    snap = None
    for u in range(1, 12):
        if u % 2 == 1:  # the launcher reads rows u and u + 1 together, at time u + 1.3
            t = u + 1.3
            snap = (t, {"rollout": 1.5 * t, "actor": 0.5 * t})
        p.observe(u, float(u), 500 * u, snap)
    assert p.busy == pytest.approx({"rollout": 1.5, "actor": 0.5})
    # no snapshot where a window began: it starts from the first one inside it
    q = AutoPlacer(["colocated", "disaggregated"], window_updates=4, warmup_updates=1, cores=2, num_actors=1)
    for u in range(1, 12):
        q.observe(u, float(u), 500 * u, None if u < 4 else (float(u), {"rollout": 1.8 * u, "actor": 0.2 * u}))
    assert q.busy == pytest.approx({"rollout": 1.8, "actor": 0.2})
