"""Vectorised advantages checked against naive per-episode loops."""

import pytest
import torch

from dvla.algo.advantages import gae, grpo_advantages


def naive_grpo(returns: list[float], group_ids: list[int], eps: float = 1e-6) -> list[float]:
    out = []
    for r, g in zip(returns, group_ids):
        members = [x for x, h in zip(returns, group_ids) if h == g]
        mean = sum(members) / len(members)
        std = (sum((x - mean) ** 2 for x in members) / len(members)) ** 0.5
        out.append((r - mean) / (std + eps))
    return out


def naive_gae(rewards, values, length, terminated, final_value, gamma, lam):
    """One episode as Python lists; returns (advantages, returns) of its real steps."""
    advantages = [0.0] * length
    running = 0.0
    for t in reversed(range(length)):
        if t == length - 1:
            next_value = 0.0 if terminated else final_value
        else:
            next_value = values[t + 1]
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, [a + v for a, v in zip(advantages, values[:length])]


def test_grpo_matches_naive_with_arbitrary_group_ids():
    g = torch.Generator().manual_seed(0)
    group_ids = torch.tensor([7, -3, 7, 100, -3, 100, 7, 42, 42, 42], dtype=torch.int64)
    returns = torch.randn(len(group_ids), generator=g, dtype=torch.float64)
    expected = naive_grpo(returns.tolist(), group_ids.tolist())
    torch.testing.assert_close(grpo_advantages(returns, group_ids), torch.tensor(expected, dtype=torch.float64))


def test_grpo_identical_returns_give_zero():
    adv = grpo_advantages(torch.tensor([1.0, 1.0, 2.0, 4.0]), torch.tensor([0, 0, 1, 1]))
    torch.testing.assert_close(adv, torch.tensor([0.0, 0.0, -1.0, 1.0]), atol=1e-5, rtol=0)


def test_grpo_rejects_singleton_group():
    with pytest.raises(ValueError, match=r"\[5\]"):
        grpo_advantages(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 5]))


def test_gae_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    num_episodes, num_steps, gamma, lam = 9, 12, 0.8, 0.9
    lengths = torch.tensor([1, 2, 5, 12, 12, 7, 3, 1, 9])
    terminated = torch.tensor([True, False, True, False, True, False, True, False, False])
    # Padding holds garbage on purpose: gae must ignore it.
    rewards = torch.randn(num_episodes, num_steps, generator=g, dtype=torch.float64)
    values = torch.randn(num_episodes, num_steps, generator=g, dtype=torch.float64)
    final_values = torch.randn(num_episodes, generator=g, dtype=torch.float64)
    mask = torch.arange(num_steps)[None, :] < lengths[:, None]

    adv, ret = gae(rewards, values, mask, lengths, terminated, final_values, gamma, lam)

    for b in range(num_episodes):
        length = int(lengths[b])
        exp_adv, exp_ret = naive_gae(
            rewards[b].tolist(), values[b].tolist(), length, bool(terminated[b]), float(final_values[b]), gamma, lam
        )
        torch.testing.assert_close(adv[b, :length], torch.tensor(exp_adv, dtype=torch.float64))
        torch.testing.assert_close(ret[b, :length], torch.tensor(exp_ret, dtype=torch.float64))
        assert (adv[b, length:] == 0).all() and (ret[b, length:] == 0).all()


def test_gae_bootstraps_only_truncated_episodes():
    rewards = torch.tensor([[1.0], [1.0]])
    values = torch.tensor([[0.5], [0.5]])
    final_values = torch.tensor([2.0, 2.0])
    adv, ret = gae(
        rewards,
        values,
        torch.ones(2, 1, dtype=torch.bool),
        torch.tensor([1, 1]),
        torch.tensor([True, False]),
        final_values,
        gamma=0.9,
        lam=0.95,
    )
    # terminated: 1 - 0.5; truncated: 1 + 0.9 * 2 - 0.5
    torch.testing.assert_close(adv, torch.tensor([[0.5], [2.3]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0], [2.8]]))
