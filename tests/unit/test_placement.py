"""Where `dvla run` puts each process: devices and cores by pipeline.placement (dvla/placement.py)."""

from __future__ import annotations

import pytest

from dvla.placement import check_mode, plan, shards_per_worker


def test_colocated_on_cpu_pins_nothing():
    p = plan("colocated", 2, 3, [0, 1], gpus=0)
    assert all(s.cores is None and s.device == "" for s in (*p.actors, p.rollout(0), p.rollout(2)))


def test_disaggregated_on_cpu_gives_each_actor_rank_a_core_of_its_own():
    p = plan("disaggregated", 2, 3, list(range(8)), gpus=0)
    assert [set(s.cores) for s in p.actors] == [{6}, {7}]
    assert set(p.rollout(0).cores) == set(range(6)) and p.rollout(1) == p.rollout(0)


def test_two_cores_keep_one_for_the_rollouts():
    p = plan("disaggregated", 2, 2, [0, 1], gpus=0)
    assert [set(s.cores) for s in p.actors] == [{1}, {1}]  # two ranks share the one actor core
    assert set(p.rollout(0).cores) == {0}
    assert plan("disaggregated", 1, 1, [3], gpus=0).actors[0].cores is None  # one core: nothing to split


@pytest.mark.parametrize("ratio,actor_cores", [("1:1", 8), ("3:1", 4), ("7:1", 2), ("1:3", 12), ("1:100", 15)])
def test_a_ratio_splits_the_cores(ratio, actor_cores):
    p = plan(ratio, 2, 4, list(range(16)), gpus=0)
    mine = set().union(*(s.cores for s in p.actors))
    assert len(mine) == actor_cores and not mine & p.rollout(0).cores
    assert p.actors[0].cores.isdisjoint(p.actors[1].cores)  # each rank its own half


def test_gpus_colocated_one_device_per_actor_rank_rollouts_round_robin():
    p = plan("colocated", 2, 4, [0, 1], gpus=4)
    assert [s.device for s in p.actors] == ["cuda:0", "cuda:1"]
    assert [p.rollout(j).device for j in range(5)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0"]


@pytest.mark.parametrize("ratio,actors,rollouts", [("3:1", ["cuda:6", "cuda:7"], 6), ("1:1", ["cuda:4", "cuda:5"], 4)])
def test_gpus_split_by_ratio(ratio, actors, rollouts):
    p = plan(ratio, 2, 12, [0], gpus=8)
    assert [s.device for s in p.actors] == actors
    assert sorted({p.rollout(j).device for j in range(12)}) == [f"cuda:{g}" for g in range(rollouts)]


def test_never_two_actor_ranks_on_one_gpu():
    with pytest.raises(ValueError, match="num_actors=3 actor ranks need a GPU each.*gives the actors 2 of 8"):
        plan("3:1", 3, 6, [0], gpus=8)
    with pytest.raises(ValueError, match="need a GPU each"):
        plan("colocated", 2, 2, [0], gpus=1)


def test_bad_placements_are_named():
    assert check_mode("3:1") is None and check_mode("auto") is None
    assert "neither colocated" in check_mode("three to one")
    assert "two positive parts" in check_mode("0:1")


def test_bench_layouts_keep_the_global_batch_and_name_what_they_skip(capsys):
    from dvla.bench_groups import layouts

    assert layouts([1, 2], ["1:1", "2:1", "3:1"], 24) == [
        (1, "1:1", 1), (1, "2:1", 2), (1, "3:1", 3), (2, "1:1", 2), (2, "2:1", 4), (2, "3:1", 6),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no layout"):
        layouts([2], ["3:1"], 16)
    assert "skipping K=2 at 3:1" in capsys.readouterr().out
    with pytest.raises(ValueError, match="rollout:actor ratio"):
        layouts([1], ["colocated"], 24)


@pytest.mark.parametrize(
    "cores,workers,envs,group,want",
    [
        (2, 2, 16, 1, 1),  # a core per worker: one shard, no IPC to overlap with
        (2, 1, 16, 1, 2),
        (16, 2, 16, 1, 8),
        (16, 1, 16, 1, 16),
        (6, 1, 16, 1, 4),  # 6 shards do not split 16 envs: the next count that does
        (16, 1, 16, 4, 4),  # whole GRPO groups per shard
        (1, 4, 8, 1, 1),  # fewer cores than workers: still one
    ],
)
def test_auto_shards_take_a_core_each_of_the_workers_share(cores, workers, envs, group, want):
    assert shards_per_worker(cores, workers, envs, group) == want


def test_auto_shards_are_resolved_only_where_shards_run():
    from dvla.config import load_config

    swim = load_config(None, ["pipeline.mode=swimlane"])
    assert swim.pipeline.num_shards == 0  # auto
    assert swim.with_shards_for(2, 2).pipeline.num_shards == 1
    assert swim.with_shards_for(8, 2).pipeline.num_shards == 4
    pinned = load_config(None, ["pipeline.mode=swimlane", "pipeline.num_shards=2"])
    assert pinned.with_shards_for(16, 1).pipeline.num_shards == 2  # a count the user gave stays
    sync = load_config(None, [])
    assert sync.with_shards_for(16, 1) is sync  # envs in-process: nothing to resolve
    with pytest.raises(ValueError, match="workers=0"):
        shards_per_worker(2, 0, 16)


def test_an_actor_beside_busy_physics_processes_leaves_them_their_cores():
    from dvla.placement import actor_threads

    assert actor_threads(2, 2) == 1  # colocated on 2 cores with 2 env processes: no thread pool to spin
    assert actor_threads(16, 4) == 12 and actor_threads(8, 0) == 8  # cores of its own: one thread each
    assert actor_threads(1, 5) == 1
    with pytest.raises(ValueError, match="busy_neighbours"):
        actor_threads(2, -1)
