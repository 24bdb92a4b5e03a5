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
from dvla.algo.group import Solo, local_minibatches
from dvla.algo.losses import behaviour_weights, clipped_surrogate, value_loss
from dvla.config import AlgoConfig
from dvla.policy import Policy
from dvla.ports import ActorGroup
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
    """Updates one policy; with an ActorGroup of K ranks, this rank's share of each global batch.

    `group` (default: Solo, one rank) sums across ranks what must be global, so K ranks holding
    slices of a global batch take the same optimizer steps as one rank holding all of it.
    """

    def __init__(
        self, policy: Policy, cfg: AlgoConfig, device: torch.device, seed: int = 0, group: ActorGroup | None = None
    ):
        self.policy, self.cfg, self.device = policy, cfg, device
        self.group = Solo() if group is None else group
        self.algo = algorithm(cfg.name)
        self.module = self.group.wrap(policy)  # before the optimizer: FSDP replaces the parameters
        trained = [p for p in policy.parameters() if p.requires_grad]  # policy.frozen ones stay as they are
        self.optimizer = torch.optim.Adam(trained, lr=cfg.lr, eps=1e-5)
        self.generator = torch.Generator().manual_seed(seed)  # minibatch shuffling, the same on every rank
        self._accumulated_steps = 0

    def _no_grad_evaluate(self, obs: torch.Tensor, actions: torch.Tensor, images: torch.Tensor) -> torch.Tensor | None:
        """Log-probs of these rows under the current weights; None for no rows, unless every forward is a
        collective (then every rank runs it, rows or not)."""
        if len(obs) == 0 and not self.group.collective_forward:
            return None
        with torch.no_grad():
            out = self.policy.evaluate(obs.to(self.device), actions.to(self.device), images.to(self.device))
        return out.log_probs.float().cpu()

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
        now = self._no_grad_evaluate(obs[stale], actions[stale], images[stale])
        if now is not None:
            prox[stale] = now
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
        exactly the weights it was sent. NaN when no step came from `version`. Over every rank's share.
        """
        sel = b.step_mask() & (b.versions == version)
        now = self._no_grad_evaluate(b.obs[sel], b.actions[sel], b.images[sel])
        gap = torch.tensor([-1.0 if now is None or not len(now) else float((now - b.log_probs[sel]).abs().max())])
        gap = float(self.group.all_reduce(gap, "max"))
        return float("nan") if gap < 0 else gap

    # ------------------------------------------------------------ losses and steps
    def _loss(self, s: Samples, idx: torch.Tensor, total: int, norm: tuple[float, float] | None) -> tuple:
        """This rank's share of a minibatch's loss: sums over its rows `idx` divided by the minibatch's
        global size `total`; advantages normalised by the minibatch's global (mean, std) if given."""
        cfg = self.cfg
        out = self.module(s.obs[idx], s.actions[idx], s.images[idx])  # forward = evaluate
        adv = s.advantages[idx]
        if norm is not None:
            adv = (adv - norm[0]) / (norm[1] + 1e-8)
        pg_loss, stats = clipped_surrogate(
            out.log_probs, s.prox_log_probs[idx], adv, cfg.clip_eps, weights=s.weights[idx], denom=total
        )
        entropy = out.entropy.sum() / total
        loss = pg_loss - cfg.ent_coef * entropy
        v_loss = torch.zeros((), device=loss.device)
        if self.algo.critic:
            v_loss = value_loss(out.values, s.targets[idx], denom=total)
            loss = loss + cfg.vf_coef * v_loss
        elif out.values is not None and out.values.requires_grad:
            # no critic (GRPO): a zero gradient for the value head, which leaves it (and Adam) as it is,
            # so DDP sees every output of forward take part in the loss
            loss = loss + 0.0 * out.values.sum()
        stats = {
            "loss/policy": pg_loss,
            "loss/value": v_loss,
            "loss/entropy": entropy,
            **{f"loss/{k}": v for k, v in stats.items()},
        }
        return loss, {k: v.detach().float().cpu() for k, v in stats.items()}

    def _step(self) -> float:
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        if hasattr(grad_norm, "full_tensor"):  # sharded parameters: the norm of the whole gradient
            grad_norm = grad_norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _normalisers(self, s: Samples, minibatches: list[torch.Tensor]) -> list[tuple[float, float] | None]:
        """Each minibatch's advantage (mean, std) over all ranks (one reduction per epoch); None where
        advantages are not normalised."""
        if not (self.cfg.normalize_advantages and self.algo.critic):
            return [None] * len(minibatches)
        adv = s.advantages.detach().double().cpu()
        moments = torch.stack(
            [torch.stack([adv[i].sum(), adv[i].square().sum(), adv.new_tensor(len(i))]) for i in minibatches]
        )
        moments = self.group.all_reduce(moments)
        out = []
        for total, total_sq, c in moments.tolist():
            if c <= 1:
                out.append(None)
                continue
            mean = total / c
            out.append((mean, max((total_sq - c * mean * mean) / (c - 1), 0.0) ** 0.5))
        return out

    def update(self, s: Samples, epochs: int | None = None) -> dict[str, float]:
        """PPO epochs (default cfg.update_epochs) over shuffled minibatches of a whole global batch, of
        which `s` is this rank's slice (all of it with one rank)."""
        cfg, group = self.cfg, self.group
        counts = torch.zeros(group.size, dtype=torch.int64)
        counts[group.rank] = len(s)
        counts = group.all_reduce(counts).tolist()
        n, offset = sum(counts), sum(counts[: group.rank])
        mb_size = max(1, n // cfg.num_minibatches)
        sums: dict[str, torch.Tensor] = {}
        grad_norms: list[float] = []
        for _ in range(cfg.update_epochs if epochs is None else epochs):
            perm = torch.randperm(n, generator=self.generator)
            minibatches = local_minibatches(perm, mb_size, offset, len(s))
            for idx, norm in zip(minibatches, self._normalisers(s, minibatches)):
                loss, stats = self._loss(s, idx.to(self.device), mb_size, norm)
                self.optimizer.zero_grad(set_to_none=True)
                (loss * group.grad_scale).backward()
                grad_norms.append(self._step())
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        keys = sorted(sums)
        totals = group.all_reduce(torch.stack([sums[k] for k in keys])).tolist() if keys else []
        count = max(len(grad_norms), 1)
        record = {k: v / count for k, v in zip(keys, totals)} | {"loss/grad_norm": sum(grad_norms) / count}
        return record | self._weight_stats(s, n)

    def _weight_stats(self, s: Samples, n: int) -> dict[str, float]:
        w = s.weights.detach().float().cpu()
        total = self.group.all_reduce(w.sum().reshape(1))
        low = self.group.all_reduce(w.min().reshape(1) if len(w) else torch.tensor([float("inf")]), "min")
        return {
            "train/samples": float(n),
            "train/behaviour_weight_mean": float(total) / max(n, 1),
            "train/behaviour_weight_min": float(low),
        }

    def accumulate(self, s: Samples) -> dict[str, float]:
        """Streamer: backward on one micro-batch as soon as it arrives; grads sum over steps. One rank only."""
        if self.group.size > 1:
            raise RuntimeError("streaming micro-batches is for one actor rank; an actor group updates per batch")
        idx = torch.arange(len(s), device=self.device)
        loss, stats = self._loss(s, idx, len(s), self._normalisers(s, [idx.cpu()])[0])
        (loss * len(s)).backward()
        self._accumulated_steps += len(s)
        return {k: float(v) for k, v in stats.items()}

    def step_accumulated(self) -> float:
        """Streamer: turn summed gradients into the mean over the global batch and step."""
        if self._accumulated_steps == 0:
            raise RuntimeError("step_accumulated() without accumulated micro-batches")
        for p in self.policy.parameters():
            if p.grad is not None:
                p.grad /= self._accumulated_steps
        self._accumulated_steps = 0
        return self._step()
