"""The RL algorithms, chosen once by name (algo.name) as objects that say how they differ. Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Algorithm:
    name: str
    critic: bool
    """A value head, trained on GAE targets, whose advantages are normalised per minibatch (PPO)."""
    groups: bool
    """Advantages relative to a group of episodes sharing a reset seed (GRPO): a group is sampled
    together, and one stale member drops its whole group."""

    def group_size(self, configured: int) -> int:
        """Episodes per reset seed."""
        return configured if self.groups else 1


ALGORITHMS = {
    "ppo": Algorithm("ppo", critic=True, groups=False),
    "grpo": Algorithm("grpo", critic=False, groups=True),
}


def algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; choose from {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
