"""The sampling lane's unit of work: one rollout epoch of whole episodes.

Every env is reset with a given seed (GRPO groups share a seed, so they share
an initial state), then stepped until its episode ends; finished envs are no
longer stepped. Each step records the behaviour log-prob and the version of
the policy that chose it.
"""
from __future__ import annotations

import time
from typing import Protocol

import torch

from dvla.policy import Policy
from dvla.types import TrajectoryBatch


class PolicySlot(Protocol):
    """The inference copy in use: (policy, version) read together, between two batches."""

    def current(self) -> tuple[Policy, int]: ...


def collect_episodes(envs, slot: PolicySlot, seeds: list[int], group_ids: list[int],
                     generator: torch.Generator, device: torch.device, step_delay_s: float = 0.0) -> TrajectoryBatch:
    n, t_max = envs.num_envs, envs.spec.max_episode_steps
    d, a = envs.spec.obs_dim, envs.spec.action_dim
    obs_buf = torch.zeros(n, t_max, d)
    act_buf = torch.zeros(n, t_max, a)
    logp_buf, val_buf, rew_buf = torch.zeros(n, t_max), torch.zeros(n, t_max), torch.zeros(n, t_max)
    ver_buf = torch.zeros(n, t_max, dtype=torch.int64)
    lengths = torch.zeros(n, dtype=torch.int64)
    terminated = torch.zeros(n, dtype=torch.bool)
    success = torch.zeros(n, dtype=torch.bool)
    final_obs = torch.zeros(n, d)
    active = torch.ones(n, dtype=torch.bool)

    obs = envs.reset(seeds)
    for t in range(t_max):
        policy, version = slot.current()
        out = policy.act(obs.to(device), generator=generator)
        idx = active.nonzero().squeeze(1)
        obs_buf[idx, t] = obs[idx]
        act_buf[idx, t] = out.actions.cpu()[idx]
        logp_buf[idx, t] = out.log_probs.cpu()[idx]
        val_buf[idx, t] = out.values.cpu()[idx]
        ver_buf[idx, t] = version
        res = envs.step(out.actions.cpu(), active)
        if step_delay_s:  # testing: a deliberately slow rollout
            time.sleep(step_delay_s)
        rew_buf[idx, t] = res.reward[idx]
        lengths[idx] += 1
        done = (res.terminated | res.truncated | (t == t_max - 1)) & active
        terminated |= res.terminated & active
        success[done] = res.success[done]
        final_obs[done] = res.obs[done]
        active &= ~done
        obs = torch.where(active[:, None], res.obs, obs)
        if not active.any():
            break
    t_used = int(lengths.max())
    steps = torch.arange(t_max)[None, :]
    dones = steps == (lengths[:, None] - 1)
    return TrajectoryBatch(
        obs=obs_buf[:, :t_used], actions=act_buf[:, :t_used], log_probs=logp_buf[:, :t_used],
        values=val_buf[:, :t_used], rewards=rew_buf[:, :t_used], dones=dones[:, :t_used],
        versions=ver_buf[:, :t_used], lengths=lengths, terminated=terminated, success=success,
        final_obs=final_obs, group_ids=torch.tensor(group_ids, dtype=torch.int64),
    )
