"""The sampling lane, one round of an in-process shard, against a small fake env batch with known episode ends."""

from __future__ import annotations

import threading

import torch

from dvla.algo.batching import DynamicBatcher
from dvla.config import MlpConfig, PolicyConfig
from dvla.envs import StepResult
from dvla.inproc import SetControl
from dvla.lanes.sampling import Outcome, Sampler
from dvla.lanes.shards import ShardPool
from dvla.policy import build_policy
from dvla.types import EnvSpec


class OneRound:
    """A sink that keeps the first round and stops the lane."""

    def __init__(self, stop: threading.Event):
        self.stop, self.batches = stop, []

    def send(self, batch):
        self.batches.append(batch)
        self.stop.set()

    def send_end(self, epoch_end=None):
        pass


def collect_episodes(envs, slot, seeds, group_ids, generator, device):
    """One round of `envs` through the sampling lane (the round's seeds and group ids as given)."""
    stop = threading.Event()
    sink = OneRound(stop)
    sampler = Sampler(
        ShardPool.local(envs),
        slot,
        SetControl(),
        lambda r, s, k: (seeds, group_ids),
        max_staleness=0,
        batcher=DynamicBatcher(envs.num_envs, 0.0),
        device=device,
        generator=generator,
        stop=stop,
    )
    assert sampler.run(sink, rank=1, should_yield=lambda: False) == Outcome.STOP
    (batch,) = sink.batches
    assert batch.worker_rank == 1 and sampler.counts.episodes_sent == envs.num_envs
    return batch


class CountingEnvs:
    """Env i terminates (successfully) after ends[i] steps; obs = [step count, env id]."""

    def __init__(self, ends: list[int], max_steps: int):
        self.ends, self.num_envs = ends, len(ends)
        self.spec = EnvSpec("Fake-v0", 2, 1, (-1.0,), (1.0,), max_steps)
        self.steps = torch.zeros(self.num_envs)
        self.stepped_inactive = False

    def _obs(self):
        return torch.stack([self.steps, torch.arange(self.num_envs, dtype=torch.float32)], dim=1)

    def reset(self, seeds):
        self.steps.zero_()
        return self._obs(), torch.zeros(self.num_envs, 0, dtype=torch.uint8)

    def observe(self, rows):
        return self._obs() * rows[:, None], torch.zeros(self.num_envs, 0, dtype=torch.uint8)

    def step(self, actions, active, observe=True):
        self.steps += active.float()
        term = torch.tensor([s >= e for s, e in zip(self.steps.tolist(), self.ends)]) & active
        return StepResult(
            obs=self._obs(),
            reward=active.float(),
            terminated=term,
            truncated=torch.zeros(self.num_envs, dtype=torch.bool),
            success=term,
        )


class Slot:
    """A weight lane holding version 7 whose version 8 arrives between two inference batches."""

    background, final = False, False

    def __init__(self, policy):
        self.policy, self.version, self.calls = policy, 7, 0

    def wait_loaded(self, min_version, timeout_s=None, interrupt=None):
        return True

    def current(self):
        self.calls += 1
        if self.calls == 4:  # call 1 admits the round and sizes the recorder
            self.version = 8
        return self.policy, self.version


def test_episodes_end_where_the_env_says():
    envs = CountingEnvs(ends=[2, 5, 100], max_steps=6)
    slot = Slot(build_policy(PolicyConfig(mlp=MlpConfig(hidden_sizes=(8,))), envs.spec))
    b = collect_episodes(envs, slot, [0, 1, 2], [10, 11, 12], torch.Generator().manual_seed(0), torch.device("cpu"))
    assert b.lengths.tolist() == [2, 5, 6]
    assert b.terminated.tolist() == [True, True, False] and b.success.tolist() == [True, True, False]
    assert b.returns().tolist() == [2.0, 5.0, 6.0]
    assert b.dones.sum(1).tolist() == [1, 1, 1] and b.dones[0, 1] and b.dones[2, 5]
    assert b.obs[1, :5, 0].tolist() == [0, 1, 2, 3, 4]  # obs before each action
    assert b.final_obs[:, 0].tolist() == [2, 5, 6]
    assert (b.obs[0, 2:] == 0).all() and (b.log_probs[0, 2:] == 0).all()  # padding
    # each step carries the version that chose its action
    assert b.versions[2].tolist() == [7, 7, 8, 8, 8, 8]
    assert b.group_ids.tolist() == [10, 11, 12]
    # behaviour log-probs are those of the policy for the recorded actions
    m = b.step_mask()
    out = slot.policy.evaluate(b.obs[m], b.actions[m])
    assert torch.allclose(out.log_probs, b.log_probs[m], atol=1e-5)


class RepeatChunks(torch.nn.Module):
    """A policy that repeats the MLP's action over a chunk of C steps."""

    def __init__(self, inner, chunk_size: int):
        super().__init__()
        self.inner, self.chunk_size, self.sample_dim = inner, chunk_size, inner.sample_dim

    def act(self, obs, images=None, instructions=None, *, deterministic=False, generator=None):
        out = self.inner.act(obs, generator=generator)
        out.chunk = out.actions[:, None, :].expand(-1, self.chunk_size, -1)
        return out


def test_chunks_run_c_steps_per_decision_and_stop_where_the_episode_ends():
    envs = CountingEnvs(ends=[2, 5, 100], max_steps=6)
    slot = Slot(RepeatChunks(build_policy(PolicyConfig(mlp=MlpConfig(hidden_sizes=(8,))), envs.spec), chunk_size=3))
    b = collect_episodes(envs, slot, [0, 1, 2], [10, 11, 12], torch.Generator().manual_seed(0), torch.device("cpu"))
    # env 0 ends inside its first chunk, env 1 inside its second, env 2 hits ceil(6 / 3) decisions
    assert b.lengths.tolist() == [1, 2, 2]
    assert b.chunk_steps.tolist() == [[2, 0], [3, 2], [3, 3]]
    assert b.episode_steps().tolist() == [2, 5, 6] and b.num_steps == 13 and b.num_decisions == 5
    assert b.returns().tolist() == [2.0, 5.0, 6.0]  # a decision's reward sums its chunk's steps
    assert b.obs[1, :2, 0].tolist() == [0, 3]  # observations at decision points only
    assert b.final_obs[:, 0].tolist() == [2, 5, 6]
    assert b.versions[2].tolist() == [7, 7]  # one version per chunk
