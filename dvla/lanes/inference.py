"""The rollout's inference step: one batch of observations from one or more shards, one policy call.

consumes  the current observations of the active envs of `shards` (their recorders)
produces  each shard's action chunk, recorded with the version that chose it, and its next step
thread    the sampling thread; the weight lane's swap happens in slot.current(), so between
          two batches and never inside one
"""

from __future__ import annotations

from typing import Protocol

import torch

from dvla import telemetry
from dvla.lanes.shards import Shard
from dvla.policy import ActOutput, Policy


class PolicySlot(Protocol):
    """The inference copy in use: (policy, version) read together, between two batches."""

    def current(self) -> tuple[Policy, int]: ...


def infer(shards: list[Shard], slot: PolicySlot, device: torch.device, generator: torch.Generator | None) -> None:
    """Act for every active env of `shards` in one batch, then send each shard its chunk."""
    policy, version = slot.current()  # a waiting version is swapped in here, between two batches
    recs = [s.recorder for s in shards]
    obs = torch.cat([r.current_obs[r.active] for r in recs])
    images = torch.cat([r.current_images[r.active] for r in recs])
    with telemetry.span("inference.batch", version=version, batch_size=obs.shape[0], shards=len(shards)):
        out = policy.act(obs.to(device), images.to(device), generator=generator)
    start = 0
    for s, rec in zip(shards, recs):
        n = int(rec.active.sum())
        k, c, a = s.num_envs, out.chunk.shape[1], out.chunk.shape[2]
        full = ActOutput(torch.zeros(k, policy.sample_dim), torch.zeros(k), torch.zeros(k), torch.zeros(k, c, a))
        for name in ("actions", "log_probs", "values", "chunk"):
            getattr(full, name)[rec.active] = getattr(out, name)[start : start + n].cpu().float()
        start += n
        rec.record_action(full, version)
        s.start_step(full.chunk, rec.active)
