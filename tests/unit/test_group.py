"""The pure parts of an actor group: which rows a rank trains, and how uneven shares are evened out."""

from __future__ import annotations

import itertools

import pytest
import torch

from dvla.algo.group import balance_moves, local_minibatches


def test_the_ranks_minibatches_partition_each_global_minibatch():
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    slices = [(0, 4), (4, 3), (7, 3)]  # (offset, rows) of three ranks
    parts = [local_minibatches(perm, 3, off, n) for off, n in slices]
    assert all(len(p) == 3 for p in parts)  # 10 // 3 full minibatches; the trailing row is skipped
    for m in range(3):
        rows = sorted(int(i) + off for (off, _), p in zip(slices, parts) for i in p[m])
        assert rows == sorted(perm[3 * m : 3 * m + 3].tolist())


@pytest.mark.parametrize("counts", [[7, 2, 2], [24, 8, 5], [0, 0, 9], [5, 5], [1, 0], [3, 3, 3, 4], [0, 0]])
def test_moves_even_the_shares_out(counts):
    moves = balance_moves(counts)
    after = list(counts)
    for src, dst, n in moves:
        assert n > 0 and src != dst
        after[src] -= n
        after[dst] += n
    total, k = sum(counts), len(counts)
    assert after == [total // k + (r < total % k) for r in range(k)]
    givers, takers = {m[0] for m in moves}, {m[1] for m in moves}
    assert not givers & takers  # a rank only gives or only takes
    assert sum(n for *_, n in moves) == sum(max(c - a, 0) for c, a in zip(counts, after))  # nothing moved twice


def test_even_shares_need_no_move():
    for counts in itertools.product(range(3), repeat=2):
        if counts[0] in (counts[1], counts[1] + 1):
            assert balance_moves(list(counts)) == []


def test_negative_counts_are_refused():
    with pytest.raises(ValueError, match="negative"):
        balance_moves([3, -1])
