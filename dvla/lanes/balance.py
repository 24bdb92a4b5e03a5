"""Evening out a global batch over the actor group: whole units handed between actor ranks.

    consumes  this rank's share of a global batch, as its home rollouts sent it
    produces  an even share: every rank ends with total // K units (the first total % K one more)
    thread    the actor's training thread, between gathering a global batch and preparing it

Rollouts send to a home actor (point-to-point). When M rollouts do not pair up with K actors
(M not a multiple of K), or stale drops thinned one rank's share, the shares differ and the rank
with the most would set every update's pace. The ranks then hand whole units (an episode; for
GRPO a whole group, which is never split) from the fullest to the emptiest, point to point in
the actor group, in the order dvla.algo.group.balance_moves gives on every rank alike: D-VLA's
all-to-all step, reduced to the moves that are needed. Each moved piece travels as one data-plane
message (ActorGroup.send_batch), so it keeps its rollout, round and trace.

Episodes stay on the ledger of the rank that received them from the wire; the group trains the
global batch together, so each rank counts as trained what it received.
"""

from __future__ import annotations

import torch

from dvla.algo.group import balance_moves
from dvla.ports import ActorGroup
from dvla.types import TrajectoryBatch


def units(b: TrajectoryBatch, whole_groups: bool) -> int:
    """Episodes, or (GRPO) the groups they form."""
    return int(b.group_ids.unique().numel()) if whole_groups else b.num_episodes


def split_last(b: TrajectoryBatch, n: int, whole_groups: bool) -> tuple[TrajectoryBatch, TrajectoryBatch]:
    """(kept, given): the last n units of `b` given away, the rest kept; groups stay whole."""
    if whole_groups:
        ids = list(dict.fromkeys(b.group_ids.tolist()))  # in order of first appearance
        give = torch.isin(b.group_ids, torch.tensor(ids[len(ids) - n :], dtype=b.group_ids.dtype))
    else:
        give = torch.zeros(b.num_episodes, dtype=torch.bool)
        give[b.num_episodes - n :] = True
    return b.select(~give), b.select(give)


def take_units(batches: list[TrajectoryBatch], n: int, whole_groups: bool) -> list[TrajectoryBatch]:
    """Remove n units from the end of `batches` (in place, splitting at most one batch); returned."""
    given: list[TrajectoryBatch] = []
    while n:
        b = batches.pop()
        u = units(b, whole_groups)
        if u > n:
            b, part = split_last(b, n, whole_groups)
            batches.append(b)
            given.append(part)
            break
        given.append(b)
        n -= u
    return given


def even_out(group: ActorGroup, batches: list[TrajectoryBatch], whole_groups: bool) -> tuple[list, int]:
    """This rank's batches after the group has evened its shares out; and the units it moved
    (given or received). A collective: every rank of the group calls it once per global batch."""
    counts = torch.zeros(group.size, dtype=torch.int64)
    counts[group.rank] = sum(units(b, whole_groups) for b in batches)
    counts = group.all_reduce(counts).tolist()
    batches, moved = list(batches), 0
    for src, dst, n in balance_moves(counts):
        if group.rank == src:
            for b in take_units(batches, n, whole_groups):
                group.send_batch(b, dst)
            moved += n
        elif group.rank == dst:
            got = 0
            while got < n:
                b = group.recv_batch(src)
                batches.append(b)
                got += units(b, whole_groups)
            if got != n:
                raise RuntimeError(f"actor rank {src} handed over {got} units, the plan said {n}")
            moved += n
    return batches, moved
