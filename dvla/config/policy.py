"""The policy section: what every family shares, then one nested section per family.

    policy.name        which family builds the policy ('mlp' or 'vla'); its section is `policy.<name>`
    policy.mlp.*       the MLP's trunk widths and initial action std
    policy.vla.*       the VLA's size, action head and its knobs

A family's section knows what the family needs from the rest of the run (the observation mode it
reads, the chunk sizes it takes) and how to name itself in one line, so nothing else compares
`policy.name` against strings. Keys written flat before the sections existed (`policy.hidden_sizes`,
`policy.action_head`, ...) still load: `MOVED` says where each went, and loading warns once per key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from dvla.config.check import check as _check


@dataclass(frozen=True)
class MlpConfig:
    hidden_sizes: tuple[int, ...] = (256, 256)
    """Hidden layer widths of the MLP trunk."""
    init_log_std: float = -0.5
    """Initial log standard deviation of the Gaussian action distribution."""

    obs_mode: ClassVar[str] = "state"

    def validate(self) -> None:
        _check(
            len(self.hidden_sizes) > 0 and all(h > 0 for h in self.hidden_sizes),
            "policy.mlp.hidden_sizes",
            "need one or more positive widths",
        )

    def check_policy(self, policy: PolicyConfig) -> None:
        _check(policy.chunk_size == 1, "policy.chunk_size", "the mlp policy acts one step at a time; use 1")

    def summary(self, policy: PolicyConfig) -> str:
        return f"mlp {list(self.hidden_sizes)}"


@dataclass(frozen=True)
class VlaConfig:
    size: str = "tiny"
    """Size preset: 'tiny' (CPU, seconds per step), 'small' (~100M parameters) or '1b' (GPUs)."""
    action_head: str = "discrete"
    """Action head: 'discrete' (num_bins bins per action dim, chunk decoded in parallel: OpenVLA-OFT) or
    'flow' (flow matching with noise injected in the denoising steps, so log-probs are tractable: pi0 + flow-SDE)."""
    num_bins: int = 256
    """Discrete head: bins per action dimension."""
    flow_steps: int = 4
    """Flow head: K denoising steps per decision."""
    use_state: bool = True
    """Read the robot state (proprioception) as one token next to the image and the instruction."""
    init_action_std: float = 0.3
    """From fresh weights: std (in the head's [-1, 1] range) of the initial action distribution: the
    discrete head's prior over bins, the scale of the flow head's starting noise."""
    flow_noise_std: float = 0.3
    """Flow head: initial std sigma of the injected noise (sigma * sqrt(1/K) per denoising step; learned from there)."""

    obs_mode: ClassVar[str] = "rgb"

    def validate(self) -> None:
        _check(
            self.size in ("tiny", "small", "1b"), "policy.vla.size", f"unknown '{self.size}'; choose tiny, small or 1b"
        )
        _check(
            self.action_head in ("discrete", "flow"),
            "policy.vla.action_head",
            f"unknown '{self.action_head}'; choose discrete or flow",
        )
        _check(self.num_bins >= 2, "policy.vla.num_bins", "must be >= 2")
        _check(self.flow_steps >= 1, "policy.vla.flow_steps", "must be >= 1")
        _check(self.flow_noise_std > 0, "policy.vla.flow_noise_std", "must be > 0")
        _check(0 < self.init_action_std <= 10, "policy.vla.init_action_std", "must be in (0, 10]")

    def check_policy(self, policy: PolicyConfig) -> None:
        pass

    def summary(self, policy: PolicyConfig) -> str:
        return f"vla-{self.size} ({self.action_head} head, chunks of {policy.chunk_size})"


FAMILIES = ("mlp", "vla")


@dataclass(frozen=True)
class PolicyConfig:
    name: str = "mlp"
    """Policy family: 'mlp' (state vector in) or 'vla' (camera image, instruction and state in); its
    settings are the section of the same name, policy.mlp or policy.vla."""
    chunk_size: int = 1
    """C, env actions per policy decision (the MLP takes 1; VLA presets use 4)."""
    value_head: bool = True
    """Build a value head (needed by PPO+GAE; GRPO ignores it)."""
    path: str = ""
    """Local directory of a saved VLA (transformers format: config.json + model.safetensors) to start from."""
    dtype: str = "auto"
    """Parameter dtype of a VLA: 'auto' (bfloat16 with CUDA, else float32), 'float32' or 'bfloat16'."""
    frozen: tuple[str, ...] = ()
    """Parameters that do not train: names or name prefixes (e.g. [model.vision], a VLA's vision tower). The
    actor leaves them out of the optimizer and, after a full version at start, publishes only what trains;
    rollouts keep them from that full version. An entry that names no parameter is refused."""
    mlp: MlpConfig = field(default_factory=MlpConfig)
    vla: VlaConfig = field(default_factory=VlaConfig)

    MOVED: ClassVar[dict[str, str]] = {
        "hidden_sizes": "mlp",
        "init_log_std": "mlp",
        "size": "vla",
        "action_head": "vla",
        "num_bins": "vla",
        "flow_steps": "vla",
        "use_state": "vla",
        "init_action_std": "vla",
        "flow_noise_std": "vla",
    }
    """Flat keys of the one-section layout -> the family section they moved into."""

    @property
    def family(self) -> MlpConfig | VlaConfig:
        """The chosen family's section (policy.mlp or policy.vla)."""
        return getattr(self, self.name)

    def validate(self) -> None:
        _check(
            self.name in FAMILIES, "policy.name", f"unknown '{self.name}'; choose {' or '.join(map(repr, FAMILIES))}"
        )
        _check(self.chunk_size >= 1, "policy.chunk_size", "must be >= 1")
        _check(all(isinstance(f, str) and f for f in self.frozen), "policy.frozen", "entries must be non-empty names")
        _check(
            self.dtype in ("auto", "float32", "bfloat16"),
            "policy.dtype",
            f"unknown '{self.dtype}'; choose auto, float32 or bfloat16",
        )
        self.mlp.validate()
        self.vla.validate()
        self.family.check_policy(self)

    def summary(self) -> str:
        """One line naming the policy, e.g. 'mlp [256, 256]' or 'vla-tiny (flow head, chunks of 4)'."""
        return self.family.summary(self)
