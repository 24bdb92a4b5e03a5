"""The interface every policy family implements, from a state MLP to a VLA.

Inputs, for N rows: `obs` [N, D] float32 state (proprioception; the MLP's whole
input), `images` [N, I] uint8 camera pixels flattened from EnvSpec.image_shape
(H, W, 3) ([N, 0] or None without a camera), and `instructions` (N strings; None means
EnvSpec.instruction for every row). A VLA reads all three; the MLP reads `obs`.

One decision yields a chunk of C = `chunk_size` env actions. What the policy
sampled to make it is `ActOutput.actions` [N, S], S = `sample_dim`: the MLP's
action itself, a discrete head's bin indices, a flow head's denoising chain.
That sample is what the trajectory records and `evaluate` scores, so the
behaviour log-prob and the trained log-prob are of the same random variable.
Rollout workers call `act`, the actor calls `evaluate`, and the weight plane
moves `export_weights` / `load_weights` dicts between them.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ActOutput:
    actions: Tensor  # [N, S] float32, the policy's sample (what evaluate scores)
    log_probs: Tensor  # [N] log-prob of that sample
    values: Tensor  # [N] (zeros if no value head)
    chunk: Tensor  # [N, C, A] float32 env actions to execute in order (the env clips)


@dataclass
class EvalOutput:
    log_probs: Tensor  # [N]
    entropy: Tensor  # [N]
    values: Tensor  # [N] (zeros if no value head)


class Policy(torch.nn.Module, abc.ABC):
    """Abstract policy: subclasses set chunk_size and sample_dim, and implement act, evaluate and value."""

    chunk_size: int = 1  # C, env actions per decision
    sample_dim: int  # S, width of ActOutput.actions

    @abc.abstractmethod
    def act(
        self,
        obs: Tensor,
        images: Tensor | None = None,
        instructions: list[str] | None = None,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        """Sample (or, if deterministic, take the mode of) one action chunk per row.

        Runs under torch.no_grad. `generator` makes sampling reproducible.
        """

    @abc.abstractmethod
    def evaluate(
        self, obs: Tensor, actions: Tensor, images: Tensor | None = None, instructions: list[str] | None = None
    ) -> EvalOutput:
        """Log-probs, entropy and values of given [N, S] samples, with grad."""

    def forward(
        self, obs: Tensor, actions: Tensor, images: Tensor | None = None, instructions: list[str] | None = None
    ) -> EvalOutput:
        """evaluate(): the training forward, so wrappers that hook forward (DDP, FSDP) see it."""
        return self.evaluate(obs, actions, images, instructions)

    @abc.abstractmethod
    def value(self, obs: Tensor, images: Tensor | None = None, instructions: list[str] | None = None) -> Tensor:
        """[N] value estimates, with grad; wrap in torch.no_grad() to bootstrap rollouts."""

    def export_weights(self) -> dict[str, Tensor]:
        """Name -> contiguous CPU tensor (parameters and persistent buffers).

        Always a copy: a CPU tensor aliasing the live parameter would change
        under the next optimizer step while it is still being published.
        """
        return {name: t.detach().to("cpu", copy=True).contiguous() for name, t in self.state_dict().items()}

    def trained_names(self) -> frozenset[str] | None:
        """The state-dict names a new version changes: parameters that train and every buffer; None when
        everything trains (a version is then always whole)."""
        frozen = {n for n, p in self.named_parameters() if not p.requires_grad}
        return frozenset(self.state_dict().keys() - frozen) if frozen else None

    def load_weights(self, weights: dict[str, Tensor]) -> None:
        """Copy `weights` into this policy in place, strictly.

        In place so an optimizer holding the parameters keeps working. Every
        name, shape and dtype is checked before anything is copied, so a bad
        dict leaves the policy unchanged.
        """
        own = self.state_dict(keep_vars=True)
        missing = sorted(own.keys() - weights.keys())
        unexpected = sorted(weights.keys() - own.keys())
        if missing:
            raise ValueError(f"load_weights: missing tensors {missing}")
        if unexpected:
            raise ValueError(f"load_weights: unexpected tensors {unexpected}")
        for name, target in own.items():
            src = weights[name]
            if not isinstance(src, Tensor):
                raise ValueError(f"load_weights: '{name}' is a {type(src).__name__}, not a tensor")
            if src.shape != target.shape:
                raise ValueError(f"load_weights: '{name}' has shape {tuple(src.shape)}, expected {tuple(target.shape)}")
            if src.dtype != target.dtype:
                raise ValueError(f"load_weights: '{name}' has dtype {src.dtype}, expected {target.dtype}")
        with torch.no_grad():
            for name, target in own.items():
                target.copy_(weights[name])
