"""Losses checked against numbers worked out by hand."""

import math

import pytest
import torch

from dvla.algo.losses import clipped_surrogate, value_loss


def test_clipped_surrogate_hand_computed():
    ratios = [1.5, 1.5, 0.5, 0.5, 1.0]
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 2.0])
    # Per element with eps 0.2, max(-A*r, -A*clip(r)):
    #   r=1.5 A=+1: max(-1.5, -1.2) = -1.2   r=1.5 A=-1: max(1.5, 1.2) = 1.5
    #   r=0.5 A=+1: max(-0.5, -0.8) = -0.5   r=0.5 A=-1: max(0.5, 0.8) = 0.8
    #   r=1.0 A=+2: -2.0                      mean = -1.4 / 5 = -0.28
    log_probs = torch.tensor([math.log(r) for r in ratios], requires_grad=True)
    loss, stats = clipped_surrogate(log_probs, torch.zeros(5), advantages, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.28, abs=1e-6)
    assert float(stats["clip_frac"]) == pytest.approx(0.8)
    # (r - 1) - log r: 0.0945349 (r=1.5), 0.1931472 (r=0.5), 0 (r=1); mean = 0.1150728
    assert float(stats["approx_kl"]) == pytest.approx(0.1150728, abs=1e-6)

    loss.backward()
    # Clipped terms carry no gradient; the others give -A * r / N.
    expected = torch.tensor([0.0, 1.5 / 5, -0.5 / 5, 0.0, -2.0 / 5])
    torch.testing.assert_close(log_probs.grad, expected)


def test_clipped_surrogate_on_policy_is_minus_mean_advantage():
    lp = torch.tensor([-1.0, -2.0, 0.3])
    loss, stats = clipped_surrogate(lp, lp.clone(), torch.tensor([1.0, 2.0, -6.0]), clip_eps=0.1)
    assert loss.item() == pytest.approx(1.0)
    assert float(stats["clip_frac"]) == 0.0 and float(stats["approx_kl"]) == 0.0


def test_value_loss_hand_computed():
    # squared errors 1, 0, 4 -> mean 5/3 -> half is 0.8333...
    loss = value_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.0, 5.0]))
    assert loss.item() == pytest.approx(5 / 6)


def test_value_loss_rejects_broadcasting_shapes():
    with pytest.raises(ValueError):
        value_loss(torch.zeros(3, 1), torch.zeros(3))


def test_decoupled_loss_equals_plain_loss_when_behaviour_is_proximal():
    from dvla.algo.losses import behaviour_weights

    g = torch.Generator().manual_seed(0)
    logp = torch.randn(64, generator=g, requires_grad=True)
    old = torch.randn(64, generator=g)
    adv = torch.randn(64, generator=g)
    plain, _ = clipped_surrogate(logp, old, adv, 0.2)
    w = behaviour_weights(old, old.clone(), max_weight=2.0)
    assert torch.equal(w, torch.ones(64))
    decoupled, _ = clipped_surrogate(logp, old, adv, 0.2, weights=w)
    assert torch.equal(plain, decoupled)
    (g1,) = torch.autograd.grad(plain, logp)
    (g2,) = torch.autograd.grad(decoupled, logp)
    assert torch.equal(g1, g2)


def test_behaviour_weights_are_clamped_ratios():
    from dvla.algo.losses import behaviour_weights

    prox = torch.tensor([0.0, 0.0, 1.0])
    behav = torch.tensor([0.0, 1.0, 0.0])
    w = behaviour_weights(prox, behav, max_weight=2.0)
    assert torch.allclose(w, torch.tensor([1.0, math.exp(-1.0), 2.0]))
    # a weighted element scales that element's loss: A=1, ratio=1 -> -1 * w
    loss, _ = clipped_surrogate(torch.zeros(1), torch.zeros(1), torch.ones(1), 0.2, weights=torch.tensor([0.5]))
    assert loss.item() == pytest.approx(-0.5)
