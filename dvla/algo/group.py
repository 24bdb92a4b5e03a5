"""One actor rank's share of a global batch, and the group of one (Solo). Pure: no I/O.

K actor ranks hold the global batch as consecutive slices, rank 0's first. A minibatch is a set
of global indices (the same permutation on every rank: same seed, same generator); each rank
trains on the members that fall in its slice and divides its loss sums by the minibatch's global
size, so the gradients summed over ranks are the one-rank gradient.

When the ranks' shares differ (M rollouts over K actors, M not a multiple of K; stale drops),
balance_moves says which rank hands how many whole units (episodes, or GRPO groups) to which,
so that every rank trains on an even share.
"""

from __future__ import annotations

import torch


class Solo:
    """The group of one actor: nothing to reduce, the policy trains as it is (implements ActorGroup)."""

    rank, size, collective_forward, grad_scale = 0, 1, False, 1.0

    def wrap(self, policy: torch.nn.Module) -> torch.nn.Module:
        return policy

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return t

    def full_weights(self, policy: torch.nn.Module) -> dict[str, torch.Tensor]:
        return policy.export_weights()

    def send_batch(self, batch, dst: int) -> None:
        raise RuntimeError("a group of one has no other rank to send to")

    def recv_batch(self, src: int):
        raise RuntimeError("a group of one has no other rank to receive from")


def balance_moves(counts: list[int]) -> list[tuple[int, int, int]]:
    """(src, dst, n) moves of n units that leave every rank with total // K units, the first
    total % K ranks one more; ranks above their share give to ranks below it, in rank order.
    A rank only gives or only receives; counts that are already even need no move."""
    k, total = len(counts), sum(counts)
    if min(counts, default=0) < 0:
        raise ValueError(f"unit counts must not be negative, got {counts}")
    target = [total // k + (1 if r < total % k else 0) for r in range(k)] if k else []
    surplus = [[r, c - t] for r, (c, t) in enumerate(zip(counts, target)) if c > t]
    deficit = [[r, t - c] for r, (c, t) in enumerate(zip(counts, target)) if c < t]
    moves, i, j = [], 0, 0
    while i < len(surplus) and j < len(deficit):
        n = min(surplus[i][1], deficit[j][1])
        moves.append((surplus[i][0], deficit[j][0], n))
        surplus[i][1] -= n
        deficit[j][1] -= n
        i += surplus[i][1] == 0
        j += deficit[j][1] == 0
    return moves


def local_minibatches(perm: torch.Tensor, mb_size: int, offset: int, n_local: int) -> list[torch.Tensor]:
    """This rank's indices (into its slice) of each full minibatch of `perm` (a permutation of the
    global batch); a trailing partial minibatch is skipped, as with one rank."""
    out = []
    for start in range(0, len(perm) - mb_size + 1, mb_size):
        mb = perm[start : start + mb_size]
        mine = mb[(mb >= offset) & (mb < offset + n_local)]
        out.append(mine - offset)
    return out
