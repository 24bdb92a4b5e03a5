"""`dvla admin status` against a real weight_control: text, JSON, a refused token, an unreachable server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dvla.cli import main
from dvla.config import ControlConfig
from dvla.net import free_port
from dvla.rpc.client import ControlClient
from dvla.types import Acks, EnvSpec
from services.weight_control.app import BackgroundServer

SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)


@pytest.fixture
def live(monkeypatch):
    monkeypatch.setenv("DVLA_TOKEN", "t0k3n")
    cfg = replace(ControlConfig(), rpc_timeout_s=5.0)
    with BackgroundServer(cfg, num_rollouts=1) as srv:
        c = ControlClient(srv.address, cfg)
        c.wait_healthy(10)
        c.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
        c.register("rollout", "rollout-0", env_spec=SPEC, num_envs=16, num_shards=2)
        c.heartbeat(
            "rollout-0",
            {
                "policy_version": 3,
                "num_envs": 16,
                "env_steps_per_s": 512.0,
                "inference_queue": 7,
                "episodes_produced": 48,
                "episodes_sent": 48,
                "busy_s": 9.0,
                "loop_s": 10.0,
            },
        )
        c.heartbeat("actor-0", {"staleness_mean": 0.75, "batches_queued": 3})
        c.publish(0, {"w": torch.zeros(4)})
        yield srv
        c.close()


def test_status_prints_the_run_counters_and_every_worker(live, capsys):
    assert main(["admin", "status", "--control", live.address]) == 0
    out = capsys.readouterr().out
    assert "run running, version 0" in out and "episodes: produced" in out
    rollout = next(line for line in out.splitlines() if line.startswith("rollout-0"))
    assert rollout.split()[1:4] == ["rollout", "member", "1"] and " 512 " in rollout and "0.90" in rollout
    assert any(
        line.startswith("actor-0") and line.split()[1:4] == ["actor", "member", "0"] for line in out.splitlines()
    )
    assert "data-plane epoch 0, 1 actor rank(s), 1 rollout worker(s) wanted" in out
    assert rollout.split()[-2:] == ["7", "-"]  # queue: observations waiting for inference; no staleness
    actor = next(line for line in out.splitlines() if line.startswith("actor-0"))
    assert actor.split()[-2:] == ["3", "0.75"]  # batches queued, mean version lag of the last update
    assert "produced 48  sent 48" in out


def test_status_json_is_the_whole_reply(live, capsys):
    assert main(["admin", "status", "--control", live.address, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["latest_version"] == "0" and {w["worker_id"] for w in data["workers"]} == {"actor-0", "rollout-0"}
    assert "episodes_in_flight" in data["totals"]


def test_a_wrong_token_is_refused(live, capsys, monkeypatch):
    monkeypatch.setenv("DVLA_TOKEN", "wrong")
    assert main(["admin", "status", "--control", live.address]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err


def test_an_unreachable_server_is_a_clear_error(capsys):
    assert main(["admin", "status", "--control", f"127.0.0.1:{free_port()}", "control.rpc_timeout_s=1"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_pause_and_resume_are_idempotent_and_refused_once_the_run_has_finished(live, capsys):
    for verb, state in (("pause", "paused"), ("pause", "paused"), ("resume", "running"), ("resume", "running")):
        assert main(["admin", verb, "--control", live.address, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == {"state": state}
    c = ControlClient(live.address, replace(ControlConfig(), rpc_timeout_s=5.0))
    c.actor_id = "actor-0"
    c.publish(1, {"w": torch.ones(4)}, final=True)
    c.close()
    assert main(["admin", "pause", "--control", live.address]) == 2
    assert "FAILED_PRECONDITION" in capsys.readouterr().err


def test_rescale_verbs_change_the_world_and_bad_ones_are_refused(live, capsys):
    c = ControlClient(live.address, replace(ControlConfig(), rpc_timeout_s=5.0))
    assert c.register("rollout", "rollout-1", env_spec=SPEC, num_envs=16, num_shards=2).rank == -1  # standby
    assert main(["admin", "rescale", "--rollouts", "2", "--control", live.address]) == 0
    out = capsys.readouterr().out
    assert "2 rollout worker(s) wanted, data-plane epoch 1, 32 episodes per update" in out
    assert "admitted from standby: 1" in out
    assert (
        main(["admin", "rescale", "--worker", "rollout-1", "--shards", "1", "--control", live.address, "--json"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["episodes_per_update"] == 24
    assert c.heartbeat("rollout-1", {}).num_shards == 1  # the worker learns its shard count from its heartbeat
    assert main(["admin", "rescale", "--rollouts", "1", "--control", live.address]) == 0
    assert "leaving (they finish and send what they hold, then exit): rollout-1" in capsys.readouterr().out
    d = c.heartbeat("rollout-1", {})
    assert (d.membership, d.rank, d.epoch) == ("leaving", -1, 2)
    for argv, err in (
        (["--worker", "nobody", "--shards", "2"], "NOT_FOUND"),
        (["--rollouts", "-1"], "INVALID_ARGUMENT"),
        (["--worker", "rollout-0", "--shards", "65"], "INVALID_ARGUMENT"),
        ([], "needs --rollouts"),
    ):
        assert main(["admin", "rescale", "--control", live.address, *argv]) == 2
        assert err in capsys.readouterr().err
    c.close()


def test_checkpoint_waits_until_the_actor_reports_it_written(live, capsys):
    import threading

    c = ControlClient(live.address, replace(ControlConfig(), rpc_timeout_s=5.0))

    def actor() -> None:  # the actor's side: a request arrives in a heartbeat reply, the report in the next one
        for _ in range(100):
            d = c.heartbeat("actor-0", {})
            if d.checkpoint_request:
                c.heartbeat(
                    "actor-0",
                    {},
                    Acks(
                        checkpoint_request_done=d.checkpoint_request,
                        checkpoint_version=7,
                        checkpoint_path="/runs/x/checkpoints/v000007",
                    ),
                )
                return
            threading.Event().wait(0.05)

    t = threading.Thread(target=actor)
    t.start()
    assert main(["admin", "checkpoint", "--control", live.address]) == 0
    t.join()
    assert "checkpoint request 1: version 7 written to /runs/x/checkpoints/v000007" in capsys.readouterr().out
    assert main(["admin", "checkpoint", "--control", live.address, "--timeout", "0.5"]) == 2  # nobody writes it
    assert "DEADLINE_EXCEEDED" in capsys.readouterr().err
    c.close()


def test_status_shows_the_placement_the_launcher_chose_and_why(live, capsys):
    assert main(["admin", "status", "--control", live.address]) == 0
    assert "placement:" not in capsys.readouterr().out  # none given yet
    c = ControlClient(live.address, replace(ControlConfig(), rpc_timeout_s=5.0))
    c.set_placement("colocated", "every process on any of 2 cores", "chose colocated: the fastest of ...", 11)
    c.close()
    assert main(["admin", "status", "--control", live.address]) == 0
    out = capsys.readouterr().out
    assert "placement: colocated (every process on any of 2 cores) since update 11: chose colocated" in out
