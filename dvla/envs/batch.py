"""The env batch interface: N envs behind one tensor API, and action chunks stepped on any of them.

Pure: torch only (no simulator import), so lanes and tests can hold a StepResult without ManiSkill.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from dvla.types import EnvSpec


@dataclass
class StepResult:
    obs: torch.Tensor  # [N, D] float32, zeros on inactive rows
    reward: torch.Tensor  # [N] float32 (summed over a chunk's steps)
    terminated: torch.Tensor  # [N] bool, ended by the task (ManiSkill: success or fail)
    truncated: torch.Tensor  # [N] bool, hit max_episode_steps
    success: torch.Tensor  # [N] bool
    images: torch.Tensor | None = None  # [N, I] uint8 (I = 0 without a camera), zeros on inactive rows
    steps: torch.Tensor | None = None  # [N] int64 env steps taken (1 per active row for step)

    def __post_init__(self) -> None:
        n = self.obs.shape[0]
        if self.images is None:
            self.images = torch.zeros(n, 0, dtype=torch.uint8, device=self.obs.device)
        if self.steps is None:
            self.steps = torch.ones(n, dtype=torch.int64, device=self.obs.device)


class EnvBatch(Protocol):
    spec: EnvSpec
    num_envs: int
    device: torch.device

    def reset(self, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reset all N envs, env i with seeds[i]; returns state [N, D] float32 and images [N, I] uint8."""
        ...

    def step(self, actions: torch.Tensor, active: torch.Tensor, observe: bool = True) -> StepResult:
        """Step the envs where active[i] ([N] bool) with actions [N, A], clipped to bounds.

        observe=False may skip rendering: obs and images of the result are then zeros.
        """
        ...

    def observe(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Current state [N, D] and images [N, I] of the envs where rows ([N] bool), zeros elsewhere."""
        ...

    def close(self) -> None: ...


def step_chunk(envs: EnvBatch, chunk: torch.Tensor, active: torch.Tensor) -> StepResult:
    """Execute chunk [N, C, A] on the active envs, action j at step j, stopping each env where it ends.

    The result holds each env's last observation, its summed reward, how many
    steps it took, and how (whether) it ended. Only the observation the policy
    will read is rendered: the one after the chunk, or after the step where an
    episode ends (rendering a camera costs ~10-100x a physics step on a CPU).
    """
    if chunk.dim() != 3:
        raise ValueError(f"an action chunk must be [N, C, A], got {list(chunk.shape)}")
    running = active.clone()
    out: StepResult | None = None
    num_steps = chunk.shape[1]
    for j in range(num_steps):
        if not running.any():
            break
        last = j == num_steps - 1
        res = envs.step(chunk[:, j], running, observe=last)
        ended = running & (res.terminated | res.truncated)
        if not last and ended.any():
            obs, images = envs.observe(ended)
            res.obs = torch.where(ended[:, None], obs, res.obs)
            res.images = torch.where(ended[:, None], images, res.images)
        if out is None:
            out = res
            out.steps = running.to(torch.int64)
        else:
            rows = running
            out.reward = out.reward + res.reward
            out.steps = out.steps + rows.to(torch.int64)
            out.obs = torch.where(rows[:, None], res.obs, out.obs)
            out.images = torch.where(rows[:, None], res.images, out.images)
            out.terminated, out.truncated = out.terminated | res.terminated, out.truncated | res.truncated
            out.success = torch.where(rows, res.success, out.success)
        running = running & ~(res.terminated | res.truncated)
    if out is None:  # nothing active: an empty step
        out = envs.step(chunk[:, 0], running)
        out.steps = torch.zeros_like(out.steps)
    return out
