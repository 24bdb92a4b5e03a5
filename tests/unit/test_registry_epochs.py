"""The registry's world by epoch: who is a member, which ranks, when a new epoch starts (no server, fake clock)."""

from __future__ import annotations

import pytest

from dvla.control.errors import InvalidArgument, NotFound, OutOfOrder, Superseded
from dvla.control.registry import Membership, Registry
from dvla.types import Acks, EnvSpec

SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def world(n: int, envs: int = 8, shards: int = 2) -> Registry:
    r = Registry(n, heartbeat_s=1.0, clock=Clock())
    r.register("actor", "actor-0", rendezvous_address="h:1")
    for i in range(n):
        r.register("rollout", f"r{i}", env_spec=SPEC, num_envs=envs, num_shards=shards)
    return r


def ranks(r: Registry) -> dict[str, tuple[int, Membership]]:
    return {w.worker_id: (w.rank, w.membership) for w in r.workers()}


def test_the_first_world_fills_its_slots_in_epoch_0():
    r = Registry(2, heartbeat_s=1.0, clock=Clock())
    r.register("actor", "actor-0", rendezvous_address="h:1")
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, num_shards=2)
    assert (r.world_size, r.epoch, r.complete, r.episodes_per_update) == (3, 0, False, 0)
    r.register("rollout", "r1", env_spec=SPEC, num_envs=8, num_shards=2)
    assert (r.world_size, r.epoch, r.complete, r.episodes_per_update) == (3, 0, True, 16)
    assert ranks(r) == {"actor-0": (0, Membership.MEMBER), "r0": (1, Membership.MEMBER), "r1": (2, Membership.MEMBER)}


def test_scaling_down_removes_the_highest_ranks_in_a_new_epoch_and_keeps_the_others_ranks():
    r = world(3)
    leaving, admitted = r.rescale(1)
    assert (leaving, admitted, r.epoch, r.world_size, r.episodes_per_update) == (["r1", "r2"], 0, 1, 2, 8)
    assert ranks(r)["r0"] == (1, Membership.MEMBER) and ranks(r)["r2"] == (-1, Membership.LEAVING)
    r.heartbeat("r2", {"dataplane_epoch": 0}, Acks())  # still winding down
    assert ranks(r)["r2"] == (-1, Membership.LEAVING)
    r.heartbeat("r2", {"dataplane_epoch": -1, "episodes_produced": 24}, Acks(left_dataplane=True))  # for good
    assert ranks(r)["r2"] == (-1, Membership.LEFT)
    assert r.workers()[-1].stats["episodes_produced"] == 24  # a leaver's counters stay


def test_scaling_up_waits_for_the_joiner_then_starts_a_new_epoch():
    r = world(2)
    assert r.rescale(3) == ([], 0)
    assert (r.epoch, r.world_size) == (0, 3)  # nobody to admit yet: the world stays as it is
    w = r.register("rollout", "r9", env_spec=SPEC, num_envs=8, num_shards=2)
    assert (w.rank, w.membership, r.epoch, r.world_size, r.episodes_per_update) == (3, Membership.MEMBER, 1, 4, 24)


def test_a_standby_worker_is_admitted_by_rescale():
    r = world(2)
    w = r.register("rollout", "r9", env_spec=SPEC, num_envs=8, num_shards=2)
    assert (w.rank, w.membership, r.epoch) == (-1, Membership.STANDBY, 0)
    assert r.rescale(3) == ([], 1)
    assert (w.rank, w.membership, r.epoch) == (3, Membership.MEMBER, 1)


def test_rescaling_while_the_first_world_fills_starts_a_new_epoch():
    r = Registry(3, heartbeat_s=1.0, clock=Clock())
    r.register("actor", "actor-0", rendezvous_address="h:1")
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8)
    r.rescale(1)  # those waiting for a world of 4 must re-form as a world of 2
    assert (r.epoch, r.world_size, r.complete) == (1, 2, True)


def test_shard_rescale_changes_the_episodes_per_update():
    r = world(2, envs=8, shards=2)
    r.rescale_shards("r0", 1)
    assert (r.episodes_per_update, r.epoch) == (12, 0)  # live: no new epoch
    r.rescale_shards("r0", 4)
    assert r.episodes_per_update == 24


def test_bad_rescales_name_what_is_wrong():
    r = world(2)
    r.register("rollout", "inproc", env_spec=SPEC, num_envs=8, num_shards=0)
    with pytest.raises(InvalidArgument, match="num_rollouts"):
        r.rescale(0)
    with pytest.raises(NotFound, match="nobody"):
        r.rescale_shards("nobody", 2)
    with pytest.raises(OutOfOrder, match="in-process"):
        r.rescale_shards("inproc", 2)
    with pytest.raises(InvalidArgument, match="num_shards"):
        r.rescale_shards("r0", 0)
    with pytest.raises(InvalidArgument, match="num_shards"):
        r.register("rollout", "odd", env_spec=SPEC, num_envs=7, num_shards=2)


def test_a_restart_keeps_its_place_and_a_leaver_coming_back_joins_afresh():
    r = world(2)
    assert r.register("rollout", "r1", env_spec=SPEC, num_envs=8, num_shards=2).rank == 2
    r.rescale(1)
    r.heartbeat("r1", {"dataplane_epoch": -1}, Acks(left_dataplane=True))
    r.rescale(2)
    w = r.register("rollout", "r1", env_spec=SPEC, num_envs=8, num_shards=2)
    assert (w.rank, w.membership, r.epoch) == (2, Membership.MEMBER, 2)


def test_an_actor_group_holds_the_first_ranks_and_each_actor_its_rollouts_share():
    from dvla.control.errors import AlreadyExists, PermissionDenied
    from dvla.types import World

    r = Registry(3, heartbeat_s=1.0, clock=Clock(), num_actors=2)
    with pytest.raises(InvalidArgument, match="rank 0 must give"):
        r.register("actor", "a", rendezvous_address="")
    a0 = r.register("actor", "a", rendezvous_address="h:1")
    a1 = r.register("actor", "b", rendezvous_address="h:2")  # only rank 0's address counts
    with pytest.raises(AlreadyExists, match="2 actor rank"):
        r.register("actor", "c", rendezvous_address="h:3")
    for i in range(3):
        r.register("rollout", f"r{i}", env_spec=SPEC, num_envs=4)
    assert (a0.rank, a1.rank, r.rendezvous_address, r.world_size, r.complete) == (0, 1, "h:1", 5, True)
    assert [ranks(r)[f"r{i}"][0] for i in range(3)] == [2, 3, 4]
    assert [World(0, rank, 5, actors=2).home() for rank in (2, 3, 4)] == [0, 1, 0]
    assert World(0, 0, 5, actors=2).rollouts_of(0) == [2, 4] and World(0, 1, 5, actors=2).rollouts_of(1) == [3]
    assert (r.episodes_for(a0), r.episodes_for(a1), r.episodes_per_update) == (8, 4, 12)
    r.check_publisher("a")
    with pytest.raises(PermissionDenied, match="rank 0"):
        r.check_publisher("b")
    with pytest.raises(InvalidArgument, match="at least one per actor rank"):
        r.rescale(1)
    with pytest.raises(ValueError, match="num_actors"):
        Registry(1, heartbeat_s=1.0, clock=Clock(), num_actors=2)


def test_a_silent_member_is_evicted_the_others_move_down_a_rank_and_a_new_epoch_forms_without_it():
    r = world(3)
    clock = r._clock
    clock.t = 8.0
    for wid in ("actor-0", "r0", "r2"):
        r.heartbeat(wid, {})
    assert r.sweep() == [] and r.evict_after_s == 10.0  # 10 heartbeats (it shows as dead after 5)
    assert not r.alive(r.workers()[2]) and r.alive(r.workers()[1])
    clock.t = 11.0
    r.heartbeat("r0", {})
    r.heartbeat("r2", {})
    assert [w.worker_id for w in r.sweep()] == ["r1"]
    assert ranks(r) == {
        "actor-0": (0, Membership.MEMBER),
        "r0": (1, Membership.MEMBER),
        "r2": (2, Membership.MEMBER),  # was rank 3
        "r1": (-1, Membership.EVICTED),
    }
    assert (r.epoch, r.world_size, r.episodes_per_update, r.lost()) == (1, 3, 16, [(0, 2)])
    assert r.drain_events() == ["evicted rollout 'r1' (no heartbeat for 11.0 s); data-plane epoch 1 forms without it"]
    assert r.drain_events() == []
    # the same worker restarted: a new incarnation takes the free slot in the next epoch; the old one is kept
    w = r.register("rollout", "r1", env_spec=SPEC, num_envs=8, num_shards=2)
    assert (w.rank, w.membership, r.epoch, r.world_size) == (3, Membership.MEMBER, 2, 4)
    assert [x.membership for x in r.incarnations() if x.worker_id == "r1"] == [Membership.MEMBER, Membership.EVICTED]
    assert r.lost() == [(0, 2)]  # rank 2 of epoch 0 stays lost; epoch 2's members are all alive


def test_a_new_process_under_a_members_id_evicts_the_old_one_at_once():
    r = Registry(2, heartbeat_s=1.0, clock=Clock())
    r.register("actor", "actor-0", rendezvous_address="h:1")
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=1)
    r.register("rollout", "r1", env_spec=SPEC, num_envs=8, worker_key=2)
    assert r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=1).rank == 1  # the same process: kept
    assert r.epoch == 0
    w = r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=3)  # restarted: a new key
    assert (w.rank, w.worker_key, r.epoch) == (2, 3, 2)  # evicted (epoch 1), re-admitted last (epoch 2)
    assert ranks(r)["r1"] == (1, Membership.MEMBER) and r.lost() == [(0, 1)]


def test_a_member_lost_while_the_first_world_fills_leaves_a_slot_for_a_newcomer():
    r = Registry(2, heartbeat_s=1.0, clock=Clock(), evict_after_s=3.0)
    r.register("actor", "actor-0", rendezvous_address="h:1")
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8)
    r._clock.t = 3.0
    r.heartbeat("actor-0", {})
    assert [w.worker_id for w in r.sweep()] == ["r0"]
    assert (r.epoch, r.world_size, r.complete) == (1, 3, False)  # a fresh rendezvous for the same first world
    r.register("rollout", "r5", env_spec=SPEC, num_envs=8)
    r.register("rollout", "r6", env_spec=SPEC, num_envs=8)
    assert (r.epoch, r.complete, ranks(r)["r6"]) == (1, True, (2, Membership.MEMBER))


def test_a_new_process_under_actor_rank_0s_id_is_a_new_incarnation_around_its_new_store():
    r = Registry(2, heartbeat_s=1.0, clock=Clock())
    old = r.register("actor", "actor-0", rendezvous_address="h:1", worker_key=5)
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=1)
    r.register("rollout", "r1", env_spec=SPEC, num_envs=8, worker_key=2)
    r.heartbeat("actor-0", {"episodes_trained": 8})
    assert (r.epoch, r.actor_incarnation, r.complete, r.retired_actors(), r.drain_events()) == (0, 0, True, [], [])
    r._clock.t = 3.0
    w = r.register("actor", "actor-0", rendezvous_address="h:2", worker_key=6)  # the old process died
    assert w is not old and (w.rank, w.worker_key, w.membership, w.last_seen) == (0, 6, Membership.MEMBER, 3.0)
    assert (r.actor_incarnation, r.epoch, r.rendezvous_address, r.complete) == (1, 1, "h:2", True)
    assert r.actor() is w and r.find("actor-0") is w and w.stats == {}
    assert [x is old for x in r.retired_actors()] == [True] and old.membership == Membership.LEFT
    assert old.stats == {"episodes_trained": 8}  # its counters stay, for the totals
    assert sum(x is old for x in r.incarnations()) == 1 and sum(x is w for x in r.incarnations()) == 1
    assert ranks(r) == {"actor-0": (0, Membership.MEMBER), "r0": (1, Membership.MEMBER), "r1": (2, Membership.MEMBER)}
    assert (r.world_size, r.episodes_per_update, r.lost()) == (3, 16, [])  # the rollouts lost nothing
    events = r.drain_events()
    assert len(events) == 1 and "actor rank 0 ('actor-0') started afresh (incarnation 1)" in events[0]
    assert "epoch 1" in events[0]
    r.check_publisher("actor-0")  # the new process publishes
    # once more: incarnations count on
    r.register("actor", "actor-0", rendezvous_address="h:3", worker_key=7)
    assert (r.actor_incarnation, r.epoch, r.rendezvous_address, len(r.retired_actors())) == (2, 2, "h:3", 2)


def test_a_heartbeat_from_a_replaced_process_is_refused_and_changes_nothing():
    """A process cut off and replaced (same id, new key) that comes back must not overwrite the new one's
    counters: its heartbeat is refused, so it learns it is out of the run."""
    r = Registry(1, heartbeat_s=1.0, clock=Clock())
    r.register("actor", "actor-0", rendezvous_address="h:1", worker_key=5)
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=1)
    new = r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=2)  # the old r0 was cut off
    r.heartbeat("r0", {"episodes_produced": 3}, worker_key=2)
    with pytest.raises(Superseded, match="registered again by another process"):
        r.heartbeat("r0", {"episodes_produced": 40}, worker_key=1)
    r.register("actor", "actor-0", rendezvous_address="h:2", worker_key=6)
    with pytest.raises(Superseded):
        r.heartbeat("actor-0", {"episodes_trained": 99}, worker_key=5)
    assert new.stats == {"episodes_produced": 3} and r.actor().stats == {}
    r.heartbeat("r0", {"episodes_produced": 4})  # a client that sends no key (an older one) is taken at its word
    assert new.stats == {"episodes_produced": 4}


def test_the_same_actor_process_registering_again_is_no_new_incarnation():
    r = Registry(1, heartbeat_s=1.0, clock=Clock())
    a = r.register("actor", "actor-0", rendezvous_address="h:1", worker_key=5)
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=1)
    r.drain_events()
    for key in (5, 0):  # a retry; a register that gives no key is never taken for a new process
        assert r.register("actor", "actor-0", rendezvous_address="h:1", worker_key=key) is a
        assert (r.actor_incarnation, r.epoch, r.retired_actors(), r.drain_events()) == (0, 0, [], [])
    assert a.worker_key == 5 and a.membership == Membership.MEMBER
    # an actor registered without a key (an older client) is not replaced by one that gives a key
    r2 = Registry(1, heartbeat_s=1.0, clock=Clock())
    b = r2.register("actor", "actor-0", rendezvous_address="h:1")
    assert r2.register("actor", "actor-0", rendezvous_address="h:1", worker_key=9) is b
    assert (r2.actor_incarnation, r2.epoch, b.worker_key) == (0, 0, 9)


def test_a_new_actor_rank_0_without_a_rendezvous_address_is_refused_and_changes_nothing():
    r = Registry(1, heartbeat_s=1.0, clock=Clock())
    a = r.register("actor", "actor-0", rendezvous_address="h:1", worker_key=5)
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, worker_key=1)
    with pytest.raises(InvalidArgument, match="rank 0 must give its data-plane rendezvous_address"):
        r.register("actor", "actor-0", worker_key=6)
    assert (r.actor_incarnation, r.epoch, r.rendezvous_address, r.retired_actors()) == (0, 0, "h:1", [])
    assert r.actor() is a and a.membership == Membership.MEMBER and a.worker_key == 5 and r.drain_events() == []


def test_a_new_process_under_actor_rank_1s_id_reforms_the_world_but_rewinds_no_versions():
    r = Registry(2, heartbeat_s=1.0, clock=Clock(), num_actors=2)
    r.register("actor", "a", rendezvous_address="h:1", worker_key=5)
    old = r.register("actor", "b", worker_key=6)
    r.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=1)
    r.register("rollout", "r1", env_spec=SPEC, num_envs=4, worker_key=2)
    w = r.register("actor", "b", worker_key=7)  # rank 1 needs no rendezvous address
    assert (w.rank, r.epoch, r.actor_incarnation, r.rendezvous_address) == (1, 1, 0, "h:1")
    assert [x is old for x in r.retired_actors()] == [True] and [x.worker_id for x in r.actors()] == ["a", "b"]
    assert [ranks(r)[x][0] for x in ("a", "b", "r0", "r1")] == [0, 1, 2, 3]


def test_a_restarted_registry_numbers_its_world_after_the_epoch_the_workers_were_in():
    r = Registry(2, heartbeat_s=1.0, clock=Clock())  # weight_control started again: it knows nobody
    r.register("rollout", "r1", env_spec=SPEC, num_envs=8, num_shards=2, worker_key=11, next_epoch=7)
    assert r.epoch == 7 and "re-forms at epoch 7" in r.drain_events()[0]
    r.register("actor", "actor-0", rendezvous_address="h:1", worker_key=1, next_epoch=7)
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, num_shards=2, worker_key=10, next_epoch=6)  # an older one
    assert (r.epoch, r.complete, r.world_size, r.actor_incarnation) == (7, True, 3, 0)  # one world, no new actor
    assert ranks(r) == {"actor-0": (0, Membership.MEMBER), "r1": (1, Membership.MEMBER), "r0": (2, Membership.MEMBER)}
    r.register("rollout", "r0", env_spec=SPEC, num_envs=8, num_shards=2, worker_key=10)  # a first registration
    assert r.epoch == 7


def test_a_rank_whose_connection_broke_is_evicted_at_once_and_only_its_own_worker():
    r = world(3)
    assert r.evict_broken([(0, 2)]) == [r._workers["r1"]]  # epoch 0, rank 2: r1, long before any deadline
    assert ranks(r)["r1"] == (-1, Membership.EVICTED) and ranks(r)["r2"] == (2, Membership.MEMBER)
    assert r.epoch == 1 and r.lost() == [(0, 2)]
    assert "the actor's connection to its rank 2 of data-plane epoch 0 broke" in r.drain_events()[0]
    assert r.evict_broken([(0, 2)]) == [] and r.epoch == 1  # the next heartbeats repeat it: nothing more
    r.register("rollout", "r1", env_spec=SPEC, num_envs=8, num_shards=2, worker_key=9)  # a new process, rank 3
    assert r.evict_broken([(0, 2), (1, 2)]) == [r._workers["r2"]]  # epoch 1's rank 2 is r2 (moved down)
    assert ranks(r)["r1"] == (2, Membership.MEMBER)  # the new r1 is another worker: (0, 2) was the old one's
    assert r.evict_broken([(7, 1), (0, 9), (0, 0)]) == []  # an epoch not remembered, no such rank, an actor rank
