"""Plain data types shared by every service: what crosses the planes.

Shapes use B = episodes in a batch, T = padded steps per episode, D = obs dim,
A = action dim. Tensors here are CPU tensors unless a caller moves them.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an environment to be built."""

    task: str
    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    max_episode_steps: int


@dataclass
class TrajectoryBatch:
    """B finished episodes from one rollout worker, padded to T steps.

    Step t of episode b is real when t < lengths[b]; padding is zero.
    `versions` stamps every step with the policy version that chose its action.
    """

    obs: torch.Tensor  # [B, T, D] float32, observation before each action
    actions: torch.Tensor  # [B, T, A] float32, raw (unclipped) sampled actions
    log_probs: torch.Tensor  # [B, T] float32, behaviour log-prob of each action
    values: torch.Tensor  # [B, T] float32, behaviour value estimate (0 if no value head)
    rewards: torch.Tensor  # [B, T] float32
    dones: torch.Tensor  # [B, T] bool, True on the last real step of an episode
    versions: torch.Tensor  # [B, T] int64, policy version per step
    lengths: torch.Tensor  # [B] int64, real steps per episode
    terminated: torch.Tensor  # [B] bool, episode ended by the task (not by time limit)
    success: torch.Tensor  # [B] bool, task success at the episode's end
    final_obs: torch.Tensor  # [B, D] float32, observation after the last real step
    group_ids: torch.Tensor  # [B] int64, episodes sharing an initial state share a group id
    worker_rank: int = 0
    epoch: int = 0  # rollout epoch that produced this batch

    TENSOR_FIELDS = (
        "obs", "actions", "log_probs", "values", "rewards", "dones", "versions",
        "lengths", "terminated", "success", "final_obs", "group_ids",
    )

    @property
    def num_episodes(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_steps(self) -> int:
        """Real (unpadded) env steps in the batch."""
        return int(self.lengths.sum())

    def step_mask(self) -> torch.Tensor:
        """[B, T] bool, True on real steps."""
        t = torch.arange(self.obs.shape[1])
        return t[None, :] < self.lengths[:, None]

    def returns(self) -> torch.Tensor:
        """[B] undiscounted episode returns."""
        return (self.rewards * self.step_mask()).sum(dim=1)

    def select(self, keep: torch.Tensor) -> "TrajectoryBatch":
        """The episodes where keep [B] bool is True."""
        return TrajectoryBatch(**{n: getattr(self, n)[keep] for n in self.TENSOR_FIELDS},
                               worker_rank=self.worker_rank, epoch=self.epoch)

    @staticmethod
    def concat(batches: list["TrajectoryBatch"]) -> "TrajectoryBatch":
        """Join batches along B, padding T to the longest."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        t_max = max(b.obs.shape[1] for b in batches)
        out = {}
        for name in TrajectoryBatch.TENSOR_FIELDS:
            parts = []
            for b in batches:
                x = getattr(b, name)
                if x.dim() >= 2 and name not in ("final_obs",) and x.shape[1] != t_max:
                    pad = [0, 0] * (x.dim() - 2) + [0, t_max - x.shape[1]]
                    x = torch.nn.functional.pad(x, pad)
                parts.append(x)
            out[name] = torch.cat(parts, dim=0)
        return TrajectoryBatch(**out, worker_rank=-1, epoch=max(b.epoch for b in batches))
