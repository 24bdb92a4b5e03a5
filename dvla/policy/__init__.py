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
    return REGISTRY[cfg.name](cfg, spec)


def __getattr__(name: str):
    if name in ("VLAPolicy", "build_vla"):
        from dvla.policy import vla

        return getattr(vla, name)
    raise AttributeError(f"module 'dvla.policy' has no attribute '{name}'")


__all__ = ["ActOutput", "EvalOutput", "MLPPolicy", "Policy", "REGISTRY", "VLAPolicy", "build_policy", "build_vla"]
