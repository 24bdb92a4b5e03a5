"""Gaussian MLP policy on state observations, initialised like CleanRL's
ppo_continuous_action: separate Tanh actor and critic trunks, orthogonal init,
a state-independent learnable log-std, and unsquashed actions (the env clips).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Normal

from dvla.config import PolicyConfig
from dvla.policy.base import ActOutput, EvalOutput, Policy
from dvla.types import EnvSpec


def _linear(in_dim: int, out_dim: int, std: float) -> nn.Linear:
    layer = nn.Linear(in_dim, out_dim)
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


def _mlp(in_dim: int, hidden_sizes: tuple[int, ...], out_dim: int, out_std: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [_linear(in_dim, width, math.sqrt(2)), nn.Tanh()]
        in_dim = width
    layers.append(_linear(in_dim, out_dim, out_std))
    return nn.Sequential(*layers)


class MLPPolicy(Policy):
    """State MLP; ignores `instructions`. Initialisation draws from torch's global RNG."""

    def __init__(self, cfg: PolicyConfig, spec: EnvSpec):
        super().__init__()
        self.obs_dim = spec.obs_dim
        self.action_dim = spec.action_dim
        self.chunk_size, self.sample_dim = 1, spec.action_dim
        # Small last-layer std keeps initial means near 0, so early actions are
        # driven by log_std rather than by a random trunk.
        self.actor_mean = _mlp(spec.obs_dim, cfg.mlp.hidden_sizes, spec.action_dim, 0.01)
        self.actor_log_std = nn.Parameter(torch.full((spec.action_dim,), float(cfg.mlp.init_log_std)))
        self.critic = _mlp(spec.obs_dim, cfg.mlp.hidden_sizes, 1, 1.0) if cfg.value_head else None

    def _check_obs(self, obs: Tensor) -> None:
        if obs.dim() != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"obs has shape {tuple(obs.shape)}, expected [N, {self.obs_dim}]")

    def _dist(self, obs: Tensor) -> Normal:
        mean = self.actor_mean(obs)
        return Normal(mean, self.actor_log_std.exp().expand_as(mean))

    def value(self, obs: Tensor, images: Tensor | None = None, instructions: list[str] | None = None) -> Tensor:
        self._check_obs(obs)
        if self.critic is None:
            return obs.new_zeros(obs.shape[0])
        return self.critic(obs).squeeze(-1)

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        images: Tensor | None = None,
        instructions: list[str] | None = None,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        self._check_obs(obs)
        dist = self._dist(obs)
        if deterministic:
            actions = dist.mean
        else:
            # Normal.sample takes no generator, so draw the noise ourselves.
            noise = torch.randn(dist.mean.shape, generator=generator, dtype=obs.dtype, device=obs.device)
            actions = dist.mean + dist.stddev * noise
        return ActOutput(
            actions=actions, log_probs=dist.log_prob(actions).sum(-1), values=self.value(obs), chunk=actions[:, None, :]
        )

    def evaluate(
        self, obs: Tensor, actions: Tensor, images: Tensor | None = None, instructions: list[str] | None = None
    ) -> EvalOutput:
        self._check_obs(obs)
        if actions.shape != (obs.shape[0], self.action_dim):
            raise ValueError(f"actions has shape {tuple(actions.shape)}, expected [{obs.shape[0]}, {self.action_dim}]")
        dist = self._dist(obs)
        return EvalOutput(
            log_probs=dist.log_prob(actions).sum(-1),
            entropy=dist.entropy().sum(-1),
            values=self.value(obs),
        )
