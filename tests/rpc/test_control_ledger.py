"""weight_control's ledger file (control.state_path) across a real server's restart."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import pytest

from dvla.rpc.client import ControlClient
from dvla.types import EnvSpec, SenderCounts
from services.weight_control.app import BackgroundServer

SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)
TOTALS = ("episodes_produced", "episodes_sent", "episodes_received", "episodes_trained", "episodes_dropped",
          "episodes_lost", "episodes_in_flight", "episodes_on_wire", "episodes_unsent")  # fmt: skip


def totals(client: ControlClient) -> dict[str, int]:
    t = client.status().totals
    return {k: getattr(t, k) for k in TOTALS}


def clients(address: str, cfg, n: int) -> list[ControlClient]:
    out = [ControlClient(address, cfg) for _ in range(n)]
    out[0].wait_healthy(10)
    return out


@pytest.fixture
def ledger_cfg(control_cfg, tmp_path):
    return replace(control_cfg, heartbeat_s=0.1, state_path=str(tmp_path / "control-state.json"))


def test_a_weight_control_started_again_reads_back_the_ledger_and_the_totals_stay_true(ledger_cfg, tmp_path):
    path = tmp_path / "control-state.json"
    with BackgroundServer(ledger_cfg, num_rollouts=2) as srv:
        old_actor, actor, r0, r1 = clients(srv.address, ledger_cfg, 4)
        old_actor.register("actor", "actor-0", rendezvous_address="h:1", worker_key=100)
        r0.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10)
        r1.register("rollout", "r1", env_spec=SPEC, num_envs=4, worker_key=11)
        r0.heartbeat("r0", {"episodes_produced": 12, "episodes_sent": 12})
        r1.heartbeat("r1", {"episodes_produced": 10, "episodes_sent": 8})
        old_actor.heartbeat("actor-0", {"episodes_received": 16, "episodes_trained": 8, "episodes_dropped": 2},
                            senders=[SenderCounts(10, 8, 8, 0), SenderCounts(11, 8, 8, 0)])  # fmt: skip
        # the actor dies and is started again; then rollout r1's connection breaks (it is evicted)
        reg = actor.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101)
        actor.heartbeat("actor-0", {"episodes_received": 4, "episodes_trained": 4},
                        senders=[SenderCounts(10, 16, 16, 0, episodes_sent_before=12)],
                        broken=[(reg.epoch, 2)])  # fmt: skip
        r0.heartbeat("r0", {"episodes_produced": 16, "episodes_sent": 16})
        before = totals(actor)
        assert before["episodes_lost"] > 0 and before["episodes_on_wire"] == 0, before
        for c in (old_actor, actor, r0, r1):
            c.close()
    written = json.loads(path.read_text())  # the last word was written as the server stopped
    assert written["actor_incarnation"] == 1 and {e["worker_id"] for e in written["gone"]} == {"actor-0", "r1"}

    with BackgroundServer(ledger_cfg, num_rollouts=2) as srv:
        actor, r0 = clients(srv.address, ledger_cfg, 2)
        actor.register("actor", "actor-0", rendezvous_address="h:2", worker_key=101, next_epoch=reg.epoch + 2)
        r0.register("rollout", "r0", env_spec=SPEC, num_envs=4, worker_key=10, next_epoch=reg.epoch + 2)
        r0.heartbeat("r0", {"episodes_produced": 16, "episodes_sent": 16})
        actor.heartbeat("actor-0", {"episodes_received": 4, "episodes_trained": 4},
                        senders=[SenderCounts(10, 16, 16, 0, episodes_sent_before=12)])  # fmt: skip
        assert totals(actor) == before
        status = actor.status()
        assert [w.worker_id for w in status.workers] == ["actor-0", "r0", "r1"]  # r1 shown as evicted, still
        for c in (actor, r0):
            c.close()


def test_a_ledger_that_cannot_be_read_back_is_moved_aside_and_the_server_starts(ledger_cfg, tmp_path, caplog):
    path = tmp_path / "control-state.json"
    path.write_text('{"format": 1, "gone": [')
    with caplog.at_level(logging.ERROR), BackgroundServer(ledger_cfg, num_rollouts=1) as srv:
        (client,) = clients(srv.address, ledger_cfg, 1)
        assert client.status().totals.episodes_produced == 0
        client.close()
    assert (tmp_path / "control-state.json.bad").read_text() == '{"format": 1, "gone": ['
    assert "cannot be read back" in caplog.text and "control-state.json.bad" in caplog.text
    assert json.loads(path.read_text())["format"] == 1  # a fresh ledger written in its place
