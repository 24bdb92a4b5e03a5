"""The sampling lane's unit of work: one rollout epoch of whole episodes.

Every env is reset with a given seed (GRPO groups share a seed, so they share
an initial state), then stepped until its episode ends; finished envs are no
longer stepped. Each step records the behaviour log-prob and the version of
the policy that chose it. `EpisodeRecorder` holds that bookkeeping for a group
of envs; `collect_episodes` drives one env batch in this process, and the
sharded sampler (shards.py) drives one recorder per env shard process.
"""
from __future__ import annotations

import time
from typing import Protocol

import torch

from dvla import telemetry
from dvla.envs import StepResult
from dvla.policy import ActOutput, Policy
from dvla.types import TrajectoryBatch


class PolicySlot(Protocol):
    """The inference copy in use: (policy, version) read together, between two batches."""

    def current(self) -> tuple[Policy, int]: ...


class EpisodeRecorder:
    """Buffers of one epoch of N envs, each running one episode of at most t_max steps."""

    def __init__(self, num_envs: int, t_max: int, obs_dim: int, action_dim: int):
        n, self.t_max = num_envs, t_max
        self.obs = torch.zeros(n, t_max, obs_dim)
        self.actions = torch.zeros(n, t_max, action_dim)
        self.log_probs, self.values, self.rewards = torch.zeros(n, t_max), torch.zeros(n, t_max), torch.zeros(n, t_max)
        self.versions = torch.zeros(n, t_max, dtype=torch.int64)
        self.lengths = torch.zeros(n, dtype=torch.int64)
        self.terminated = torch.zeros(n, dtype=torch.bool)
        self.success = torch.zeros(n, dtype=torch.bool)
        self.final_obs = torch.zeros(n, obs_dim)
        self.active = torch.ones(n, dtype=torch.bool)
        self.group_ids = torch.zeros(n, dtype=torch.int64)
        self.current_obs = torch.zeros(n, obs_dim)

    def begin(self, obs: torch.Tensor, group_ids: list[int]) -> None:
        for t in (self.obs, self.actions, self.log_probs, self.values, self.rewards, self.versions, self.lengths,
                  self.final_obs):
            t.zero_()
        self.terminated.zero_()
        self.success.zero_()
        self.active.fill_(True)
        self.group_ids.copy_(torch.as_tensor(group_ids, dtype=torch.int64))
        self.current_obs.copy_(obs)

    @property
    def done(self) -> bool:
        return not bool(self.active.any())

    def record_action(self, out: ActOutput, version: int) -> None:
        idx, t = self.active.nonzero().squeeze(1), self.lengths[self.active]
        self.obs[idx, t] = self.current_obs[idx]
        self.actions[idx, t] = out.actions.cpu()[idx]
        self.log_probs[idx, t] = out.log_probs.cpu()[idx]
        self.values[idx, t] = out.values.cpu()[idx]
        self.versions[idx, t] = version

    def record_step(self, res: StepResult) -> None:
        active = self.active
        idx = active.nonzero().squeeze(1)
        self.rewards[idx, self.lengths[idx]] = res.reward[idx]
        self.lengths[idx] += 1
        done = (res.terminated | res.truncated | (self.lengths >= self.t_max)) & active
        self.terminated |= res.terminated & active
        self.success[done] = res.success[done]
        self.final_obs[done] = res.obs[done]
        self.active &= ~done
        self.current_obs = torch.where(self.active[:, None], res.obs, self.current_obs)

    def finish(self) -> TrajectoryBatch:
        t_used = max(1, int(self.lengths.max()))
        steps = torch.arange(self.t_max)[None, :]
        dones = steps == (self.lengths[:, None] - 1)
        cut = lambda x: x[:, :t_used].clone()  # noqa: E731  (own the memory: the recorder is reused)
        return TrajectoryBatch(
            obs=cut(self.obs), actions=cut(self.actions), log_probs=cut(self.log_probs), values=cut(self.values),
            rewards=cut(self.rewards), dones=cut(dones), versions=cut(self.versions), lengths=self.lengths.clone(),
            terminated=self.terminated.clone(), success=self.success.clone(), final_obs=self.final_obs.clone(),
            group_ids=self.group_ids.clone(),
        )


def collect_episodes(envs, slot: PolicySlot, seeds: list[int], group_ids: list[int],
                     generator: torch.Generator, device: torch.device, step_delay_s: float = 0.0) -> TrajectoryBatch:
    rec = EpisodeRecorder(envs.num_envs, envs.spec.max_episode_steps, envs.spec.obs_dim, envs.spec.action_dim)
    rec.begin(envs.reset(seeds), group_ids)
    while not rec.done:
        policy, version = slot.current()
        with telemetry.span("inference.batch", version=version, batch_size=envs.num_envs):
            out = policy.act(rec.current_obs.to(device), generator=generator)
        rec.record_action(out, version)
        with telemetry.span("sampling.env_step", num_envs=int(rec.active.sum())):
            res = envs.step(out.actions.cpu(), rec.active.clone())
        if step_delay_s:  # testing: a deliberately slow rollout
            time.sleep(step_delay_s)
        rec.record_step(res)
    return rec.finish()
