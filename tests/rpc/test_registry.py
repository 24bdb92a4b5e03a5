"""Registry and Admin through a real server."""

from __future__ import annotations

import pytest

from dvla.rpc import codec
from dvla.rpc.client import RpcFailed
from dvla.types import EnvSpec

SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)


def test_ranks_world_and_status(client):
    a = client.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
    r1 = client.register("rollout", "r-a", env_spec=SPEC)
    assert (a.rank, r1.rank, r1.world_size, r1.rendezvous_address) == (0, 1, 3, "127.0.0.1:29500")
    assert not client.world().complete
    r2 = client.register("rollout", "r-b", env_spec=SPEC)
    assert r2.rank == 2
    assert client.register("rollout", "r-a", env_spec=SPEC).rank == 1  # a restart keeps its rank
    world = client.world()
    assert world.complete and client.env_spec(world) == SPEC
    client.heartbeat("r-a", {"episodes_produced": 10, "env_steps_produced": 500, "policy_version": 3})
    client.heartbeat("r-b", {"episodes_produced": 6})
    client.heartbeat("actor-0", {"episodes_received": 12, "episodes_trained": 8, "episodes_dropped": 1})
    t = client.status().totals
    assert (t.episodes_produced, t.episodes_trained, t.episodes_dropped, t.episodes_in_flight) == (16, 8, 1, 7)
    assert [w.rank for w in client.status().workers] == [0, 1, 2]


@pytest.mark.parametrize(
    "call,code",
    [
        (lambda c: c.register("rollout", "r-z", env_spec=None), "INVALID_ARGUMENT"),
        (lambda c: c.register("actor", "a", rendezvous_address=""), "INVALID_ARGUMENT"),
        (lambda c: c.register("rollout", "", env_spec=SPEC), "INVALID_ARGUMENT"),
        (lambda c: c.heartbeat("nobody", {}), "NOT_FOUND"),
    ],
)
def test_bad_registry_calls(client, call, code):
    with pytest.raises(RpcFailed) as e:
        call(client)
    assert e.value.code == code


def test_world_full_puts_joiners_on_standby_and_refuses_a_second_actor(client):
    client.register("actor", "a0", rendezvous_address="h:1")
    client.register("rollout", "r1", env_spec=SPEC)
    client.register("rollout", "r2", env_spec=SPEC)
    r3 = client.register("rollout", "r3", env_spec=SPEC)
    assert r3.rank == -1 and client.world().epoch == 0  # standby: the world is full and stays as it is
    assert [codec.MEMBERSHIP_NAMES[w.membership] for w in client.status().workers] == ["member"] * 3 + ["standby"]
    with pytest.raises(RpcFailed) as e:
        client.register("actor", "a1", rendezvous_address="h:2")
    assert e.value.code == "ALREADY_EXISTS"


def test_health_is_serving(client):
    client.wait_healthy(5)


def test_a_standby_worker_gives_up_once_the_run_has_finished(publisher):
    import threading

    import torch

    from dvla.membership import RunFinished, join

    publisher.register("rollout", "r1", env_spec=SPEC)
    publisher.register("rollout", "r2", env_spec=SPEC)
    done = threading.Timer(0.5, lambda: publisher.publish(0, {"w": torch.zeros(2)}, final=True))
    done.start()
    with pytest.raises(RunFinished):
        join(publisher, "rollout", "r3", env_spec=SPEC, timeout_s=30)  # on standby until the run ends
    done.join()


def test_sender_counts_carry_what_went_to_earlier_actors_and_refuse_impossible_ones():
    from dvla.proto.v1 import registry_pb2
    from dvla.types import SenderCounts

    c = SenderCounts((1 << 63) - 1, 20, 16, env_steps_produced=900, episodes_sent_before=12)
    assert codec.sender_from_pb(codec.sender_to_pb(c)) == c
    edge = SenderCounts(7, episodes_produced=8, episodes_sent=8, env_steps_produced=0, episodes_sent_before=8)
    assert codec.sender_from_pb(codec.sender_to_pb(edge)) == edge  # all of it went to an earlier actor
    old = registry_pb2.SenderCounts(worker_key=7, episodes_produced=4, episodes_sent=4, env_steps_produced=40)
    assert codec.sender_from_pb(old).episodes_sent_before == 0  # a sender that gives none: nothing went before
    for bad in (
        dict(worker_key=7, episodes_produced=20, episodes_sent=16, episodes_sent_before=17),
        dict(worker_key=7, episodes_produced=15, episodes_sent=16, episodes_sent_before=0),
        dict(worker_key=0, episodes_produced=20, episodes_sent=16, episodes_sent_before=0),
    ):
        with pytest.raises(ValueError, match="sender counts"):
            codec.sender_from_pb(registry_pb2.SenderCounts(**bad))


def test_a_replaced_process_is_told_so_by_its_heartbeat_and_gives_up(control_server, control_cfg):
    """Two processes under one worker id (the first cut off and replaced, then back): the old one's
    heartbeats are refused with ABORTED, and its Heartbeat gives up instead of overwriting the new one."""
    from dvla.membership import Heartbeat
    from dvla.rpc.client import ControlClient

    old, new = (ControlClient(control_server.address, control_cfg) for _ in range(2))
    try:
        old.register("rollout", "r0", env_spec=SPEC, worker_key=11)
        new.register("rollout", "r0", env_spec=SPEC, worker_key=12)
        new.heartbeat("r0", {"episodes_produced": 2})
        with pytest.raises(RpcFailed) as e:
            old.heartbeat("r0", {"episodes_produced": 50})
        assert e.value.code == "ABORTED" and "registered again by another process" in e.value.message
        why = []
        beat = Heartbeat(old, "r0", lambda: {"episodes_produced": 50}, 0.05, on_lost=why.append)
        beat.beat()
        beat.beat()
        assert len(why) == 1 and "giving up" in why[0]  # once
        w = next(w for w in new.status().workers if w.worker_id == "r0")
        assert w.stats.episodes_produced == 2
    finally:
        old.close()
        new.close()
