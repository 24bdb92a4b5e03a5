"""RunControl: the run's state, pause and resume, checkpoint requests, rescaling and totals (no server, fake clock)."""

from __future__ import annotations

import hashlib
import json

import pytest

from dvla.control.errors import InvalidArgument, NotFound, OutOfOrder
from dvla.control.registry import Membership, Registry, Role
from dvla.control.run import RunControl, RunState
from dvla.control.store import VersionStore
from dvla.types import Acks, EnvSpec, SenderCounts
from dvla.weights import Manifest, TensorEntry

SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)


class Clock:
    t = 0.0

    def __call__(self) -> float:
        return self.t


def make_run(num_rollouts: int = 1) -> tuple[RunControl, Clock]:
    clock = Clock()
    store = VersionStore(keep=2, max_version_bytes=1 << 20, clock_ns=lambda: int(clock.t * 1e9))
    return RunControl(store, Registry(num_rollouts, heartbeat_s=1.0, clock=clock), clock=clock), clock


def with_workers(num_rollouts: int = 1, envs: int = 8, shards: int = 2) -> RunControl:
    run, _ = make_run(num_rollouts)
    run.registry.register("actor", "actor-0", rendezvous_address="h:1")
    for i in range(num_rollouts):
        run.registry.register("rollout", f"r{i}", env_spec=SPEC, num_envs=envs, num_shards=shards)
    return run


def publish(run: RunControl, version: int, final: bool = False) -> None:
    data = bytes([version % 256]) * 16
    manifest = Manifest((TensorEntry("w", "float32", (4,), 0, 16),), 16, hashlib.sha256(data).hexdigest())
    upload = run.store.begin(version, manifest, final, "actor-0")
    upload.write(0, data)
    run.store.commit(upload)


def test_state_goes_from_starting_to_running_to_finished_and_pause_shows_in_between():
    run = with_workers()
    assert run.state == RunState.STARTING == "starting"
    assert run.set_paused(True) and run.state == RunState.PAUSED
    publish(run, 0)
    assert run.state == RunState.PAUSED  # paused wins over running
    assert run.set_paused(False) and run.state == RunState.RUNNING == "running"
    publish(run, 1, final=True)
    assert run.state == RunState.FINISHED


def test_pause_and_resume_are_idempotent_and_refused_once_finished():
    run = with_workers()
    assert run.set_paused(True) is True
    assert run.set_paused(True) is False  # nothing changed: no need to wake anyone
    assert run.set_paused(False) is True
    assert run.set_paused(False) is False
    run.paused = True
    publish(run, 0, final=True)
    assert run.state == RunState.FINISHED  # a final version ends a paused run too
    for paused in (True, False):
        with pytest.raises(OutOfOrder, match="the run has finished: there is nothing to pause or resume"):
            run.set_paused(paused)


def test_uptime_reads_the_injected_clock():
    run, clock = make_run()
    clock.t = 12.5
    assert run.uptime_s == 12.5


def test_a_checkpoint_needs_an_actor_and_a_live_run():
    run, _ = make_run()
    with pytest.raises(OutOfOrder, match="no actor is registered: there is nothing to checkpoint"):
        run.request_checkpoint()
    run.registry.register("actor", "actor-0", rendezvous_address="h:1")
    for bad in (-1.0, 86401.0, float("nan")):
        with pytest.raises(InvalidArgument, match="timeout_s must be in"):
            run.request_checkpoint(bad)
    assert run.checkpoint_request == 0  # a refused request changes nothing
    publish(run, 0, final=True)
    with pytest.raises(OutOfOrder, match="the run has finished: there is nothing to checkpoint"):
        run.request_checkpoint()


def test_checkpoint_requests_are_numbered_and_acknowledged_by_the_actors_heartbeat():
    run = with_workers()
    assert (run.request_checkpoint(), run.request_checkpoint(60.0)) == (1, 2)
    actor, rollout = run.registry.actor(), run.registry.workers()[1]
    assert (run.checkpoint_request_for(actor), run.checkpoint_request_for(rollout)) == (2, 0)
    assert not run.checkpoint_written(1) and run.checkpoint_result() == (-1, "")

    w, acked = run.on_heartbeat("r0", {}, Acks(checkpoint_request_done=2))  # only the actor's report counts
    assert (w.role, acked, run.checkpoint_done) == (Role.ROLLOUT, False, 0)
    w, acked = run.on_heartbeat("actor-0", {}, Acks(checkpoint_request_done=0))
    assert (w, acked) == (actor, False)
    w, acked = run.on_heartbeat(
        "actor-0", {}, Acks(checkpoint_request_done=1, checkpoint_version=7, checkpoint_path="/ckpt/7")
    )
    assert acked and run.checkpoint_done == 1
    assert run.checkpoint_written(1) and not run.checkpoint_written(2)
    assert run.checkpoint_result() == (7, "/ckpt/7")
    _, acked = run.on_heartbeat("actor-0", {}, Acks(checkpoint_request_done=1))
    assert not acked  # the same report again wakes nobody
    _, acked = run.on_heartbeat("actor-0", {}, Acks(checkpoint_request_done=2, checkpoint_version=9))
    assert acked and run.checkpoint_written(2) and run.checkpoint_result() == (9, "")


def test_a_restarted_weight_control_numbers_checkpoint_requests_on_from_the_actors_last():
    """The actor writes a checkpoint only for a request newer than the last it did: a weight_control started
    again (counting from 0) learns that number from the actor's first heartbeat and counts on from it."""
    run = with_workers()  # knows nothing of requests 1..4, which the actor has written
    _, acked = run.on_heartbeat("actor-0", {}, Acks(checkpoint_request_done=4, checkpoint_version=20))
    assert run.checkpoint_request_for(run.registry.actor()) == 4  # nothing new to write
    assert run.request_checkpoint() == 5 and not run.checkpoint_written(5)
    _, acked = run.on_heartbeat("actor-0", {}, Acks(checkpoint_request_done=5, checkpoint_version=23))
    assert acked and run.checkpoint_written(5) and run.checkpoint_result() == (23, "")


def test_a_heartbeat_from_an_unknown_worker_is_refused():
    run, _ = make_run()
    with pytest.raises(NotFound):
        run.on_heartbeat("nobody", {})


@pytest.mark.parametrize(
    "num_rollouts,worker_id,num_shards,message",
    [
        (-1, "", 0, "must be >= 0"),
        (0, "r0", -2, "must be >= 0"),
        (0, "r0", 0, "give worker_id and num_shards together"),
        (0, "", 2, "give worker_id and num_shards together"),
        (0, "", 0, "nothing to rescale"),
    ],
)
def test_rescale_arguments_are_checked(num_rollouts, worker_id, num_shards, message):
    run = with_workers()
    with pytest.raises(InvalidArgument, match=message):
        run.rescale(num_rollouts, worker_id, num_shards)
    assert run.registry.epoch == 0 and run.registry.target_rollouts == 1


def test_rescale_changes_the_world_or_one_workers_shards():
    run = with_workers(num_rollouts=2)
    assert run.rescale(0, "r1", 1) == ([], 0)
    assert run.registry.episodes_per_update == 8 + 4
    assert run.rescale(1) == (["r1"], 0)
    assert [w.membership for w in run.registry.workers()] == [Membership.MEMBER, Membership.MEMBER, "leaving"]
    publish(run, 0, final=True)
    with pytest.raises(OutOfOrder, match="the run has finished: there is nothing to rescale"):
        run.rescale(2)


def test_totals_sum_every_workers_last_report_and_count_what_is_in_flight():
    run = with_workers(num_rollouts=2)
    assert set(run.totals().values()) == {0}
    run.on_heartbeat("r0", {"episodes_produced": 10, "episodes_sent": 9, "env_steps_produced": 500})
    run.on_heartbeat("r1", {"episodes_produced": 6, "episodes_sent": 6})
    run.on_heartbeat(
        "actor-0",
        {
            "episodes_received": 12,
            "episodes_trained": 8,
            "episodes_dropped": 1,
            "episodes_queued": 2,
            "episodes_in_training": 1,
        },
    )
    t = run.totals()
    assert t == {
        "env_steps_produced": 500,
        "episodes_produced": 16,
        "episodes_sent": 15,
        "episodes_received": 12,
        "episodes_trained": 8,
        "episodes_dropped": 1,
        "episodes_queued": 2,
        "episodes_in_training": 1,
        "episodes_in_flight": 16 - 8 - 1,
        "episodes_unsent": 16 - 15,
        "episodes_on_wire": 15 - 12,
        "episodes_lost": 0,
    }
    assert all(type(v) is int for v in t.values())
    # produced = trained + dropped + in flight, and in flight by place adds up here
    assert t["episodes_produced"] == t["episodes_trained"] + t["episodes_dropped"] + t["episodes_in_flight"]
    assert t["episodes_in_flight"] == (
        t["episodes_unsent"] + t["episodes_on_wire"] + t["episodes_queued"] + t["episodes_in_training"]
    )
    run.on_heartbeat("r0", {"episodes_produced": 11, "episodes_sent": 11})  # a newer report replaces the last
    assert run.totals()["episodes_produced"] == 17


def test_roles_memberships_and_states_equal_their_strings():
    assert Role.ACTOR == "actor" and hash(Role.ACTOR) == hash("actor") and f"{Role.ROLLOUT:<8}|" == "rollout |"
    assert str(Membership.STANDBY) == "standby" and {"standby": 1}[Membership.STANDBY] == 1
    assert [s.value for s in RunState] == ["starting", "running", "paused", "finished", "unknown"]
    run = with_workers()
    assert run.registry.actor().role is Role.ACTOR  # strings given to register become the enum
    with pytest.raises(InvalidArgument, match="role must be actor or rollout, got 'learner'"):
        run.registry.register("learner", "x")


def test_what_the_actor_received_counts_as_sent_though_the_rollout_has_not_reported_it():
    """Rollouts report only every heartbeat; the counters each batch carried to the actor fill the gap,
    so the totals never show more received than sent, nor a negative in flight."""
    run, _ = make_run(1)
    run.registry.register("actor", "actor-0", rendezvous_address="h:1")
    run.registry.register("rollout", "r0", env_spec=SPEC, num_envs=8, num_shards=2, worker_key=77)
    run.on_heartbeat("r0", {"episodes_produced": 8, "episodes_sent": 8, "env_steps_produced": 400})
    # the rollout sent two more batches since; the actor has received (and reports) both
    run.on_heartbeat(
        "actor-0",
        {"episodes_received": 24, "episodes_trained": 16},
        senders=[
            SenderCounts(77, episodes_produced=24, episodes_sent=24, env_steps_produced=1200),
            SenderCounts(12345, episodes_produced=99, episodes_sent=99, env_steps_produced=9),
        ],
    )
    t = run.totals()
    assert (t["episodes_produced"], t["episodes_sent"], t["env_steps_produced"]) == (24, 24, 1200)
    assert t["episodes_on_wire"] == 0 and t["episodes_in_flight"] == 8  # unknown keys count for nobody
    # an older view never replaces a newer one; the rollout's own newer report wins where it is ahead
    run.on_heartbeat(
        "actor-0", {"episodes_received": 24, "episodes_trained": 16}, senders=[SenderCounts(77, 16, 16, 800)]
    )
    run.on_heartbeat("r0", {"episodes_produced": 32, "episodes_sent": 32, "env_steps_produced": 1600})
    t = run.totals()
    assert (t["episodes_produced"], t["episodes_sent"], t["episodes_on_wire"]) == (32, 32, 8)


def test_an_evicted_rollouts_undelivered_episodes_count_as_lost_and_the_ledger_still_balances():
    """produced = trained + dropped + lost + in flight: what a dead rollout produced but no actor received is
    lost, its counters stay in the totals beside its restarted incarnation's, and nothing goes negative."""
    run, clock = make_run(2)
    run.registry.register("actor", "actor-0", rendezvous_address="h:1")
    run.registry.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10)
    run.registry.register("rollout", "r1", env_spec=SPEC, num_envs=4, worker_key=11)
    run.on_heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12})
    run.on_heartbeat("r1", {"episodes_produced": 12, "episodes_sent": 12})  # its last word: 12 produced and sent
    run.on_heartbeat(  # ... but only 8 of r1's reached the actor before r1 died
        "actor-0",
        {"episodes_received": 20, "episodes_trained": 16, "episodes_queued": 4},
        senders=[SenderCounts(10, 12, 12, 0), SenderCounts(11, 8, 8, 0)],
    )
    clock.t = 5.0
    run.on_heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12})
    run.on_heartbeat("actor-0", {"episodes_received": 20, "episodes_trained": 16, "episodes_queued": 4})
    assert run.sweep() == [] and run.registry.workers()[2].membership == Membership.MEMBER  # silent 5 s: dead only
    clock.t = 21.0  # 10 heartbeats: evicted
    run.on_heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12})
    run.on_heartbeat("actor-0", {"episodes_received": 20, "episodes_trained": 16, "episodes_queued": 4})
    assert [w.worker_id for w in run.sweep()] == ["r1"]
    t = run.totals()
    assert (t["episodes_lost"], t["episodes_sent"], t["episodes_on_wire"], t["episodes_unsent"]) == (4, 20, 0, 0)
    assert t["episodes_produced"] == t["episodes_trained"] + t["episodes_dropped"] + t["episodes_lost"] + 4
    assert t["episodes_in_flight"] == 4 == t["episodes_queued"]
    # r1 restarted: a new incarnation, counted apart; the old one's numbers stay
    run.registry.register("rollout", "r1", env_spec=SPEC, num_envs=4, worker_key=12)
    run.on_heartbeat("r1", {"episodes_produced": 4, "episodes_sent": 4})
    t = run.totals()
    assert (t["episodes_produced"], t["episodes_lost"], t["episodes_on_wire"]) == (28, 4, 4)
    assert run.sweep() == []  # the new incarnation is alive


def test_a_finished_run_evicts_nobody():
    run, clock = make_run(1)
    run.registry.register("actor", "actor-0", rendezvous_address="h:1")
    run.registry.register("rollout", "r0", env_spec=SPEC, num_envs=4)
    publish(run, 1, final=True)
    clock.t = 100.0
    assert run.sweep() == [] and run.registry.workers()[1].membership == Membership.MEMBER


def test_the_actors_report_of_a_broken_connection_evicts_that_rollout_before_its_deadline():
    """A data-plane error the actor saw is news now; the heartbeat deadline would take 10 heartbeats."""
    run = with_workers(2)
    _, changed = run.on_heartbeat("r0", {}, broken=[(0, 1)])  # only the actor's word counts
    assert not changed and run.registry.workers()[1].membership == Membership.MEMBER
    _, changed = run.on_heartbeat("actor-0", {}, broken=[(0, 1)])  # epoch 0, rank 1: r0
    members = {w.worker_id: w.membership for w in run.registry.workers()}
    assert changed and (members["r0"], members["r1"]) == (Membership.EVICTED, Membership.MEMBER)
    _, changed = run.on_heartbeat("actor-0", {}, broken=[(0, 1)])  # repeated in the next heartbeat: nothing new
    assert not changed
    publish(run, 1, final=True)
    _, changed = run.on_heartbeat("actor-0", {}, broken=[(1, 1)])  # a finished run evicts nobody
    assert not changed and {w.worker_id: w.membership for w in run.registry.workers()}["r1"] == Membership.MEMBER


def test_store_rewind_drops_every_version_and_says_which():
    run = with_workers()
    assert run.store.rewind() == []  # nothing held: nothing dropped
    for v in range(4):
        publish(run, v)
    assert run.store.rewind() == [2, 3]  # keep=2: the two newest were held
    assert (run.store.latest, run.store.versions(), run.state) == (None, [], RunState.STARTING)
    with pytest.raises(NotFound):
        run.store.get(3)
    publish(run, 1)  # versions go forward again from wherever the next publish starts
    with pytest.raises(OutOfOrder, match="versions only go forward"):
        publish(run, 0)
    assert [s.version for s in run.store.versions()] == [1]


def actor_and_rollouts(num_rollouts: int = 1, actor_key: int = 100) -> tuple[RunControl, Clock]:
    """Workers registered through RunControl.register, each with its process's worker_key."""
    run, clock = make_run(num_rollouts)
    run.register("actor", "actor-0", rendezvous_address="h:1", worker_key=actor_key)
    for i in range(num_rollouts):
        run.register("rollout", f"r{i}", env_spec=SPEC, num_envs=4, worker_key=10 + i)
    return run, clock


def test_a_new_actor_process_drops_every_version_its_predecessor_published():
    run, _ = actor_and_rollouts()
    for v in range(4):
        publish(run, v)
    run.registry.drain_events()
    run.register("actor", "actor-0", rendezvous_address="h:1", worker_key=100)  # the same process: a retry
    assert run.store.latest.version == 3 and run.registry.drain_events() == []
    run.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101)  # started afresh
    assert (run.store.latest, run.store.versions(), run.state) == (None, [], RunState.STARTING)
    assert (run.registry.actor_incarnation, run.registry.rendezvous_address) == (1, "h:2")
    events = run.registry.drain_events()
    assert events[-1] == "versions 2..3 dropped: the new actor continues from its checkpoint"
    assert "started afresh" in events[0]
    publish(run, 1)  # its checkpoint's version, older than those dropped, is taken
    publish(run, 2)
    assert [s.version for s in run.store.versions()] == [1, 2] and run.state == RunState.RUNNING


def test_a_new_actor_process_before_any_version_drops_nothing():
    run, _ = actor_and_rollouts()
    run.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101)
    assert run.store.latest is None and run.registry.actor_incarnation == 1
    assert run.registry.drain_events()[-1] == "no version was held: the new actor publishes its checkpoint's first"


def test_a_new_actor_process_after_the_run_finished_is_refused_and_changes_nothing():
    run, _ = actor_and_rollouts()
    actor = run.registry.actor()
    publish(run, 0)
    publish(run, 1, final=True)
    run.registry.drain_events()
    with pytest.raises(OutOfOrder, match="the run has finished: a new actor process has nothing to continue"):
        run.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101)
    r = run.registry
    assert r.actor() is actor and actor.worker_key == 100 and actor.membership == Membership.MEMBER
    assert (r.actor_incarnation, r.epoch, r.rendezvous_address, r.retired_actors(), r.drain_events()) == (
        0,
        0,
        "h:1",
        [],
        [],
    )
    assert [s.version for s in run.store.versions()] == [0, 1] and run.state == RunState.FINISHED
    # the same process registering again is still answered; so is a rollout
    assert run.register("actor", "actor-0", rendezvous_address="h:1", worker_key=100) is actor
    assert run.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10).rank == 1


def lost_actor_run() -> RunControl:
    """1 actor, 2 rollouts (keys 10, 11). The first actor process received 8 episodes from each, trained 8 and
    dropped 2, and held 4 queued and 2 in training when it died; r0 had sent it 4 more (on the wire), r1 had
    2 produced and unsent. Then a new actor process registers."""
    run, _ = actor_and_rollouts(num_rollouts=2)
    run.on_heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12})
    run.on_heartbeat("r1", {"episodes_produced": 10, "episodes_sent": 8})
    run.on_heartbeat(
        "actor-0",
        {
            "episodes_received": 16,
            "episodes_trained": 8,
            "episodes_dropped": 2,
            "episodes_queued": 4,
            "episodes_in_training": 2,
        },
        senders=[SenderCounts(10, 8, 8, 0), SenderCounts(11, 8, 8, 0)],
    )
    t = run.totals()
    assert (t["episodes_lost"], t["episodes_on_wire"], t["episodes_in_flight"]) == (0, 4, 12)
    run.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101)
    return run


def assert_balanced(t: dict[str, int]) -> None:
    assert all(v >= 0 for v in t.values()), t
    assert t["episodes_produced"] == (
        t["episodes_trained"] + t["episodes_dropped"] + t["episodes_lost"] + t["episodes_in_flight"]
    ), t
    assert t["episodes_in_flight"] == (
        t["episodes_unsent"] + t["episodes_on_wire"] + t["episodes_queued"] + t["episodes_in_training"]
    ), t


def test_what_was_sent_to_a_dead_actor_and_not_finished_counts_as_lost():
    run = lost_actor_run()
    # the rollouts went on with the new actor: r0 sent it 8 more, r1 4 more (and has 2 unsent)
    run.on_heartbeat("r0", {"episodes_produced": 20, "episodes_sent": 20})
    run.on_heartbeat("r1", {"episodes_produced": 14, "episodes_sent": 12})
    run.on_heartbeat(
        "actor-0",
        {"episodes_received": 12, "episodes_trained": 8, "episodes_queued": 4},
        senders=[
            SenderCounts(10, 20, 20, 0, episodes_sent_before=12),
            SenderCounts(11, 14, 12, 0, episodes_sent_before=8),
        ],
    )
    t = run.totals()
    sent_to_old, finished_by_old = 12 + 8, 8 + 2
    assert t["episodes_lost"] == sent_to_old - finished_by_old == 10  # its queue, its batch, its wire
    assert (t["episodes_produced"], t["episodes_sent"], t["episodes_trained"], t["episodes_dropped"]) == (34, 32, 16, 2)
    assert (t["episodes_received"], t["episodes_in_flight"]) == (10 + 12, 6)
    assert (t["episodes_unsent"], t["episodes_on_wire"]) == (2, 0)
    assert (t["episodes_queued"], t["episodes_in_training"]) == (4, 0)  # the new actor's only: the old ones died
    assert_balanced(t)
    # the new actor's later reports keep what went before as it first said
    run.on_heartbeat(
        "actor-0",
        {"episodes_received": 16, "episodes_trained": 16},
        senders=[
            SenderCounts(10, 24, 24, 0, episodes_sent_before=12),
            SenderCounts(11, 14, 12, 0, episodes_sent_before=8),
        ],
    )
    run.on_heartbeat("r0", {"episodes_produced": 24, "episodes_sent": 24})
    t = run.totals()
    assert (t["episodes_lost"], t["episodes_trained"], t["episodes_on_wire"], t["episodes_in_flight"]) == (10, 24, 0, 2)
    assert_balanced(t)


def test_before_the_new_actor_reports_a_sender_all_it_sent_counts_as_sent_to_the_dead_one():
    run = lost_actor_run()
    t = run.totals()  # the new actor has reported nothing yet
    assert (t["episodes_lost"], t["episodes_on_wire"], t["episodes_unsent"]) == (12 + 8 - 10, 0, 2)
    assert (t["episodes_queued"], t["episodes_in_training"]) == (0, 0)
    assert_balanced(t)
    run.on_heartbeat("actor-0", {})  # a first heartbeat, nothing received yet
    run.on_heartbeat("r0", {"episodes_produced": 16, "episodes_sent": 16})  # it sent 4 more: not reported yet
    t = run.totals()
    assert t["episodes_lost"] == 16 + 8 - 10  # for now, at most what was sent
    assert_balanced(t)
    # the new actor reports r0 only: r1's sends all went to the dead actor
    run.on_heartbeat(
        "actor-0",
        {"episodes_received": 4, "episodes_queued": 4},
        senders=[SenderCounts(10, 16, 16, 0, episodes_sent_before=12)],
    )
    t = run.totals()
    assert (t["episodes_lost"], t["episodes_on_wire"], t["episodes_queued"]) == (10, 0, 4)
    assert_balanced(t)


def test_a_weight_control_started_again_restores_the_ledger_of_gone_incarnations_and_totals_stay_the_same():
    """The actor was replaced and a rollout evicted; then weight_control dies. A new one that restores the
    ledger (through JSON, as the service keeps it) and hears the live workers again shows the same totals;
    one without it would count what went to the dead actor as still on the wire."""
    run = lost_actor_run()
    run.on_heartbeat("r0", {"episodes_produced": 20, "episodes_sent": 20})
    run.on_heartbeat("r1", {"episodes_produced": 14, "episodes_sent": 12})
    actor_report = {"episodes_received": 12, "episodes_trained": 8, "episodes_queued": 4}
    senders = [
        SenderCounts(10, 20, 20, 0, episodes_sent_before=12),
        SenderCounts(11, 14, 12, 0, episodes_sent_before=8),
    ]
    run.on_heartbeat("actor-0", actor_report, senders=senders, worker_key=101)
    run.registry.evict_broken([(run.registry.epoch, 2)])  # r1 is gone
    assert run.registry.find("r1").membership == Membership.EVICTED
    before = run.totals()
    assert_balanced(before)

    def started_again(ledger: dict | None) -> RunControl:
        new, _ = make_run(num_rollouts=2)
        if ledger is not None:
            assert new.restore(json.loads(json.dumps(ledger))) == 4  # gone: r1 and the dead actor; live: 2
        epoch = run.registry.epoch + 1
        new.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101, next_epoch=epoch)
        new.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10, next_epoch=epoch)
        new.on_heartbeat("r0", {"episodes_produced": 20, "episodes_sent": 20}, worker_key=10)
        new.on_heartbeat("actor-0", actor_report, senders=senders[:1], worker_key=101)
        return new

    new = started_again(run.ledger())
    assert new.totals() == before
    r = new.registry
    assert (r.actor_incarnation, r.find("r1").membership, len(r.retired_actors())) == (1, Membership.EVICTED, 1)
    assert [w.worker_id for w in r.workers()] == ["actor-0", "r0", "r1"]  # status lists the evicted one
    # r1 started again under its id is a new incarnation beside the restored one
    new.register("rollout", "r1", env_spec=SPEC, num_envs=4, worker_key=12)
    assert new.totals() == before
    forgetful = started_again(None).totals()
    assert forgetful != before and forgetful["episodes_lost"] == 0


def test_an_actor_that_died_before_weight_control_did_is_replaced_from_the_ledger_and_its_episodes_count_as_lost():
    """The actor dies; weight_control dies before the actor's new process registers. The new weight_control
    knows the dead process from the ledger's live entries: the new actor process replaces it (the next
    actor incarnation, versions rewound), and what went to the dead one and was not finished is lost."""
    run, _ = actor_and_rollouts(num_rollouts=2)
    run.on_heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12}, worker_key=10)
    run.on_heartbeat("r1", {"episodes_produced": 10, "episodes_sent": 8}, worker_key=11)
    run.on_heartbeat("actor-0", {"episodes_received": 16, "episodes_trained": 8, "episodes_dropped": 2,
                                 "episodes_queued": 6}, senders=[SenderCounts(10, 8, 8, 0), SenderCounts(11, 8, 8, 0)],
                     worker_key=100)  # fmt: skip
    publish(run, 0)
    ledger = json.loads(json.dumps(run.ledger()))
    new, _ = make_run(num_rollouts=2)
    assert new.restore(ledger) == 3 and new.registry.incarnations() != []
    assert_balanced(new.totals())  # before anyone registers again: the last reports
    new.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10, next_epoch=1)
    new.register("rollout", "r1", env_spec=SPEC, num_envs=4, worker_key=11, next_epoch=1)
    assert new.registry.epoch == 1
    new.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101)  # its new process
    assert new.registry.actor_incarnation == 1 and len(new.registry.retired_actors()) == 1
    # the rollouts, registered first, wait in epoch 1 for the dead actor's rendezvous: a new epoch forms
    assert (new.registry.epoch, new.registry.rendezvous_address) == (2, "h:2")
    assert any("a new process" in e for e in new.registry.drain_events())
    new.on_heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12}, worker_key=10)
    new.on_heartbeat("r1", {"episodes_produced": 10, "episodes_sent": 8}, worker_key=11)
    new.on_heartbeat("actor-0", {}, worker_key=101)
    t = new.totals()
    assert (t["episodes_lost"], t["episodes_trained"], t["episodes_dropped"]) == (12 + 8 - 10, 8, 2), t
    assert (t["episodes_on_wire"], t["episodes_unsent"], t["episodes_in_flight"]) == (0, 2, 2), t
    assert_balanced(t)


def test_a_rollout_known_from_the_ledger_that_never_registers_again_is_evicted_after_the_deadline():
    run, _ = actor_and_rollouts(num_rollouts=2)
    run.on_heartbeat("r1", {"episodes_produced": 10, "episodes_sent": 8}, worker_key=11)
    run.on_heartbeat("actor-0", {"episodes_received": 8, "episodes_trained": 8},
                     senders=[SenderCounts(11, 8, 8, 0)], worker_key=100)  # fmt: skip
    new, clock = make_run(num_rollouts=2)
    new.restore(json.loads(json.dumps(run.ledger())))
    new.register("actor", "actor-0", rendezvous_address="h:1", worker_key=100)
    new.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10, next_epoch=1)
    new.on_heartbeat("actor-0", {"episodes_received": 8, "episodes_trained": 8},
                     senders=[SenderCounts(11, 8, 8, 0)], worker_key=100)  # fmt: skip
    assert new.sweep() == [] and new.registry.find("r1") is None
    clock.t += new.registry.rejoin_within_s - 1
    new.on_heartbeat("r0", {}, worker_key=10)
    assert new.sweep() == [] and new.registry.find("r1") is None  # a live one retrying: back by now, not yet
    clock.t += 1
    new.on_heartbeat("actor-0", {"episodes_received": 8, "episodes_trained": 8},
                     senders=[SenderCounts(11, 8, 8, 0)], worker_key=100)  # fmt: skip
    new.on_heartbeat("r0", {}, worker_key=10)
    new.sweep()
    assert new.registry.find("r1").membership == Membership.EVICTED
    t = new.totals()
    assert (t["episodes_lost"], t["episodes_in_flight"]) == (2, 0), t
    assert_balanced(t)


def entry(membership: str, role: str = "rollout", **kw) -> dict:
    return {"worker_id": "r", "role": role, "membership": membership, "stats": {}} | kw


@pytest.mark.parametrize(
    ("ledger", "message"),
    [
        ([], "not a ledger of format 1"),
        ({"format": 2}, "not a ledger of format 1"),
        ({"format": 1, "gone": [], "live": [], "senders": [[1, 2]], "sent_before": []}, "senders or sent_before"),
        ({"format": 1, "gone": {}, "live": [], "senders": [], "sent_before": []}, "a 'gone' list"),
        ({"format": 1, "gone": [], "senders": [], "sent_before": []}, "a 'live' list"),
        ({"format": 1, "gone": [{"role": "actor"}], "live": [], "senders": [], "sent_before": []},
         "gone entry 0: no 'membership'"),
        ({"format": 1, "gone": [entry("member")], "live": [], "senders": [], "sent_before": []},
         "a gone entry cannot be a rollout member"),
        ({"format": 1, "gone": [], "live": [entry("evicted")], "senders": [], "sent_before": []},
         "live entry 0 \\('r'\\): a live entry cannot be a rollout evicted"),
        ({"format": 1, "gone": [entry("left", stats={"x": "y"})], "live": [], "senders": [], "sent_before": []},
         "stats must map names to numbers"),
        ({"format": 1, "gone": [entry("left")], "live": [entry("member")], "senders": [], "sent_before": []},
         "listed twice"),
    ],
)  # fmt: skip
def test_a_malformed_ledger_is_refused_naming_what_is_wrong_and_restores_nothing(ledger, message):
    run, _ = make_run()
    with pytest.raises(ValueError, match=message):
        run.restore(ledger)
    assert (run.registry.incarnations(), run.ledger()["gone"], run.ledger()["senders"]) == ([], [], [])
