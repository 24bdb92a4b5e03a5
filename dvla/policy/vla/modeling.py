"""DvlaVLAModel: SigLIP patches + a state token + instruction bytes through a Qwen2 backbone, then an action head.

    pixels --SigLIP--> patch tokens --image_proj--+
    state  --state_proj--> 1 token ---------------+--> [prefix | C*A action queries] --Qwen2--> hidden
    text   --embed_tokens--> L tokens ------------+        (queries: discrete head only)
    discrete: hidden of each query --to_logits--> num_bins logits per (chunk step, action dim)
    flow:     hidden of the last prefix token = cond; K noisy Euler steps of the action expert v(x_t, t, cond)
    value:    hidden of the last prefix token --value_head--> [N]

The heads run in float32 even when the trunk is bfloat16, so log-probs are computed in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Qwen2Model, SiglipVisionModel
from transformers import initialization as init

from dvla.policy.vla.configuration import LOG_SIGMA_MAX, LOG_SIGMA_MIN, DvlaVLAConfig

_TIME_FEATURES = 32
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class DiscreteActionHead(nn.Module):
    """OpenVLA-OFT style: C*A learned queries decoded in parallel, each to num_bins logits."""

    FSDP_METHODS = ("query_tokens",)  # methods the model calls besides forward: FSDP gathers the head for them

    def __init__(self, cfg: DvlaVLAConfig):
        super().__init__()
        hidden = cfg.text_config.hidden_size
        self.queries = nn.Parameter(torch.empty(cfg.num_action_tokens, hidden))
        self.to_logits = nn.Linear(hidden, cfg.num_bins)

    def query_tokens(self, n: int, dtype: torch.dtype) -> Tensor:
        """[n, C*A, hidden] the learned queries for n rows, in the trunk's dtype. A tensor of its own, never a
        view of the parameter: under FSDP the parameter's memory is released once this returns."""
        return self.queries.to(dtype)[None].expand(n, -1, -1).clone()

    def forward(self, query_hidden: Tensor) -> Tensor:
        """[N, C*A, hidden] -> [N, C*A, num_bins] float32 logits."""
        return self.to_logits(query_hidden.float())


class TimeFeatures(nn.Module):
    """Sinusoidal features of the flow time t in [0, 1]."""

    def __init__(self):
        super().__init__()
        self.register_buffer("freqs", torch.empty(_TIME_FEATURES // 2), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        # Non-persistent: recomputed here, and by _init_weights after from_pretrained leaves it empty.
        init.copy_(self.freqs, torch.exp(torch.linspace(0.0, math.log(1000.0), _TIME_FEATURES // 2)))

    def forward(self, t: Tensor) -> Tensor:
        angles = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ActionBounds(nn.Module):
    """Maps the heads' [-1, 1] range linearly onto the env's per-dim action bounds."""

    def __init__(self, cfg: DvlaVLAConfig):
        super().__init__()
        self.low, self.high = list(cfg.action_low), list(cfg.action_high)
        self.register_buffer("mid", torch.empty(cfg.action_dim), persistent=False)
        self.register_buffer("half_range", torch.empty(cfg.action_dim), persistent=False)
        self.reset_buffers()

    def reset_buffers(self) -> None:
        low, high = torch.tensor(self.low), torch.tensor(self.high)
        init.copy_(self.mid, (high + low) / 2)
        init.copy_(self.half_range, (high - low) / 2)

    def forward(self, x_unit: Tensor) -> Tensor:
        return self.mid + x_unit.float() * self.half_range


class FlowActionHead(nn.Module):
    """pi0-style action expert (an MLP here) with a learned per-dim log-std of the injected step noise."""

    FSDP_METHODS = ("sigma", "velocity")  # what the model calls: FSDP gathers the head for them

    def __init__(self, cfg: DvlaVLAConfig):
        super().__init__()
        width, dim = cfg.expert_hidden_size, cfg.num_action_tokens
        self.log_sigma = nn.Parameter(torch.empty(dim))
        self.cond_proj = nn.Linear(cfg.text_config.hidden_size, width)
        self.x_proj = nn.Linear(dim, width)
        self.time = TimeFeatures()
        self.t_proj = nn.Linear(_TIME_FEATURES, width)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(width, width), nn.SiLU(), nn.Linear(width, dim))

    def sigma(self) -> Tensor:
        """[C*A] float32 std of the noise injected at each Euler step."""
        return self.log_sigma.float().clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX).exp()

    def velocity(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """v(x_t, t, cond): x_t [M, C*A], t [M], cond [M, hidden] -> [M, C*A] float32."""
        h = self.cond_proj(cond.float()) + self.x_proj(x_t.float()) + self.t_proj(self.time(t))
        return self.mlp(h).float()


class DvlaVLAModel(PreTrainedModel):
    config_class = DvlaVLAConfig
    config: DvlaVLAConfig
    base_model_prefix = "dvla_vla"
    main_input_name = "pixel_values"
    _supports_sdpa = True
    _no_split_modules = ["SiglipEncoderLayer", "Qwen2DecoderLayer"]

    def __init__(self, config: DvlaVLAConfig):
        super().__init__(config)
        hidden = config.text_config.hidden_size
        self.vision = SiglipVisionModel(config.vision_config)
        self.backbone = Qwen2Model(config.text_config)
        self.image_proj = nn.Linear(config.vision_config.hidden_size, hidden)
        use_state = config.use_state and config.state_dim > 0
        self.state_proj = nn.Linear(config.state_dim, hidden) if use_state else None
        self.head = DiscreteActionHead(config) if config.action_head == "discrete" else FlowActionHead(config)
        self.value_head = nn.Linear(hidden, 1) if config.value_head else None
        self.action_bounds = ActionBounds(config)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, DiscreteActionHead):
            init.normal_(module.queries, std=self.config.initializer_range)
            # Start from a discretised Gaussian prior over the bins (the bias dominates the small
            # random weights), so a fresh policy explores around the middle of the action range.
            centres = self.bins_to_unit(torch.arange(self.config.num_bins))
            init.copy_(module.to_logits.bias, -0.5 * (centres / self.config.init_action_std).square())
        elif isinstance(module, FlowActionHead):
            init.constant_(module.log_sigma, math.log(self.config.flow_noise_std))
        elif isinstance(module, (TimeFeatures, ActionBounds)):
            module.reset_buffers()

    def cast_trunk(self, dtype: torch.dtype) -> DvlaVLAModel:
        """Trunk in `dtype`; the action and value heads stay float32 (log-prob math)."""
        self.to(dtype)
        self.head.float()
        if self.value_head is not None:
            self.value_head.float()
        return self

    @property
    def trunk_dtype(self) -> torch.dtype:
        return self.image_proj.weight.dtype

    def to_env_actions(self, x: Tensor) -> Tensor:
        """[N, C*A] in the head's [-1, 1] range -> [N, C, A] float32 on the action bounds."""
        x = x.float().view(x.shape[0], self.config.chunk_size, self.config.action_dim)
        return self.action_bounds(x)

    def run_backbone(
        self, pixel_values: Tensor, state: Tensor, input_ids: Tensor, text_mask: Tensor, with_queries: bool
    ) -> tuple[Tensor, Tensor | None]:
        """pooled [N, hidden] (last prefix token) and, if with_queries, the queries' hidden [N, C*A, hidden]."""
        dtype = self.trunk_dtype
        n = pixel_values.shape[0]
        patches = self.vision(pixel_values=pixel_values).last_hidden_state
        parts = [self.image_proj(patches)]
        if self.state_proj is not None:
            parts.append(self.state_proj(state.to(dtype))[:, None, :])
        parts.append(self.backbone.embed_tokens(input_ids))
        num_prefix = sum(p.shape[1] for p in parts)
        masks = [text_mask.new_ones(n, num_prefix - text_mask.shape[1]), text_mask]
        if with_queries:
            queries = self.head.query_tokens(n, dtype)
            parts.append(queries)
            masks.append(text_mask.new_ones(n, queries.shape[1]))
        embeds, mask = torch.cat(parts, dim=1), torch.cat(masks, dim=1)
        # Positions skip the (left) padding inside the prefix, so a row's result does not
        # depend on how long the other instructions in its batch are.
        position_ids = (mask.cumsum(dim=1) - 1).clamp_(min=0)
        hidden = self.backbone(
            inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        pooled = hidden[:, num_prefix - 1]
        return pooled, (hidden[:, num_prefix:] if with_queries else None)

    def value_from(self, pooled: Tensor) -> Tensor:
        """[N] float32 value estimates (zeros without a value head)."""
        if self.value_head is None:
            return pooled.new_zeros(pooled.shape[0], dtype=torch.float32)
        return self.value_head(pooled.float()).squeeze(-1)

    # Discrete head ------------------------------------------------------------------------------------------

    def bin_logits(self, query_hidden: Tensor) -> Tensor:
        """[N, C*A, hidden] -> [N, C*A, num_bins] float32."""
        return self.head(query_hidden)

    def bins_to_unit(self, bins: Tensor) -> Tensor:
        """Bin indices -> bin centres in [-1, 1]."""
        return (2 * bins.float() + 1) / self.config.num_bins - 1

    # Flow head ----------------------------------------------------------------------------------------------

    def flow_sample(self, pooled: Tensor, x0: Tensor, step_noise: Tensor | None) -> tuple[Tensor, Tensor]:
        """Run the K noisy Euler steps from x0 [N, C*A]; step_noise [N, K, C*A] standard normal, or None
        for the noiseless (deterministic) chain. Returns the chain [N, K+1, C*A] and its log-prob [N]."""
        k_steps = self.config.flow_steps
        dt = 1.0 / k_steps
        step_std = self.head.sigma() * math.sqrt(dt)
        x, chain = x0.float(), [x0.float()]
        for k in range(k_steps):
            t = x.new_full((x.shape[0],), k * dt)
            x = x + self.head.velocity(x, t, pooled) * dt
            if step_noise is not None:
                x = x + step_std * step_noise[:, k]
            chain.append(x)
        chain_t = torch.stack(chain, dim=1)
        return chain_t, self.flow_log_prob(pooled, chain_t)

    def flow_log_prob(self, pooled: Tensor, chain: Tensor) -> Tensor:
        """sum_k log N(x_{k+1}; x_k + v(x_k, t_k) dt, sigma^2 dt), all K steps in one batched expert call.

        The injected noise scales with sqrt(dt), as an SDE's does, so the chain's total noise is
        sigma whatever K is.

        x_0's N(0, I) density is left out: it does not depend on any parameter, so it cancels in
        every probability ratio and has zero gradient.
        """
        n, k_steps, dim = chain.shape[0], self.config.flow_steps, chain.shape[2]
        dt = 1.0 / k_steps
        x_k = chain[:, :-1].reshape(n * k_steps, dim)
        t = (torch.arange(k_steps, device=chain.device, dtype=torch.float32) * dt).repeat(n)
        cond = pooled.repeat_interleave(k_steps, dim=0)
        mean = x_k + self.head.velocity(x_k, t, cond) * dt
        log_sigma = self.head.sigma().log() + 0.5 * math.log(dt)
        z = (chain[:, 1:].reshape(n * k_steps, dim) - mean) / log_sigma.exp()
        log_p = -0.5 * z.square() - log_sigma - _HALF_LOG_2PI
        return log_p.view(n, k_steps * dim).sum(-1)

    def flow_entropy(self, n: int) -> Tensor:
        """[N] sum over the K steps of the injected Gaussians' entropies (state-independent)."""
        log_sigma = self.head.sigma().log() + 0.5 * math.log(1.0 / self.config.flow_steps)
        per_step = (0.5 + _HALF_LOG_2PI + log_sigma).sum()
        return (self.config.flow_steps * per_step).expand(n)
