"""dvla run's restart backoff: a crash loop waits longer each time, a process that had run fine does not."""

from __future__ import annotations

import subprocess
import sys
import time

from dvla.config import load_config
from dvla.launch import STABLE_S, Child, Launcher


def test_a_process_that_ran_fine_is_started_again_after_a_second_and_a_crash_loop_backs_off(tmp_path, capsys):
    launcher = Launcher(load_config(None, ["telemetry.exporter=none"]), tmp_path)
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    proc.wait()
    child = Child("rollout-0", proc, tmp_path / "logs" / "rollout-0.log")

    def delay(ran_s: float) -> float:
        child.started = time.monotonic() - ran_s
        launcher._plan_restart(child, 1)
        return round(launcher._due.pop("rollout-0") - time.monotonic())

    assert [delay(1.0) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]  # dying within seconds, again and again
    assert delay(STABLE_S + 1) == 1 and child.quick_deaths == 0  # it had run for a while: a new failure
    assert delay(1.0) == 1 and delay(1.0) == 2
    assert "starting it again in 2 s" in capsys.readouterr().err


def test_an_actor_is_told_the_env_processes_beside_it_and_told_afresh_when_restarted_elsewhere(tmp_path):
    from dvla.placement import Slot

    overrides = ["telemetry.exporter=none", "pipeline.num_rollout_workers=2", "pipeline.num_shards=2"]
    swim = Launcher(load_config(None, [*overrides, "pipeline.mode=swimlane"]), tmp_path / "a")
    assert swim._physics_beside(Slot()) == 4  # colocated: 2 rollouts x 2 env shards share its cores
    assert swim._physics_beside(Slot(cores=frozenset({1}))) == 0  # cores of its own
    argv = ("services.actor", "--busy-neighbours", "4", "--worker-id", "actor-0")
    assert swim._actor_argv(argv, Slot(cores=frozenset({1})))[2] == "0"  # auto had moved it onto a split
    assert swim._actor_argv(argv, Slot())[2] == "4"
    sync = Launcher(load_config(None, [*overrides, "pipeline.mode=sync"]), tmp_path / "b")
    assert sync._physics_beside(Slot()) == 0  # lockstep: it trains while the rollouts wait
    train_async = Launcher(load_config(None, [*overrides, "pipeline.mode=train_async"]), tmp_path / "c")
    assert train_async._physics_beside(Slot()) == 2  # no shard processes: each rollout steps its own envs
