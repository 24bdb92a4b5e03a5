"""Environments: ManiSkill3 batches (maniskill.py) behind the `EnvBatch` interface (batch.py)."""

from dvla.envs.batch import EnvBatch, StepResult, step_chunk
from dvla.envs.maniskill import CpuEnvBatch, GpuEnvBatch, env_spec, instruction_for, make_env_batch

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
