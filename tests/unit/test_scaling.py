"""The scaling model (dvla/scaling.py): properties its predictions must have, each one that a wrong model breaks."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from dvla.scaling import (
    GBIT,
    GRID_ACTORS,
    GRID_WORKERS,
    Calibration,
    Cluster,
    Stage,
    allreduce_time,
    assumptions,
    grid,
    publish_time,
    simulate,
    transfer_time,
)

# A rollout does 100 env steps per second on its core; one actor rank trains 1000 env steps per second,
# so one actor keeps up with 10 rollouts. A small model: the weight plane costs milliseconds.
CAL = Calibration(
    round_s=1.0,
    env_steps_per_round=100.0,
    actor_s_per_env_step=1e-3,
    optimizer_steps_per_update=4,
    version_bytes=1e6,
    grad_bytes=1e6,
    trajectory_bytes_per_step=200.0,
    publish_s=0.01,
    fetch_s=0.005,
    load_s=0.002,
    announce_s=0.001,
)
CLUSTER = Cluster(cores_per_node=8, rollouts_per_node=8)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


def test_throughput_grows_with_the_rollouts_then_saturates_at_the_actor_rate():
    for m in (1, 2, 4, 8):  # rollouts bound: each adds its 100 env steps/s
        p = simulate(CAL, CLUSTER, m)
        assert p.bound == Stage.ROLLOUTS
        assert rel(p.steady_throughput, 100.0 * m) < 0.01, (m, p.steady_throughput)
    for m in (32, 64, 256):  # the batch grows with the rollouts, and so does the actor's update
        p = simulate(CAL, CLUSTER, m)
        assert p.bound == Stage.ACTOR
        assert rel(p.steady_throughput, 1000.0) < 0.01, (m, p.steady_throughput)
        assert p.actor_busy_fraction > 0.95 and p.rollout_stall_fraction > 0.5


def test_the_steady_rate_is_the_slowest_stage_while_rollouts_or_actor_bound():
    for p in grid(CAL, CLUSTER) + grid(CAL, replace(CLUSTER, node_cache=False)):
        if p.bound in (Stage.ROLLOUTS, Stage.ACTOR):
            slowest = max(p.round_s, p.actor_s)
            assert rel(p.steady_throughput, p.env_steps_per_update / slowest) < 0.01, p
        assert p.steady_throughput <= p.env_steps_per_update / max(p.round_s, p.actor_s, p.ingress_s) * 1.001


def test_lockstep_update_costs_rollout_plus_delivery_plus_actor():
    p = simulate(CAL, CLUSTER, 4, max_staleness=0)
    cycle = p.round_s + p.ingress_s + p.actor_s + p.weights_s
    assert rel(p.steady_throughput, p.env_steps_per_update / cycle) < 1e-9
    assert p.bound == Stage.LOCKSTEP
    assert p.staleness_mean == 0  # every round ran the version the actor then trained with
    assert p.rollout_stall_fraction > 0 and p.actor_busy_fraction < 1
    assert p.weights_s == pytest.approx(
        publish_time(CAL, CLUSTER) + CAL.announce_s + transfer_time(CAL, CLUSTER, 4) + CAL.load_s
    )
    assert rel(p.delivery_mean_s, p.weights_s) < 1e-9  # nothing queues in lockstep


def test_overlap_with_eta_one_beats_lockstep_and_costs_about_a_version_of_staleness():
    lockstep, overlapped = simulate(CAL, CLUSTER, 8, max_staleness=0), simulate(CAL, CLUSTER, 8, max_staleness=1)
    assert overlapped.steady_throughput > 1.5 * lockstep.steady_throughput
    assert 0.5 < overlapped.staleness_mean <= 1.0


def test_delivery_without_node_cache_grows_with_the_rollouts_and_with_it_with_the_nodes():
    big = replace(CAL, version_bytes=1e9, round_s=1e4)  # 1 GB versions; rounds slow enough that none queue
    server = Cluster(rollouts_per_node=8, nic_bytes_per_s=100e9, server_egress_bytes_per_s=1e9)
    for cache, per_worker in ((False, 1.0), (True, 1.0 / 8)):
        cluster = replace(server, node_cache=cache)
        ts = {m: transfer_time(big, cluster, m) for m in (32, 64, 128, 256)}
        for m in (64, 128, 256):  # egress-bound: a fetch per rollout, or one per node of 8
            assert rel(ts[m] - ts[m // 2], m / 2 * per_worker) < 1e-9, (cache, m, ts)
        p = simulate(big, cluster, 64, num_updates=4)
        fixed = publish_time(big, cluster) + big.announce_s + big.load_s
        assert rel(p.delivery_mean_s - fixed, ts[64]) < 1e-9 and p.delivery_max_s == pytest.approx(p.delivery_mean_s)
    direct = transfer_time(big, replace(server, node_cache=False), 256)
    assert transfer_time(big, replace(server, node_cache=True), 256) < direct / 7


def test_a_node_link_binds_when_it_is_slower_than_the_server_share():
    cal = replace(CAL, version_bytes=1e9)
    slow_nic = Cluster(rollouts_per_node=8, nic_bytes_per_s=1e9, server_egress_bytes_per_s=100e9, node_cache=False)
    assert transfer_time(cal, slow_nic, 16) == pytest.approx(8.0)  # 8 rollouts' fetches through one 1 GB/s link
    assert transfer_time(cal, replace(slow_nic, node_cache=True), 16) == pytest.approx(1.0 + 1e9 / 1.6e9)


def test_a_slow_weight_plane_stalls_the_rollouts_and_a_larger_eta_skips_versions_to_hide_it():
    slow = replace(CAL, version_bytes=1e9)  # 1 GB to 64 rollouts through 1 GB/s: a minute per version
    cluster = Cluster(server_egress_bytes_per_s=1e9, node_cache=False)
    p, fast = simulate(slow, cluster, 64), simulate(CAL, cluster, 64)
    assert p.bound == Stage.WEIGHT_PLANE and fast.bound == Stage.ACTOR
    assert p.steady_throughput < 0.2 * fast.steady_throughput and p.rollout_stall_fraction > 0.9
    assert p.delivery_max_s > transfer_time(slow, cluster, 64) + 30  # each version waits for the one travelling
    assert p.versions_skipped == 0  # with eta=1 the actor cannot get ahead of the weight plane
    loose = simulate(slow, cluster, 64, max_staleness=4)
    assert loose.versions_skipped > 0 and loose.steady_throughput > 2 * p.steady_throughput


def test_more_actors_help_only_while_the_actor_binds():
    rollout_bound = [simulate(CAL, CLUSTER, 4, k).steady_throughput for k in (1, 2, 4)]
    assert max(rollout_bound) / min(rollout_bound) < 1.01
    actor_bound = {k: simulate(CAL, CLUSTER, 64, k).steady_throughput for k in (1, 2, 4)}
    assert actor_bound[2] > 1.9 * actor_bound[1] and actor_bound[4] > 1.9 * actor_bound[2]


def test_all_reduce_keeps_eight_actors_on_a_big_model_below_eight_times_one():
    big = replace(CAL, grad_bytes=4e9, version_bytes=2e9, optimizer_steps_per_update=16)  # ~1B parameters
    # e.g. NVLink between the ranks, and a weight plane fast enough not to bind
    fast_ring = replace(CLUSTER, allreduce_bytes_per_s=100e9, nic_bytes_per_s=100e9, server_egress_bytes_per_s=1e12)
    one, eight = simulate(big, fast_ring, 256, 1), simulate(big, fast_ring, 256, 8)
    assert one.bound == eight.bound == Stage.ACTOR
    ring = 16 * allreduce_time(fast_ring, 4e9, 8)
    assert ring == pytest.approx(16 * (2 * 7 / 8 * 4e9 / 100e9 + 14 * 20e-6))
    assert eight.actor_s == pytest.approx(one.actor_s / 8 + ring + 7 / 8 * 2e9 / 100e9)
    assert 2 < eight.steady_throughput / one.steady_throughput < 0.8 * 8
    # over 25 Gb/s Ethernet the ring costs more than seven ranks save
    ethernet = replace(fast_ring, allreduce_bytes_per_s=25 * GBIT)
    assert simulate(big, ethernet, 256, 8).steady_throughput < simulate(big, ethernet, 256, 1).steady_throughput
    assert allreduce_time(CLUSTER, 4e9, 1) == 0


def test_rollouts_beyond_the_cores_run_at_their_share_as_calibrated():
    crowded = Cluster(cores_per_node=2, rollouts_per_node=4)
    cal = replace(CAL, share_efficiency=0.8)
    assert simulate(cal, replace(crowded, rollouts_per_node=2), 4).round_s == pytest.approx(1.0)
    p = simulate(cal, crowded, 4)
    assert p.round_s == pytest.approx(1.0 * 4 / 2 / 0.8)
    assert rel(p.steady_throughput, 4 * 100 / 2.5) < 0.01  # four rollouts do 1.6 rollouts' work
    assert simulate(cal, crowded, 6).round_s == pytest.approx(2.5)  # the last node's 2 rollouts have a core each
    # a rollout alone that leaves part of its core idle (efficiency 1.5): three on two cores lose nothing, four do
    roomy = replace(CAL, share_efficiency=1.5)
    assert simulate(roomy, replace(crowded, rollouts_per_node=3), 3).round_s == pytest.approx(1.0)
    assert simulate(roomy, crowded, 4).round_s == pytest.approx(4 / 2 / 1.5)


def test_the_actors_fixed_part_is_paid_by_every_rank_and_caps_what_more_ranks_buy():
    fixed = replace(CAL, actor_fixed_s=2.0)
    one, four = simulate(fixed, CLUSTER, 64, 1), simulate(fixed, CLUSTER, 64, 4)
    assert one.actor_s == pytest.approx(2.0 + 6.4)
    ring, gather = 4 * allreduce_time(CLUSTER, 1e6, 4), 3 / 4 * 1e6 / (25 * GBIT)
    assert four.actor_s == pytest.approx(2.0 + 6.4 / 4 + ring + gather)
    assert rel(four.steady_throughput / one.steady_throughput, one.actor_s / four.actor_s) < 0.01


def test_the_grid_is_every_pair_deterministic_and_quick():
    t = time.perf_counter()
    a = grid(CAL, Cluster()) + grid(CAL, Cluster(node_cache=False))
    assert time.perf_counter() - t < 5.0
    assert [(p.workers, p.actors) for p in a[: len(a) // 2]] == [(m, k) for m in GRID_WORKERS for k in GRID_ACTORS]
    assert a == grid(CAL, Cluster()) + grid(CAL, Cluster(node_cache=False))
    for p in a:
        assert p.throughput > 0 and p.delivery_max_s >= p.delivery_mean_s > 0 and p.staleness_mean >= 0
    assert len(assumptions(CAL, Cluster())) >= 5


@pytest.mark.parametrize(
    "change, field",
    [
        ({"round_s": 0.0}, "round_s"),
        ({"actor_s_per_env_step": -1.0}, "actor_s_per_env_step"),
        ({"version_bytes": 0}, "version_bytes"),
        ({"fetch_s": float("nan")}, "fetch_s"),
        ({"announce_s": -0.1}, "announce_s"),
        ({"share_efficiency": 0.0}, "share_efficiency"),
        ({"actor_fixed_s": -0.5}, "actor_fixed_s"),
        ({"optimizer_steps_per_update": 0}, "optimizer_steps_per_update"),
    ],
)
def test_bad_calibration_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"Calibration.{field}"):
        simulate(replace(CAL, **change), CLUSTER, 8)


@pytest.mark.parametrize(
    "change, field",
    [({"cores_per_node": 0}, "cores_per_node"), ({"server_egress_bytes_per_s": 0.0}, "server_egress_bytes_per_s"),
     ({"allreduce_latency_s": -1e-6}, "allreduce_latency_s")],
)  # fmt: skip
def test_bad_cluster_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"Cluster.{field}"):
        simulate(CAL, replace(CLUSTER, **change), 8)


def test_bad_run_shape_names_the_argument():
    with pytest.raises(ValueError, match="workers must be >= 1"):
        simulate(CAL, CLUSTER, 0)
    with pytest.raises(ValueError, match="actors must be in"):
        simulate(CAL, CLUSTER, 4, actors=8)
    with pytest.raises(ValueError, match="max_staleness"):
        simulate(CAL, CLUSTER, 4, max_staleness=-1)
    with pytest.raises(ValueError, match="num_updates"):
        simulate(CAL, CLUSTER, 4, num_updates=0)
