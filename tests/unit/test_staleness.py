import torch

from dvla.algo.staleness import admits, lag_stats, min_version, stale_episodes
from dvla.types import TrajectoryBatch


def batch(versions: list[list[int]], lengths: list[int], groups: list[int]) -> TrajectoryBatch:
    b, t = len(versions), len(versions[0])
    z = torch.zeros(b, t)
    return TrajectoryBatch(
        obs=torch.zeros(b, t, 1),
        actions=torch.zeros(b, t, 1),
        log_probs=z,
        values=z,
        rewards=z,
        dones=torch.zeros(b, t, dtype=torch.bool),
        versions=torch.tensor(versions),
        lengths=torch.tensor(lengths),
        terminated=torch.zeros(b, dtype=torch.bool),
        success=torch.zeros(b, dtype=torch.bool),
        final_obs=torch.zeros(b, 1),
        group_ids=torch.tensor(groups),
    )


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


def test_an_admitted_round_is_never_dropped_as_stale():
    """Admission and the drop rule are one bound: every round admitted with version v, trained by
    an actor at a version no newer than the round, keeps all its episodes."""
    for max_staleness in range(4):
        for round_ in range(8):
            for start in range(min_version(round_, max_staleness), round_ + 2):
                assert admits(start, round_, max_staleness)
                for actor in range(start, round_ + 1):  # the actor trains round r at version <= r
                    # a round's steps run with versions from `start` up to the actor's newest
                    b = batch([[start, actor]], lengths=[2], groups=[0])
                    assert not stale_episodes(b, actor, max_staleness, whole_groups=True).any()
            if round_ - max_staleness > 0:
                assert not admits(round_ - max_staleness - 1, round_, max_staleness)


def test_a_round_started_below_the_bound_would_be_dropped():
    b = batch([[2, 2]], lengths=[2], groups=[0])
    assert not admits(2, round_=4, max_staleness=1)
    assert stale_episodes(b, 4, 1, whole_groups=False).tolist() == [True]


def test_a_step_newer_than_the_actors_version_makes_its_episode_stale():
    """An actor started afresh from an older checkpoint: what a version of the dead process acted is dropped,
    however fresh; padding past an episode's length never counts."""
    b = batch([[3, 4, 9], [5, 5, 5], [5, 6, 6], [4, 5, 0]], lengths=[2, 3, 3, 2], groups=[0, 1, 2, 3])
    assert stale_episodes(b, version=5, max_staleness=100, whole_groups=False).tolist() == [False, False, True, False]
    assert stale_episodes(b, version=6, max_staleness=100, whole_groups=False).tolist() == [False, False, False, False]
    # both rules at once: too old, or newer than the actor
    assert stale_episodes(b, version=5, max_staleness=1, whole_groups=False).tolist() == [True, False, True, False]


def test_a_member_newer_than_the_actor_drops_its_whole_group():
    b = batch([[2, 2], [2, 3], [2, 2], [1, 2]], lengths=[2, 2, 2, 2], groups=[7, 7, 9, 9])
    assert stale_episodes(b, 2, 1, whole_groups=True).tolist() == [True, True, False, False]
    assert stale_episodes(b, 2, 1, whole_groups=False).tolist() == [False, True, False, False]
    assert not stale_episodes(b, 3, 2, whole_groups=True).any()  # at or below the version, within the bound


def test_episodes_at_or_below_the_version_within_the_bound_are_kept():
    for version in range(4):
        for max_staleness in range(3):
            for a in range(max(0, version - max_staleness), version + 1):
                for c in range(a, version + 1):
                    b = batch([[a, c]], lengths=[2], groups=[0])
                    assert not stale_episodes(b, version, max_staleness, whole_groups=True).any(), (version, a, c)
                    newer = batch([[a, version + 1]], lengths=[2], groups=[0])
                    assert stale_episodes(newer, version, max_staleness, whole_groups=True).all()
