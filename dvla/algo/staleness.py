"""Staleness, both sides of one bound (max_staleness, the papers' eta). Pure.

    admission (rollout)  round r may start once the policy in use has version >= r - max_staleness
    drop (actor)         an episode whose oldest step is more than max_staleness versions behind
                         the actor's version is dropped, and counted; so is one with a step newer
                         than it (from the versions of an actor process that died)

Rounds are numbered like the versions they are meant for, and the actor trains
round r with version <= r, so an admitted round is never dropped.
"""

from __future__ import annotations

import torch

from dvla.types import TrajectoryBatch


def min_version(round_: int, max_staleness: int) -> int:
    """The oldest policy version round `round_` may start with (v0 at least: only fetched weights run)."""
    return max(0, round_ - max_staleness)


def admits(version: int, round_: int, max_staleness: int) -> bool:
    """Round `round_` may start with policy `version` in use."""
    return version >= min_version(round_, max_staleness)


def too_old(actor_version: int, step_version: int | torch.Tensor, max_staleness: int) -> bool | torch.Tensor:
    """A step taken by `step_version` is too old to train on at `actor_version`."""
    return (actor_version - step_version) > max_staleness


def stale_episodes(b: TrajectoryBatch, version: int, max_staleness: int, whole_groups: bool) -> torch.Tensor:
    """[B] bool: episodes whose oldest step is too old to train on at `version`, or a step newer than it.

    With whole_groups (GRPO), one stale member makes its whole group stale, since
    a group's advantages are only meaningful together.
    """
    big = torch.iinfo(torch.int64).max
    mask = b.step_mask()
    oldest = torch.where(mask, b.versions, torch.full_like(b.versions, big)).min(dim=1).values  # [B]
    newest = torch.where(mask, b.versions, torch.full_like(b.versions, -1)).max(dim=1).values  # [B]
    # newer than the actor's own version: acted by a version of an actor process that died (this one
    # continues from an older checkpoint), whose history is gone
    stale = too_old(version, oldest, max_staleness) | (newest > version)
    if whole_groups and stale.any():
        bad_groups = b.group_ids[stale].unique()
        stale = torch.isin(b.group_ids, bad_groups)
    return stale


def lag_stats(b: TrajectoryBatch, version: int) -> dict[str, float]:
    """Version lag of the real steps: min, mean and max of version - step version."""
    lag = (version - b.versions[b.step_mask()]).float()
    return {"staleness_min": float(lag.min()), "staleness_mean": float(lag.mean()), "staleness_max": float(lag.max())}
