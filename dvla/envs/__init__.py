"""Environments: ManiSkill3 batches behind the `EnvBatch` interface."""

from dvla.envs.maniskill import (
    CpuEnvBatch,
    EnvBatch,
    GpuEnvBatch,
    StepResult,
    env_spec,
    instruction_for,
    make_env_batch,
    step_chunk,
)

__all__ = [
    "CpuEnvBatch",
    "EnvBatch",
    "GpuEnvBatch",
    "StepResult",
    "env_spec",
    "instruction_for",
    "make_env_batch",
    "step_chunk",
]
