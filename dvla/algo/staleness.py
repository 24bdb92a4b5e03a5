"""Staleness: which episodes are too old to train on, and how old a batch is. Pure."""
from __future__ import annotations

import torch

from dvla.types import TrajectoryBatch


def stale_episodes(b: TrajectoryBatch, version: int, max_staleness: int, whole_groups: bool) -> torch.Tensor:
    """[B] bool: episodes whose oldest step is more than max_staleness versions behind `version`.

    With whole_groups (GRPO), one stale member makes its whole group stale, since
    a group's advantages are only meaningful together.
    """
    big = torch.iinfo(torch.int64).max
    oldest = torch.where(b.step_mask(), b.versions, torch.full_like(b.versions, big)).min(dim=1).values  # [B]
    stale = (version - oldest) > max_staleness
    if whole_groups and stale.any():
        bad_groups = b.group_ids[stale].unique()
        stale = torch.isin(b.group_ids, bad_groups)
    return stale


def lag_stats(b: TrajectoryBatch, version: int) -> dict[str, float]:
    """Version lag of the real steps: min, mean and max of version - step version."""
    lag = (version - b.versions[b.step_mask()]).float()
    return {"staleness_min": float(lag.min()), "staleness_mean": float(lag.mean()), "staleness_max": float(lag.max())}
