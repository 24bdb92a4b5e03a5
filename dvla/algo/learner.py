"""Policy updates from episodes: PPO+GAE or GRPO, with the decoupled loss for stale data.

Reads top to bottom like CleanRL's update: advantages, then epochs of shuffled
minibatches of the clipped surrogate. Steps sampled by an older version than
the actor's (asynchronous modes) are corrected as in decoupled PPO: the trust
region is around the proximal policy (the actor's weights before this update)
and each step is weighted by a clamped pi_prox / pi_behaviour. For steps taken
by the actor's own version the two coincide and the loss is plain PPO.
Streaming mode accumulates gradients micro-batch by micro-batch. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dvla.algo.advantages import gae, grpo_advantages
from dvla.algo.algorithms import algorithm
from dvla.algo.losses import behaviour_weights, clipped_surrogate, value_loss
from dvla.config import AlgoConfig
from dvla.policy import Policy
from dvla.types import TrajectoryBatch


@dataclass
class Samples:
    """The real steps of a batch, flattened to N."""

    obs: torch.Tensor  # [N, D]
    images: torch.Tensor  # [N, I] uint8 (I = 0 without a camera)
    actions: torch.Tensor  # [N, S]
    prox_log_probs: torch.Tensor  # [N] under the actor's weights before this update
    weights: torch.Tensor  # [N] clamped pi_prox / pi_behaviour (1 for on-policy steps)
    advantages: torch.Tensor  # [N]
    targets: torch.Tensor  # [N] value targets (PPO)

    def __len__(self) -> int:
        return self.obs.shape[0]

    @staticmethod
    def concat(parts: list[Samples]) -> Samples:
        return Samples(*(torch.cat([getattr(p, f) for p in parts]) for f in Samples.__dataclass_fields__))


class Learner:
    def __init__(self, policy: Policy, cfg: AlgoConfig, device: torch.device, seed: int = 0):
        self.policy, self.cfg, self.device = policy, cfg, device
        self.algo = algorithm(cfg.name)
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)  # minibatch shuffling
        self._accumulated_steps = 0

    # ------------------------------------------------------------ advantages
    def advantages(self, b: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] advantages and value targets (targets are zeros for GRPO)."""
        mask = b.step_mask()
        if self.algo.groups:
            adv_ep = grpo_advantages(b.returns(), b.group_ids)  # [B]
            adv = adv_ep[:, None].expand_as(b.rewards) * mask
            return adv, torch.zeros_like(adv)
        with torch.no_grad():  # bootstrap episode ends from the current critic
            final_values = self.policy.value(b.final_obs.to(self.device), b.final_images.to(self.device)).float().cpu()
        terminal = torch.zeros_like(b.terminated) if self.cfg.bootstrap_on_termination else b.terminated
        return gae(b.rewards, b.values, mask, b.lengths, terminal, final_values, self.cfg.gamma, self.cfg.gae_lambda)

    def prepare(self, b: TrajectoryBatch, version: int) -> Samples:
        """Flatten a batch; `version` is the actor's current version (the proximal policy)."""
        adv, targets = self.advantages(b)
        mask = b.step_mask()
        behav = b.log_probs[mask]
        prox = behav.clone()
        stale = b.versions[mask] != version
        obs, images, actions = b.obs[mask], b.images[mask], b.actions[mask]
        if stale.any():
            with torch.no_grad():
                prox[stale] = (
                    self.policy.evaluate(
                        obs[stale].to(self.device), actions[stale].to(self.device), images[stale].to(self.device)
                    )
                    .log_probs.float()
                    .cpu()
                )
        weights = behaviour_weights(prox, behav, self.cfg.max_behaviour_weight)
        return Samples(
            obs.to(self.device),
            images.to(self.device),
            actions.to(self.device),
            prox.to(self.device),
            weights.to(self.device),
            adv[mask].to(self.device),
            targets[mask].to(self.device),
        )

    def behaviour_gap(self, b: TrajectoryBatch, version: int) -> float:
        """Max |log-prob now - behaviour log-prob| over steps taken by `version` (our current weights).

        On-policy steps must match to float tolerance: it proves the rollout ran
        exactly the weights it was sent. NaN when no step came from `version`.
        """
        sel = b.step_mask() & (b.versions == version)
        if not sel.any():
            return float("nan")
        with torch.no_grad():
            out = self.policy.evaluate(
                b.obs[sel].to(self.device), b.actions[sel].to(self.device), b.images[sel].to(self.device)
            )
        return float((out.log_probs.float().cpu() - b.log_probs[sel]).abs().max())

    # ------------------------------------------------------------ losses and steps
    def _loss(self, s: Samples, idx: torch.Tensor, normalize: bool) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        out = self.policy.evaluate(s.obs[idx], s.actions[idx], s.images[idx])
        adv = s.advantages[idx]
        if normalize and cfg.normalize_advantages and self.algo.critic and len(idx) > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        pg_loss, stats = clipped_surrogate(
            out.log_probs, s.prox_log_probs[idx], adv, cfg.clip_eps, weights=s.weights[idx]
        )
        entropy = out.entropy.mean()
        loss = pg_loss - cfg.ent_coef * entropy
        v_loss = torch.zeros(())
        if self.algo.critic:
            v_loss = value_loss(out.values, s.targets[idx])
            loss = loss + cfg.vf_coef * v_loss
        stats = {
            "loss/policy": pg_loss,
            "loss/value": v_loss,
            "loss/entropy": entropy,
            **{f"loss/{k}": v for k, v in stats.items()},
        }
        return loss, stats

    def _step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def update(self, s: Samples, epochs: int | None = None) -> dict[str, float]:
        """PPO epochs (default cfg.update_epochs) over shuffled minibatches of a whole global batch."""
        cfg, n = self.cfg, len(s)
        mb_size = max(1, n // cfg.num_minibatches)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.update_epochs if epochs is None else epochs):
            perm = torch.randperm(n, generator=self.generator).to(self.device)
            for start in range(0, n - mb_size + 1, mb_size):
                loss, stats = self._loss(s, perm[start : start + mb_size], normalize=True)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                stats["loss/grad_norm"] = self._step()
                _add(sums, stats)
                count += 1
        return {k: v / max(count, 1) for k, v in sums.items()} | _weight_stats(s)

    def accumulate(self, s: Samples) -> dict[str, float]:
        """Streamer: backward on one micro-batch as soon as it arrives; grads sum over steps."""
        idx = torch.arange(len(s), device=self.device)
        loss, stats = self._loss(s, idx, normalize=True)
        (loss * len(s)).backward()
        self._accumulated_steps += len(s)
        return {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in stats.items()}

    def step_accumulated(self) -> float:
        """Streamer: turn summed gradients into the mean over the global batch and step."""
        if self._accumulated_steps == 0:
            raise RuntimeError("step_accumulated() without accumulated micro-batches")
        for p in self.policy.parameters():
            if p.grad is not None:
                p.grad /= self._accumulated_steps
        self._accumulated_steps = 0
        return self._step()


def _add(sums: dict, stats: dict) -> None:
    for k, v in stats.items():
        sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)


def _weight_stats(s: Samples) -> dict[str, float]:
    return {
        "train/samples": float(len(s)),
        "train/behaviour_weight_mean": float(s.weights.mean()),
        "train/behaviour_weight_min": float(s.weights.min()),
    }
