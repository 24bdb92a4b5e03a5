"""One actor rank's share of a global batch, and the group of one (Solo). Pure: no I/O.

K actor ranks hold the global batch as consecutive slices, rank 0's first. A minibatch is a set
of global indices (the same permutation on every rank: same seed, same generator); each rank
trains on the members that fall in its slice and divides its loss sums by the minibatch's global
size, so the gradients summed over ranks are the one-rank gradient.
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


def local_minibatches(perm: torch.Tensor, mb_size: int, offset: int, n_local: int) -> list[torch.Tensor]:
    """This rank's indices (into its slice) of each full minibatch of `perm` (a permutation of the
    global batch); a trailing partial minibatch is skipped, as with one rank."""
    out = []
    for start in range(0, len(perm) - mb_size + 1, mb_size):
        mb = perm[start : start + mb_size]
        mine = mb[(mb >= offset) & (mb < offset + n_local)]
        out.append(mine - offset)
    return out
