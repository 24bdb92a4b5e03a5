"""One policy update from a global batch of episodes: PPO+GAE or GRPO.

Reads top to bottom like CleanRL's update: advantages, then epochs of shuffled
minibatches of the clipped surrogate. No I/O.
"""
from __future__ import annotations

import torch

from dvla.algo.advantages import gae, grpo_advantages
from dvla.algo.losses import clipped_surrogate, value_loss
from dvla.config import AlgoConfig
from dvla.policy import Policy
from dvla.types import TrajectoryBatch


class Learner:
    def __init__(self, policy: Policy, cfg: AlgoConfig, device: torch.device, seed: int = 0):
        self.policy, self.cfg, self.device = policy, cfg, device
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)  # minibatch shuffling

    def advantages(self, b: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T] advantages and value targets (targets are zeros for GRPO)."""
        mask = b.step_mask()
        if self.cfg.name == "grpo":
            adv_ep = grpo_advantages(b.returns(), b.group_ids)  # [B]
            adv = adv_ep[:, None].expand_as(b.rewards) * mask
            return adv, torch.zeros_like(adv)
        with torch.no_grad():  # bootstrap truncated episodes from the current critic
            final_values = self.policy.value(b.final_obs.to(self.device)).cpu()
        terminal = torch.zeros_like(b.terminated) if self.cfg.bootstrap_on_termination else b.terminated
        return gae(b.rewards, b.values, mask, b.lengths, terminal, final_values, self.cfg.gamma, self.cfg.gae_lambda)

    def behaviour_gap(self, b: TrajectoryBatch, version: int) -> float:
        """Max |log-prob now - behaviour log-prob| over steps taken by `version` (our current weights).

        On-policy steps must match to float tolerance: it proves the rollout ran
        exactly the weights it was sent. NaN when no step came from `version`.
        """
        sel = b.step_mask() & (b.versions == version)
        if not sel.any():
            return float("nan")
        with torch.no_grad():
            out = self.policy.evaluate(b.obs[sel].to(self.device), b.actions[sel].to(self.device))
        return float((out.log_probs.cpu() - b.log_probs[sel]).abs().max())

    def update(self, b: TrajectoryBatch) -> dict[str, float]:
        cfg = self.cfg
        adv, targets = self.advantages(b)
        mask = b.step_mask()
        # flatten the real steps: N = sum(lengths)
        obs, actions = b.obs[mask].to(self.device), b.actions[mask].to(self.device)
        old_logp, adv, targets = b.log_probs[mask].to(self.device), adv[mask].to(self.device), targets[mask].to(self.device)
        n = obs.shape[0]
        mb_size = max(1, n // cfg.num_minibatches)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(cfg.update_epochs):
            perm = torch.randperm(n, generator=self.generator).to(self.device)
            for start in range(0, n - mb_size + 1, mb_size):
                idx = perm[start:start + mb_size]
                out = self.policy.evaluate(obs[idx], actions[idx])
                mb_adv = adv[idx]
                if cfg.normalize_advantages and cfg.name == "ppo" and len(idx) > 1:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                pg_loss, stats = clipped_surrogate(out.log_probs, old_logp[idx], mb_adv, cfg.clip_eps)
                entropy = out.entropy.mean()
                loss = pg_loss - cfg.ent_coef * entropy
                v_loss = torch.zeros(())
                if cfg.name == "ppo":
                    v_loss = value_loss(out.values, targets[idx])
                    loss = loss + cfg.vf_coef * v_loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                for k, v in (("loss/policy", pg_loss), ("loss/value", v_loss), ("loss/entropy", entropy),
                             ("loss/approx_kl", stats["approx_kl"]), ("loss/clip_frac", stats["clip_frac"]),
                             ("loss/grad_norm", grad_norm)):
                    sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v)
                count += 1
        return {k: v / max(count, 1) for k, v in sums.items()} | {"train/samples": float(n)}
