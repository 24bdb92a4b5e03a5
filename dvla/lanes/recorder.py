"""The sampling lane's bookkeeping for one round of one env shard: every env runs one whole episode.

Every env is reset with a given seed (GRPO groups share a seed, so they share
an initial state), then stepped until its episode ends; finished envs are no
longer stepped. Each decision records the behaviour log-prob and the version of
the policy that chose it, and its action chunk of C env steps runs before the
next decision (C = 1 for the MLP). No I/O.
"""

from __future__ import annotations

import torch

from dvla.envs import StepResult
from dvla.policy import ActOutput
from dvla.types import EnvSpec, TrajectoryBatch


class EpisodeRecorder:
    """Buffers of one round of N envs, each running one episode of at most t_max decisions.

    A decision records the observation (state and image) it was made on, the
    policy's sample, log-prob, value and version; its chunk's env steps then add
    their summed reward and step count to that same decision.
    """

    def __init__(self, num_envs: int, spec: EnvSpec, sample_dim: int, chunk_size: int = 1):
        n, d, i = num_envs, spec.obs_dim, spec.image_size
        self.t_max = -(-spec.max_episode_steps // chunk_size)
        t_max = self.t_max
        self.obs = torch.zeros(n, t_max, d)
        self.images = torch.zeros(n, t_max, i, dtype=torch.uint8)
        self.actions = torch.zeros(n, t_max, sample_dim)
        self.log_probs, self.values, self.rewards = torch.zeros(n, t_max), torch.zeros(n, t_max), torch.zeros(n, t_max)
        self.versions = torch.zeros(n, t_max, dtype=torch.int64)
        self.chunk_steps = torch.zeros(n, t_max, dtype=torch.int64)
        self.lengths = torch.zeros(n, dtype=torch.int64)
        self.terminated = torch.zeros(n, dtype=torch.bool)
        self.success = torch.zeros(n, dtype=torch.bool)
        self.final_obs = torch.zeros(n, d)
        self.final_images = torch.zeros(n, i, dtype=torch.uint8)
        self.active = torch.ones(n, dtype=torch.bool)
        self.group_ids = torch.zeros(n, dtype=torch.int64)
        self.current_obs = torch.zeros(n, d)
        self.current_images = torch.zeros(n, i, dtype=torch.uint8)

    def begin(self, obs: torch.Tensor, images: torch.Tensor, group_ids: list[int]) -> None:
        for t in (
            self.obs,
            self.images,
            self.actions,
            self.log_probs,
            self.values,
            self.rewards,
            self.versions,
            self.chunk_steps,
            self.lengths,
            self.final_obs,
            self.final_images,
        ):
            t.zero_()
        self.terminated.zero_()
        self.success.zero_()
        self.active.fill_(True)
        self.group_ids.copy_(torch.as_tensor(group_ids, dtype=torch.int64))
        self.current_obs.copy_(obs)
        self.current_images.copy_(images)

    @property
    def done(self) -> bool:
        return not bool(self.active.any())

    def record_action(self, out: ActOutput, version: int) -> None:
        """out holds all N rows (inactive ones are ignored)."""
        idx, t = self.active.nonzero().squeeze(1), self.lengths[self.active]
        self.obs[idx, t] = self.current_obs[idx]
        self.images[idx, t] = self.current_images[idx]
        self.actions[idx, t] = out.actions.cpu()[idx]
        self.log_probs[idx, t] = out.log_probs.cpu()[idx]
        self.values[idx, t] = out.values.cpu()[idx]
        self.versions[idx, t] = version

    def record_step(self, res: StepResult) -> None:
        """The result of one decision's chunk (env.step, or step_chunk for C > 1)."""
        active = self.active
        idx = active.nonzero().squeeze(1)
        t = self.lengths[idx]
        self.rewards[idx, t] = res.reward[idx]
        self.chunk_steps[idx, t] = res.steps[idx]
        self.lengths[idx] += 1
        done = (res.terminated | res.truncated | (self.lengths >= self.t_max)) & active
        self.terminated |= res.terminated & active
        self.success[done] = res.success[done]
        self.final_obs[done] = res.obs[done]
        self.final_images[done] = res.images[done]
        self.active &= ~done
        # in place: `res` may be a view of shared buffers that the next step overwrites
        self.current_obs[self.active] = res.obs[self.active]
        self.current_images[self.active] = res.images[self.active]

    def finish(self) -> TrajectoryBatch:
        t_used = max(1, int(self.lengths.max()))
        steps = torch.arange(self.t_max)[None, :]
        dones = steps == (self.lengths[:, None] - 1)
        cut = lambda x: x[:, :t_used].clone()  # noqa: E731  (own the memory: the recorder is reused)
        return TrajectoryBatch(
            obs=cut(self.obs),
            actions=cut(self.actions),
            log_probs=cut(self.log_probs),
            values=cut(self.values),
            rewards=cut(self.rewards),
            dones=cut(dones),
            versions=cut(self.versions),
            lengths=self.lengths.clone(),
            terminated=self.terminated.clone(),
            success=self.success.clone(),
            final_obs=self.final_obs.clone(),
            group_ids=self.group_ids.clone(),
            images=cut(self.images),
            final_images=self.final_images.clone(),
            chunk_steps=cut(self.chunk_steps),
        )
