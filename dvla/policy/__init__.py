"""Policy families, chosen by name: `build_policy(cfg.policy, env_spec)`."""

from __future__ import annotations

from collections.abc import Callable

from dvla.config import PolicyConfig
from dvla.policy.base import ActOutput, EvalOutput, Policy
from dvla.policy.mlp import MLPPolicy
from dvla.policy.vla import VLAPolicy, build_vla
from dvla.types import EnvSpec

REGISTRY: dict[str, Callable[[PolicyConfig, EnvSpec], Policy]] = {
    "mlp": MLPPolicy,
    "vla": build_vla,
}


def build_policy(cfg: PolicyConfig, spec: EnvSpec) -> Policy:
    if cfg.name not in REGISTRY:
        raise ValueError(f"unknown policy '{cfg.name}'; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[cfg.name](cfg, spec)


__all__ = ["ActOutput", "EvalOutput", "MLPPolicy", "Policy", "REGISTRY", "VLAPolicy", "build_policy", "build_vla"]
