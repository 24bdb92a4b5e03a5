"""Checkpoints: round trip, pruning, finding, and a clear error for every bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dvla import checkpoint as ck
from dvla.algo.learner import Learner
from dvla.cli import main
from dvla.config import AlgoConfig, MlpConfig, PolicyConfig, VlaConfig, load_config
from dvla.policy import build_policy
from dvla.policy.vla import VLAPolicy
from dvla.types import EnvSpec

SPEC = EnvSpec(
    task="Fake-v0", obs_dim=5, action_dim=3, action_low=(-1.0,) * 3, action_high=(1.0,) * 3, max_episode_steps=10
)
CFG = load_config(None, ["policy.mlp.hidden_sizes=[16, 16]", "pipeline.num_updates=10"], preset="smoke")


def make(seed: int = 0, policy_cfg: PolicyConfig = CFG.policy):
    torch.manual_seed(seed)
    policy = build_policy(policy_cfg, SPEC)
    return policy, Learner(policy, AlgoConfig(), torch.device("cpu"), seed=seed)


def train_a_little(policy, learner, steps: int = 3) -> None:
    """Optimizer steps (so Adam has moments) and draws from both RNGs."""
    for _ in range(steps):
        loss = sum((p**2).sum() for p in policy.parameters()) + torch.rand(()) * 0
        learner.optimizer.zero_grad()
        loss.backward()
        learner.optimizer.step()
        torch.randperm(7, generator=learner.generator)


def save(root: Path, version: int, keep: int = 3, **kw) -> Path:
    policy, learner = make()
    train_a_little(policy, learner)
    return ck.Checkpointer(root, CFG, every_updates=1, keep=keep).save(
        version, policy, learner, updates=version, env_steps_trained=100 * version, **kw
    )


def test_round_trip_is_exact_for_weights_optimizer_and_rng(tmp_path):
    policy, learner = make(seed=1)
    train_a_little(policy, learner)
    saver = ck.Checkpointer(tmp_path / "checkpoints", CFG, every_updates=2, keep=3)
    path = saver.save(
        7, policy, learner, updates=7, env_steps_trained=1234, counters={"trained": 9}, request=2, wall_s=5.5
    )
    assert path == tmp_path / "checkpoints" / "v000007"
    assert (saver.last_version, saver.last_path, saver.request_done) == (7, path, 2)
    # what the original would draw next
    expect_torch, expect_perm = torch.rand(4), torch.randperm(50, generator=learner.generator)

    ckpt = ck.load_checkpoint(tmp_path)  # the run folder: its newest checkpoint
    assert (ckpt.path, ckpt.version, ckpt.updates, ckpt.env_steps_trained, ckpt.wall_s) == (path, 7, 7, 1234, 5.5)
    assert ckpt.state["counters"] == {"trained": 9} and ckpt.state["request"] == 2
    assert load_config(ckpt.path / "config.yaml") == CFG

    fresh, fresh_learner = make(seed=2)
    torch.manual_seed(99)
    ck.restore(ckpt, fresh, fresh_learner)
    for name, w in policy.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], w), name
    a, b = learner.optimizer.state_dict(), fresh_learner.optimizer.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for i, s in a["state"].items():
        for k, v in s.items():
            assert torch.equal(b["state"][i][k], v), (i, k)
    assert torch.equal(torch.rand(4), expect_torch)
    assert torch.equal(torch.randperm(50, generator=fresh_learner.generator), expect_perm)
    # training goes on identically from both
    train_a_little(policy, learner)
    train_a_little(fresh, fresh_learner)
    assert all(torch.equal(fresh.state_dict()[n], w) for n, w in policy.state_dict().items())


def test_due_periodically_and_on_a_new_request(tmp_path):
    policy, learner = make()
    c = ck.Checkpointer(tmp_path, CFG, every_updates=2, keep=3)
    assert [u for u in range(1, 7) if c.due(u, request=0)] == [2, 4, 6]
    assert c.due(3, request=1)
    c.save(3, policy, learner, updates=3, env_steps_trained=0, request=1)
    assert c.request_done == 1 and not c.due(3, request=1) and not c.due(5, request=1)
    assert c.due(5, request=2)
    c.save(4, policy, learner, updates=4, env_steps_trained=0)
    assert not c.due(4, request=1)  # written already at this update
    never = ck.Checkpointer(tmp_path, CFG, every_updates=0, keep=3)
    assert not any(never.due(u, 0) for u in range(1, 100)) and never.due(50, 1)


def test_keeps_the_newest_and_replaces_a_version_written_twice(tmp_path):
    root = tmp_path / "checkpoints"
    policy, learner = make()
    c = ck.Checkpointer(root, CFG, every_updates=1, keep=2)
    (root / ".v000009.tmp").mkdir(parents=True)  # a crash mid-write in an earlier life: cleaned up
    for v in range(1, 5):
        c.save(v, policy, learner, updates=v, env_steps_trained=v)
    assert [p.name for p in ck.list_checkpoints(root)] == ["v000003", "v000004"]
    c.save(4, policy, learner, updates=4, env_steps_trained=4, final=True)  # the final one, same version
    assert sorted(p.name for p in root.iterdir()) == ["v000003", "v000004"]  # no temporary folder left behind
    assert ck.inspect_checkpoint(root / "v000004").state["final"] is True


def test_find_checkpoint_in_a_run_folder_or_a_checkpoint_folder(tmp_path):
    for v in (2, 10, 3):
        save(tmp_path / "checkpoints", v)
    (tmp_path / "checkpoints" / ".v000011.tmp").mkdir()  # a crash mid-write: never picked
    (tmp_path / "checkpoints" / "v000012").mkdir()  # no state.json: incomplete
    assert ck.find_checkpoint(tmp_path) == tmp_path / "checkpoints" / "v000010"
    assert ck.find_checkpoint(tmp_path / "checkpoints" / "v000003") == tmp_path / "checkpoints" / "v000003"
    assert ck.find_checkpoint(str(tmp_path)) == tmp_path / "checkpoints" / "v000010"


# ---------------------------------------------------------------- bad input
def test_missing_folder_file_and_empty_run_folder(tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint '.*nope' does not exist"):
        ck.find_checkpoint(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        ck.find_checkpoint(tmp_path / "file")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"run folder '.*run' has no checkpoints in checkpoints/"):
        ck.load_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match=r"neither a checkpoint \(no state.json\) nor a run folder"):
        ck.load_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ck.FILES[1:])
def test_a_missing_file_is_named(tmp_path, name):
    path = save(tmp_path, 1)
    (path / name).unlink()
    with pytest.raises(ValueError, match=f"has no {name}"):
        ck.load_checkpoint(path)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("state.json", "{not json", "state.json is not valid JSON"),
        ("state.json", "[1]", "state.json must hold an object"),
        ("weights.safetensors", "garbage", "weights.safetensors is corrupt"),
        ("optimizer.pt", "garbage", "optimizer.pt is corrupt"),
        ("rng.safetensors", "garbage", "rng.safetensors is corrupt"),
    ],
)
def test_a_corrupt_file_is_named(tmp_path, name, content, message):
    path = save(tmp_path, 1)
    (path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        ck.load_checkpoint(path)


def test_state_fields_and_format_are_checked(tmp_path):
    path = save(tmp_path, 1)
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps(state | {"updates": "three"}))
    with pytest.raises(ValueError, match="field 'updates' must be an integer >= 0, got 'three'"):
        ck.load_checkpoint(path)
    (path / "state.json").write_text(json.dumps(state | {"format": 99}))
    with pytest.raises(ValueError, match="format 99"):
        ck.load_checkpoint(path)


def test_version_mismatch_between_state_and_weights(tmp_path):
    path = save(tmp_path, 4)
    policy, _ = make()
    save_file(policy.export_weights(), str(path / "weights.safetensors"), metadata={"version": "3"})
    with pytest.raises(ValueError, match="state.json is version 4 but weights.safetensors is version 3"):
        ck.load_checkpoint(path)


def test_weights_that_do_not_fit_the_policy_name_the_first_tensor(tmp_path):
    ckpt = ck.load_checkpoint(save(tmp_path, 1))
    wider, learner = make(policy_cfg=replace(CFG.policy, mlp=MlpConfig(hidden_sizes=(32, 16))))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    shapes = r"does not fit the policy: '(\w|\.)+' has shape \(16, 5\), the policy's \(32, 5\)"
    with pytest.raises(ValueError, match=shapes):
        ck.restore(ckpt, wider, learner)
    assert all(torch.equal(wider.state_dict()[k], v) for k, v in before.items())  # nothing half-loaded
    policy, learner = make()
    first = next(iter(policy.state_dict()))
    weights = dict(ckpt.weights)
    del ckpt.weights[first]
    with pytest.raises(ValueError, match=f"it has no tensor '{first}'"):
        ck.restore(ckpt, policy, learner)
    ckpt.weights = weights | {first: weights[first].double()}
    with pytest.raises(ValueError, match=f"'{first}' is torch.float64, the policy's torch.float32"):
        ck.restore(ckpt, policy, learner)
    ckpt.weights = weights | {"extra.bias": torch.zeros(2)}
    with pytest.raises(ValueError, match="the policy has no tensor 'extra.bias'"):
        ck.restore(ckpt, policy, learner)


def test_a_checkpoint_must_leave_updates_to_train(tmp_path):
    info = ck.inspect_checkpoint(save(tmp_path, 3))
    with pytest.raises(
        ValueError, match="checkpoint is at update 3; pipeline.num_updates=3: raise it to train further"
    ):
        ck.resume_config(info, ["pipeline.num_updates=3"])
    assert ck.resume_config(info, ["pipeline.num_updates=6"]).pipeline.num_updates == 6


# ---------------------------------------------------------------- resuming a run's config
def test_resume_config_takes_the_checkpoint_config_and_never_the_redacted_token(tmp_path):
    policy, learner = make()
    cfg = replace(CFG, control=replace(CFG.control, token="s3cret"), name="orig")
    path = ck.Checkpointer(tmp_path, cfg, keep=1).save(2, policy, learner, updates=2, env_steps_trained=0)
    assert "s3cret" not in (path / "config.yaml").read_text()
    info = ck.inspect_checkpoint(path)
    resumed = ck.resume_config(info, ["algo.lr=0.01"])
    assert resumed.name == "orig" and resumed.algo.lr == 0.01 and resumed.policy == CFG.policy
    assert resumed.control.token == ""  # DVLA_TOKEN supplies it at run time
    assert ck.resume_config(info, ["control.token=fresh"]).control.token == "fresh"


def test_dvla_run_resume_refuses_bad_input_before_starting_anything(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["run", "--resume", str(tmp_path / "missing"), f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    path = save(tmp_path / "old" / "checkpoints", 5)
    assert main(["run", "--resume", str(path), "--preset", "smoke"]) == 2
    assert "drop --preset" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "old"), f"out_dir={out}", "pipeline.num_updates=5"]) == 2
    assert "checkpoint is at update 5" in capsys.readouterr().err
    assert not out.exists()  # no run folder made


def test_a_vla_round_trips_and_a_resumed_run_builds_it_from_the_checkpoint_copy(tmp_path):
    spec = EnvSpec(
        task="PickCube-v1",
        obs_dim=29,
        action_dim=4,
        action_low=(-1.0,) * 4,
        action_high=(1.0,) * 4,
        max_episode_steps=50,
        image_shape=(64, 64, 3),
        instruction="pick up the cube",
    )
    vla = PolicyConfig(
        name="vla", chunk_size=2, dtype="float32", vla=VlaConfig(size="tiny", action_head="flow", flow_steps=3)
    )
    cfg = replace(
        CFG,
        env=replace(CFG.env, obs_mode="rgb", image_size=64),
        policy=replace(vla, path=str(tmp_path / "pretrained-gone")),
    )

    def build(seed: int):
        torch.manual_seed(seed)
        policy = build_policy(vla, spec)
        return policy, Learner(policy, AlgoConfig(), torch.device("cpu"), seed=seed)

    policy, learner = build(0)
    train_a_little(policy, learner, steps=1)
    path = ck.Checkpointer(tmp_path / "run" / "checkpoints", cfg, keep=1).save(
        1, policy, learner, updates=1, env_steps_trained=10
    )
    assert (path / "policy" / "config.json").is_file() and (path / "policy" / "model.safetensors").is_file()
    fresh, fresh_learner = build(1)
    ck.restore(ck.load_checkpoint(tmp_path / "run"), fresh, fresh_learner)
    assert all(torch.equal(fresh.state_dict()[k], w) for k, w in policy.state_dict().items())
    # the original policy.path may be gone: the resumed run starts from the checkpoint's own copy
    info = ck.inspect_checkpoint(path)
    assert ck.resume_config(info, ["pipeline.num_updates=5"]).policy.path == str((path / "policy").resolve())
    assert ck.resume_config(info, ["pipeline.num_updates=5", "policy.path=/elsewhere"]).policy.path == "/elsewhere"
    # an actor group's rank 0 writes policy/ from the gathered whole weights, not from its own (sharded) module
    gathered = {k: v + 1 if v.is_floating_point() else v for k, v in policy.export_weights().items()}
    path = ck.Checkpointer(tmp_path / "group", cfg, keep=1).save(
        2, policy, learner, updates=2, env_steps_trained=10, weights=gathered, write_optimizer=lambda d: d.mkdir()
    )
    loaded = VLAPolicy.from_pretrained(path / "policy", spec).state_dict()
    assert all(torch.equal(loaded[k], w) for k, w in gathered.items())
