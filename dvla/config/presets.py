"""Presets: named starting points for a run, each a plain function that returns a RunConfig.

`load_config` starts from one of PRESETS (by default 'pushcube'), then applies a YAML file and
`section.field=value` overrides on top.
"""

from __future__ import annotations

from dataclasses import replace

from dvla.config.policy import PolicyConfig, VlaConfig
from dvla.config.sections import AlgoConfig, EnvConfig, PipelineConfig, RunConfig


def preset_pushcube() -> RunConfig:
    """The default: PPO on PushCube-v1 state obs, 2 rollout workers x 16 envs, ~350k env steps, ~9 min on 2 cores."""
    return RunConfig(name="pushcube")


def preset_pushcube_grpo() -> RunConfig:
    return RunConfig(name="pushcube-grpo", algo=AlgoConfig(name="grpo", group_size=4))


def preset_smoke() -> RunConfig:
    """A run of seconds, for tests and a first look."""
    return RunConfig(
        name="smoke",
        env=EnvConfig(num_envs=4, max_episode_steps=20),
        pipeline=PipelineConfig(num_rollout_workers=1, num_updates=3),
    )


def preset_pickcube_vla_tiny(head: str = "discrete") -> RunConfig:
    """The tiny VLA on PickCube-v1 from 128x128 camera images and an instruction; trains on a CPU.

    End-effector deltas (4 dims) keep the action chunk short; one rollout worker with
    two env shard processes, since CPU rendering (lavapipe) is the slowest stage here.
    """
    return RunConfig(
        name=f"pickcube-vla-tiny{'' if head == 'discrete' else '-' + head}",
        env=EnvConfig(
            task="PickCube-v1",
            obs_mode="rgb",
            image_size=128,
            control_mode="pd_ee_delta_pos",
            num_envs=8,
            max_episode_steps=50,
        ),
        policy=PolicyConfig(name="vla", chunk_size=4, vla=VlaConfig(size="tiny", action_head=head)),
        # measured on 2 CPU cores: ~50 env steps/s, 60 updates in ~9 min, mean return 2.9 -> 3.7
        algo=AlgoConfig(lr=2e-4, update_epochs=4, num_minibatches=2),
        pipeline=PipelineConfig(mode="swimlane", num_rollout_workers=1, num_shards=2, num_updates=60),
    )


def preset_pickcube_vla_small() -> RunConfig:
    """The ~100M-parameter VLA on PickCube-v1: for a GPU (bf16, physx_cuda), slow on a CPU."""
    cfg = preset_pickcube_vla_tiny()
    policy = replace(cfg.policy, vla=replace(cfg.policy.vla, size="small"))
    return replace(cfg, name="pickcube-vla-small", policy=policy, env=replace(cfg.env, num_envs=32))


PRESETS = {
    "pushcube": preset_pushcube,
    "pushcube-grpo": preset_pushcube_grpo,
    "smoke": preset_smoke,
    "pickcube-vla-tiny": preset_pickcube_vla_tiny,
    "pickcube-vla-tiny-flow": lambda: preset_pickcube_vla_tiny("flow"),
    "pickcube-vla-small": preset_pickcube_vla_small,
}
