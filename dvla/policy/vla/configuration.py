"""DvlaVLAConfig: a SigLIP vision tower, a Qwen2 text backbone and an action head, and the size presets.

Sizes (parameters with chunk 4 and action dim 4; the heads add little):
  tiny   ~0.5M   CPU tests and smoke runs (64 px, 16 patches, 2+2 layers)
  small  ~100M   one GPU (128 px, 64 patches; 6-layer vision, 14-layer backbone at 768)
  1b     ~1.06B  SigLIP-base-like vision (224 px) + a 2048-wide, 16-layer backbone
"""

from __future__ import annotations

import math

from transformers import PretrainedConfig, Qwen2Config, SiglipVisionConfig

from dvla.config import PolicyConfig
from dvla.policy.vla.processing import text_vocab
from dvla.types import EnvSpec

MODEL_TYPE = "dvla_vla"
HEADS = ("discrete", "flow")
# Clamp range of the flow head's learned log-std: wide enough to learn, never degenerate.
LOG_SIGMA_MIN, LOG_SIGMA_MAX = math.log(1e-3), math.log(2.0)


class DvlaVLAConfig(PretrainedConfig):
    """Everything needed to rebuild a DvlaVLAModel; saved as config.json next to model.safetensors."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"vision_config": SiglipVisionConfig, "text_config": Qwen2Config}

    vision_config: dict | PretrainedConfig | None = None
    text_config: dict | PretrainedConfig | None = None
    action_head: str = "discrete"
    """'discrete' (bins, parallel decoding) or 'flow' (flow matching with injected noise)."""
    chunk_size: int = 1
    """C, env actions per decision."""
    action_dim: int = 1
    """A, env action dimensions."""
    action_low: list[float] | None = None
    """Per-dim lower action bound the head's [-1, 1] range maps onto (default -1)."""
    action_high: list[float] | None = None
    """Per-dim upper action bound (default 1)."""
    num_bins: int = 256
    """Discrete head: bins per action token."""
    flow_steps: int = 4
    """Flow head: K Euler steps per decision."""
    flow_noise_std: float = 0.3
    """Flow head: initial std of the noise injected at each step (learned per dim)."""
    init_action_std: float = 0.5
    """Fresh weights: std, in the heads' [-1, 1] range, of the initial action distribution - the discrete
    head's starting prior over bins (a discretised Gaussian around the middle bin rather than uniform) and
    the scale of the flow head's starting noise x_0. RL from scratch needs this exploration prior the way
    an MLP needs its initial log-std; a uniform bin distribution makes every action a coin toss over the range."""
    expert_hidden_size: int = 256
    """Flow head: width of the action-expert MLP."""
    state_dim: int = 0
    """D, robot-state features per observation (the env's; the model reads them when use_state)."""
    use_state: bool = True
    """Feed the robot state to the backbone as one token (proprioception); off: images and words only."""
    image_shape: list[int] | None = None
    """(H, W, 3) of the env camera images the processor receives."""
    value_head: bool = True
    """Build a value head on the pooled prefix."""
    instruction: str = ""
    """Instruction used for rows given none."""
    max_instruction_tokens: int = 64
    """Instructions are cut to this many byte tokens."""
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.action_head not in HEADS:
            raise ValueError(f"action_head '{self.action_head}' is unknown; choose discrete or flow")
        if self.action_low is None:
            self.action_low = [-1.0] * self.action_dim
        if self.action_high is None:
            self.action_high = [1.0] * self.action_dim
        self.action_low = [float(x) for x in self.action_low]
        self.action_high = [float(x) for x in self.action_high]
        if len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ValueError(f"action_low/action_high need {self.action_dim} values each")
        self.image_shape = list(self.image_shape or [])

    @property
    def num_action_tokens(self) -> int:
        """C*A, one token (discrete) or one chain coordinate (flow) per chunk entry."""
        return self.chunk_size * self.action_dim

    @property
    def sample_dim(self) -> int:
        """S, width of the recorded sample: C*A bin indices, or the (K+1)*C*A flow chain."""
        if self.action_head == "discrete":
            return self.num_action_tokens
        return (self.flow_steps + 1) * self.num_action_tokens


# Per size: (vision image_size, patch, hidden, layers, heads, intermediate),
#           (backbone hidden, layers, heads, kv heads, intermediate), flow expert width.
_PRESETS = {
    "tiny": ((64, 16, 64, 2, 2, 128), (128, 2, 4, 2, 256), 256),
    "small": ((128, 16, 384, 6, 6, 1536), (768, 14, 12, 4, 2048), 512),
    "1b": ((224, 16, 768, 12, 12, 3072), (2048, 16, 16, 4, 8192), 1024),
}


def vla_config(size: str, head: str, spec: EnvSpec, policy_cfg: PolicyConfig) -> DvlaVLAConfig:
    """The preset `size` ('tiny', 'small', '1b') with `head`, shaped for `spec` and `policy_cfg`."""
    if size not in _PRESETS:
        raise ValueError(f"unknown vla size '{size}'; choose {', '.join(_PRESETS)}")
    if head not in HEADS:
        raise ValueError(f"unknown vla action head '{head}'; choose discrete or flow")
    (img, patch, v_hidden, v_layers, v_heads, v_inter), (t_hidden, t_layers, t_heads, t_kv, t_inter), expert = _PRESETS[
        size
    ]
    vocab_size, pad_id = text_vocab()
    vision = SiglipVisionConfig(
        image_size=img,
        patch_size=patch,
        hidden_size=v_hidden,
        num_hidden_layers=v_layers,
        num_attention_heads=v_heads,
        intermediate_size=v_inter,
        attention_dropout=0.0,
        vision_use_head=False,  # the MAP pooling head is unused: we keep every patch token
    )
    text = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=t_hidden,
        num_hidden_layers=t_layers,
        num_attention_heads=t_heads,
        num_key_value_heads=t_kv,
        intermediate_size=t_inter,
        max_position_embeddings=1024,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        use_cache=False,
        pad_token_id=pad_id,
    )
    return DvlaVLAConfig(
        vision_config=vision,
        text_config=text,
        action_head=head,
        chunk_size=policy_cfg.chunk_size,
        action_dim=spec.action_dim,
        action_low=list(spec.action_low),
        action_high=list(spec.action_high),
        num_bins=policy_cfg.vla.num_bins,
        flow_steps=policy_cfg.vla.flow_steps,
        flow_noise_std=policy_cfg.vla.flow_noise_std,
        expert_hidden_size=expert,
        init_action_std=policy_cfg.vla.init_action_std,
        state_dim=spec.obs_dim,
        use_state=policy_cfg.vla.use_state,
        image_shape=list(spec.image_shape),
        value_head=policy_cfg.value_head,
        instruction=spec.instruction,
    )
