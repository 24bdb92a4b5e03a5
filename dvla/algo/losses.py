"""Policy-gradient losses over flat minibatches of N steps."""

from __future__ import annotations

import torch
from torch import Tensor


def clipped_surrogate(
    log_probs: Tensor,  # [N] under the policy being trained
    old_log_probs: Tensor,  # [N] under the behaviour policy
    advantages: Tensor,  # [N]
    clip_eps: float,
    weights: Tensor | None = None,  # [N] per-step weights, e.g. behaviour_weights(); None = 1
    denom: float | None = None,  # divide sums by this instead of N (a rank's share of a larger minibatch)
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped objective, as a loss to minimise.

    Decoupled PPO (Hilton et al. 2022, as AReaL and RL-VLA3 use it for stale
    data): pass the *proximal* policy's log-probs as `old_log_probs`, so the
    trust region is around a recent policy, and `weights=behaviour_weights(...)`
    to correct for the older policy that actually sampled the steps.

    Stats are detached 0-dim tensors so a caller on GPU decides when to sync:
    'clip_frac' (share of steps with |ratio - 1| > clip_eps) and 'approx_kl'
    (the low-variance estimator mean((r - 1) - log r), as in CleanRL). With `denom`, loss and stats
    are sums over the N steps divided by denom, so shares of one minibatch add up to its mean.
    """
    if not (log_probs.shape == old_log_probs.shape == advantages.shape) or log_probs.dim() != 1:
        raise ValueError(
            f"log_probs {tuple(log_probs.shape)}, old_log_probs {tuple(old_log_probs.shape)} "
            f"and advantages {tuple(advantages.shape)} must all be [N]"
        )
    log_ratio = log_probs - old_log_probs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    per_step = torch.max(unclipped, clipped)
    if weights is not None:
        if weights.shape != per_step.shape:
            raise ValueError(f"weights {tuple(weights.shape)} must be [N] like advantages {tuple(advantages.shape)}")
        per_step = per_step * weights.detach()
    mean = torch.mean if denom is None else (lambda t: t.sum() / denom)
    loss = mean(per_step)
    with torch.no_grad():
        stats = {
            "clip_frac": mean(((ratio - 1.0).abs() > clip_eps).float()),
            "approx_kl": mean((ratio - 1.0) - log_ratio),
        }
    return loss, stats


def value_loss(values: Tensor, returns: Tensor, denom: float | None = None) -> Tensor:
    """0.5 * mean squared error between [N] value predictions and [N] returns (the sum / denom if given)."""
    # Same shape required: [N] vs [N, 1] would silently broadcast to [N, N].
    if values.shape != returns.shape:
        raise ValueError(f"values {tuple(values.shape)} and returns {tuple(returns.shape)} must have the same shape")
    sq = (values - returns).square()
    return 0.5 * (sq.mean() if denom is None else sq.sum() / denom)


def behaviour_weights(prox_log_probs: Tensor, behaviour_log_probs: Tensor, max_weight: float) -> Tensor:
    """[N] importance weights pi_prox / pi_behaviour, clamped above at max_weight (no grad)."""
    if prox_log_probs.shape != behaviour_log_probs.shape:
        raise ValueError(
            f"prox {tuple(prox_log_probs.shape)} and behaviour {tuple(behaviour_log_probs.shape)} "
            "log-probs differ in shape"
        )
    if max_weight <= 0:
        raise ValueError(f"max_weight must be > 0, got {max_weight}")
    with torch.no_grad():
        return (prox_log_probs - behaviour_log_probs).exp().clamp(max=max_weight)
