import torch

from dvla.algo.staleness import lag_stats, stale_episodes
from dvla.types import TrajectoryBatch


def batch(versions: list[list[int]], lengths: list[int], groups: list[int]) -> TrajectoryBatch:
    b, t = len(versions), len(versions[0])
    z = torch.zeros(b, t)
    return TrajectoryBatch(obs=torch.zeros(b, t, 1), actions=torch.zeros(b, t, 1), log_probs=z, values=z, rewards=z,
                           dones=torch.zeros(b, t, dtype=torch.bool), versions=torch.tensor(versions),
                           lengths=torch.tensor(lengths), terminated=torch.zeros(b, dtype=torch.bool),
                           success=torch.zeros(b, dtype=torch.bool), final_obs=torch.zeros(b, 1),
                           group_ids=torch.tensor(groups))


def test_oldest_real_step_decides_and_padding_is_ignored():
    b = batch([[3, 4, 0], [5, 5, 5], [2, 5, 5]], lengths=[2, 3, 3], groups=[0, 1, 2])
    assert stale_episodes(b, version=5, max_staleness=2, whole_groups=False).tolist() == [False, False, True]
    assert stale_episodes(b, version=5, max_staleness=3, whole_groups=False).tolist() == [False, False, False]


def test_one_stale_member_drops_its_group():
    b = batch([[5, 5], [1, 5], [5, 5], [5, 5]], lengths=[2, 2, 2, 2], groups=[7, 7, 9, 9])
    assert stale_episodes(b, 5, 1, whole_groups=True).tolist() == [True, True, False, False]
    assert stale_episodes(b, 5, 1, whole_groups=False).tolist() == [False, True, False, False]


def test_lag_stats_and_select():
    b = batch([[3, 4, 0], [5, 5, 5]], lengths=[2, 3], groups=[0, 1])
    stats = lag_stats(b, 5)
    assert stats["staleness_min"] == 0.0 and stats["staleness_max"] == 2.0
    assert abs(stats["staleness_mean"] - 3 / 5) < 1e-6
    kept = b.select(torch.tensor([False, True]))
    assert kept.num_episodes == 1 and kept.versions.tolist() == [[5, 5, 5]]
