"""Advantage estimators: group-relative (GRPO) and GAE (PPO).

Shapes: B = episodes, T = padded steps per episode. Every row of a [B, T]
tensor is one whole episode; steps at t >= lengths[b] are padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


def grpo_advantages(returns: Tensor, group_ids: Tensor, eps: float = 1e-6) -> Tensor:
    """[B] episode returns -> [B] returns standardised within their group.

    Group ids are arbitrary integers; the std is the population std
    (unbiased=False), so a group of identical returns gets advantage 0.
    """
    if returns.dim() != 1 or returns.shape != group_ids.shape:
        raise ValueError(f"returns {tuple(returns.shape)} and group_ids {tuple(group_ids.shape)} must both be [B]")
    ids, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if (counts < 2).any():
        lonely = ids[counts < 2].tolist()
        raise ValueError(f"GRPO groups need at least 2 episodes; groups {lonely} have 1")
    counts_f = counts.to(returns.dtype)
    mean_g = returns.new_zeros(len(ids)).index_add_(0, inverse, returns) / counts_f
    centered = returns - mean_g[inverse]
    var_g = returns.new_zeros(len(ids)).index_add_(0, inverse, centered.square()) / counts_f
    return centered / (var_g.sqrt()[inverse] + eps)


def gae(
    rewards: Tensor,  # [B, T]
    values: Tensor,  # [B, T] value estimate before each step
    mask: Tensor,  # [B, T] bool, True on real steps
    lengths: Tensor,  # [B] int64
    terminated: Tensor,  # [B] bool
    final_values: Tensor,  # [B] value of the observation after the last real step
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over whole, padded episodes.

    Returns (advantages [B, T], returns [B, T]) with returns = advantages + values;
    both are 0 on padding. An episode cut by the time limit bootstraps from
    final_values; a terminated one does not (the value after a terminal state is 0).
    """
    num_episodes, num_steps = rewards.shape
    if values.shape != rewards.shape or mask.shape != rewards.shape:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and "
            f"mask {tuple(mask.shape)} must have the same [B, T] shape"
        )
    for name, x in (("lengths", lengths), ("terminated", terminated), ("final_values", final_values)):
        if x.shape != (num_episodes,):
            raise ValueError(f"{name} has shape {tuple(x.shape)}, expected [{num_episodes}]")
    mask = mask.bool()
    steps = torch.arange(num_steps, device=rewards.device)
    is_last = steps[None, :] == (lengths - 1)[:, None]  # [B, T]

    bootstrap = torch.where(terminated.bool(), torch.zeros_like(final_values), final_values)
    next_values = torch.cat([values[:, 1:], values.new_zeros(num_episodes, 1)], dim=1)
    next_values = torch.where(is_last, bootstrap[:, None], next_values)
    # Padding may hold garbage; zeroing its deltas keeps it out of the recursion.
    deltas = torch.where(mask, rewards + gamma * next_values - values, torch.zeros_like(rewards))

    advantages = torch.zeros_like(rewards)
    running = rewards.new_zeros(num_episodes)
    for t in reversed(range(num_steps)):
        running = deltas[:, t] + gamma * lam * running * ~is_last[:, t]
        advantages[:, t] = running
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns
