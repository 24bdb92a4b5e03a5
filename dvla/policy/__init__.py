"""Policy families, chosen by name: `build_policy(cfg.policy, env_spec)`.

The VLA family imports transformers (~3 s of CPU per process), so it is loaded only
when a run asks for it: an MLP run's processes and env shards start without it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from dvla.config import PolicyConfig
from dvla.policy.base import ActOutput, EvalOutput, Policy
from dvla.policy.mlp import MLPPolicy
from dvla.types import EnvSpec

if TYPE_CHECKING:
    from dvla.policy.vla import VLAPolicy, build_vla


def _build_vla(cfg: PolicyConfig, spec: EnvSpec) -> Policy:
    from dvla.policy.vla import build_vla

    return build_vla(cfg, spec)


REGISTRY: dict[str, Callable[[PolicyConfig, EnvSpec], Policy]] = {
    "mlp": MLPPolicy,
    "vla": _build_vla,
}


def build_policy(cfg: PolicyConfig, spec: EnvSpec) -> Policy:
    if cfg.name not in REGISTRY:
        raise ValueError(f"unknown policy '{cfg.name}'; known: {', '.join(sorted(REGISTRY))}")
    policy = REGISTRY[cfg.name](cfg, spec)
    if cfg.frozen:
        freeze(policy, cfg.frozen)
    return policy


def freeze(policy: Policy, prefixes: tuple[str, ...]) -> None:
    """Stop the parameters named by `prefixes` (a name, or a prefix ending at a '.') from training; a
    ValueError naming any entry that matches nothing, with the top-level parts there are."""
    names = [n for n, _ in policy.named_parameters()]

    def hit(name: str, prefix: str) -> bool:
        return name == prefix or name.startswith(prefix.rstrip(".") + ".")

    unmatched = [f for f in prefixes if not any(hit(n, f) for n in names)]
    if unmatched:
        parts = sorted({".".join(n.split(".")[:2]) for n in names})
        raise ValueError(f"policy.frozen: {unmatched} name no parameter of this policy; its parts: {parts}")
    for n, p in policy.named_parameters():
        if any(hit(n, f) for f in prefixes):
            p.requires_grad_(False)


def __getattr__(name: str):
    if name in ("VLAPolicy", "build_vla"):
        from dvla.policy import vla

        return getattr(vla, name)
    raise AttributeError(f"module 'dvla.policy' has no attribute '{name}'")


__all__ = ["ActOutput", "EvalOutput", "MLPPolicy", "Policy", "REGISTRY", "VLAPolicy", "build_policy", "build_vla"]
