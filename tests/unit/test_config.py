"""Config: presets, YAML and CLI overrides, and errors that name the field."""

from __future__ import annotations

import pytest

from dvla.config import PRESETS, RunConfig, describe, load_config, to_yaml


def test_presets_validate():
    for name, make in PRESETS.items():
        assert isinstance(make().validate(), RunConfig), name


def test_overrides_and_yaml(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("algo:\n  lr: 0.001\nenv:\n  num_envs: 4\n")
    cfg = load_config(f, ["algo.lr=5e-4", "policy.mlp.hidden_sizes=[32, 32]", "pipeline.num_updates=7"])
    assert cfg.algo.lr == 5e-4 and cfg.env.num_envs == 4
    assert cfg.policy.mlp.hidden_sizes == (32, 32) and cfg.pipeline.num_updates == 7


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["algo.name=grpo", "policy.mlp.hidden_sizes=[8]"])
    f = tmp_path / "c.yaml"
    f.write_text(to_yaml(cfg))
    assert load_config(f) == cfg


@pytest.mark.parametrize(
    "override,field",
    [
        ("algo.lr=-1", "algo.lr"),
        ("algo.lr=fast", "algo.lr"),
        ("algo.name=dqn", "algo.name"),
        ("algo.nme=ppo", "algo.nme"),
        ("env.num_envs=0", "env.num_envs"),
        ("env.obs_mode=rgb", "env.obs_mode"),
        ("pipeline.mode=turbo", "pipeline.mode"),
        ("policy.mlp.hidden_sizes=[]", "policy.mlp.hidden_sizes"),
        ("control.port=70000", "control.port"),
        ("pipeline.num_actors=3", "pipeline.num_actors"),
        ("actor.strategy=zero3", "actor.strategy"),
        ("algo=3", "algo"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ValueError, match=f"'{field}'"):
        load_config(None, [override])


def test_grpo_needs_whole_groups():
    with pytest.raises(ValueError, match="env.num_envs"):
        load_config(None, ["algo.name=grpo", "algo.group_size=3", "env.num_envs=8"])


def test_missing_file_and_unknown_preset(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="unknown preset"):
        load_config(None, preset="nope")


def test_every_field_is_documented():
    undocumented = [
        line for line in describe() if line.rstrip().endswith("\n      ") or line.splitlines()[1].strip() == ""
    ]
    assert not undocumented


def test_modes_add_one_strategy_each():
    p = lambda mode, *o: load_config(None, [f"pipeline.mode={mode}", *o]).pipeline  # noqa: E731
    assert (p("sync").max_staleness_in_force, p("sync").pinned, p("sync").sharded) == (0, False, False)
    assert (p("disaggregated").max_staleness_in_force, p("disaggregated").pinned) == (0, True)
    assert (p("train_async").max_staleness_in_force, p("train_async").sharded) == (1, False)
    assert p("rollout_async").sharded and not p("rollout_async").streamer
    assert p("streamer").streamer and not p("streamer").background_weights
    assert p("swimlane").background_weights and p("swimlane").sharded
    assert not p("swimlane", "pipeline.placement=colocated").pinned
    assert p("sync", "pipeline.placement=disaggregated").pinned
    with pytest.raises(ValueError, match="'pipeline.max_staleness'"):
        load_config(None, ["pipeline.mode=train_async", "pipeline.max_staleness=0"])
    with pytest.raises(ValueError, match="'env.num_envs'"):
        load_config(None, ["pipeline.mode=rollout_async", "pipeline.num_shards=3", "env.num_envs=16"])


def test_config_fields_are_also_flags():
    from dvla.cli import dashed_overrides

    argv = ["run", "--preset", "smoke", "--policy.path", "/tmp/vla", "--algo.lr=1e-3", "env.num_envs=2"]
    assert dashed_overrides(argv) == [
        "run",
        "--preset",
        "smoke",
        "policy.path=/tmp/vla",
        "algo.lr=1e-3",
        "env.num_envs=2",
    ]
    with pytest.raises(ValueError, match="needs a value"):
        dashed_overrides(["run", "--policy.path"])


def test_dvla_run_refuses_a_policy_path_that_is_not_a_vla_checkpoint(tmp_path, capsys):
    from dvla.cli import main

    rc = main(["run", "--preset", "pickcube-vla-tiny", "--policy.path", str(tmp_path / "missing")])
    err = capsys.readouterr().err
    assert rc == 2 and "'policy.path'" in err and "does not exist" in err
    (tmp_path / "other").mkdir()
    (tmp_path / "other/config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "other/model.safetensors").write_bytes(b"")
    rc = main(["run", "--preset", "pickcube-vla-tiny", "--policy.path", str(tmp_path / "other")])
    err = capsys.readouterr().err
    assert rc == 2 and "'policy.path'" in err and "bert" in err


def test_policy_family_sections():
    vla = load_config(None, preset="pickcube-vla-tiny-flow").policy
    assert (vla.name, vla.family, vla.vla.action_head) == ("vla", vla.vla, "flow")
    assert vla.summary() == "vla-tiny (flow head, chunks of 4)"
    assert load_config(None).policy.summary() == "mlp [256, 256]"
    with pytest.raises(ValueError, match="'policy.chunk_size'.*one step at a time"):
        load_config(None, ["policy.chunk_size=4"])
    with pytest.raises(ValueError, match="'policy.vla.action_head'"):
        load_config(None, ["policy.vla.action_head=diffusion"], preset="pickcube-vla-tiny")
    with pytest.raises(ValueError, match="'env.obs_mode'.*the vla policy reads camera images"):
        load_config(None, ["policy.name=vla"])


def test_flat_policy_keys_still_load(tmp_path, caplog):
    """Configs written before the family sections (run folders, checkpoints) load into them, with a warning."""
    f = tmp_path / "old.yaml"
    f.write_text("policy:\n  name: vla\n  size: tiny\n  action_head: flow\n  flow_steps: 3\n  chunk_size: 2\n")
    with caplog.at_level("WARNING", logger="dvla.config"):
        cfg = load_config(f, ["policy.vla.flow_steps=5"], preset="pickcube-vla-tiny")
    assert (cfg.policy.vla.action_head, cfg.policy.vla.flow_steps, cfg.policy.chunk_size) == ("flow", 5, 2)
    assert "'policy.action_head' is now 'policy.vla.action_head'" in caplog.text
    old = load_config(None, ["policy.hidden_sizes=[32]", "policy.init_log_std=-1"])
    assert (old.policy.mlp.hidden_sizes, old.policy.mlp.init_log_std) == ((32,), -1.0)
    both = load_config(None, ["policy.hidden_sizes=[32]", "policy.mlp.hidden_sizes=[64]"])
    assert both.policy.mlp.hidden_sizes == (64,)  # the new spelling wins


def test_an_actor_group_in_the_headline_mode():
    assert load_config(None, ["pipeline.mode=swimlane", "pipeline.num_actors=2"]).pipeline.num_actors == 2
