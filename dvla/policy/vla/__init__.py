"""The `vla` policy family: VLAPolicy wraps a DvlaVLAModel (transformers format) in the Policy interface.

Samples (ActOutput.actions, what evaluate scores), with C = chunk_size, A = action_dim, K = flow_steps:
  discrete: S = C*A, the chosen bin index of each (chunk step, action dim), as float32
  flow:     S = (K+1)*C*A, the whole denoising chain [x_0, ..., x_K] flattened; the env chunk is x_K
"""

from __future__ import annotations

import json
import os

import torch
from torch import Tensor, nn

from dvla.config import PolicyConfig
from dvla.policy.base import ActOutput, EvalOutput, Policy
from dvla.policy.vla.configuration import MODEL_TYPE, DvlaVLAConfig, vla_config
from dvla.policy.vla.modeling import DvlaVLAModel
from dvla.policy.vla.processing import VLAProcessor
from dvla.types import EnvSpec

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' -> bfloat16 with CUDA, else float32."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    if name in ("float32", "bfloat16"):
        return getattr(torch, name)
    raise ValueError(f"unknown vla dtype '{name}'; choose auto, float32 or bfloat16")


class VLAPolicy(Policy):
    """A DvlaVLAModel plus its processor; reads state, a camera image and an instruction per row."""

    def __init__(self, model: DvlaVLAModel):
        super().__init__()
        cfg = model.config
        self.model = model
        self.processor = VLAProcessor(cfg.image_shape, cfg.vision_config.image_size, cfg.max_instruction_tokens)
        self.action_head = cfg.action_head
        self.chunk_size, self.sample_dim = cfg.chunk_size, cfg.sample_dim

    # Saving and loading ---------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike, weights: dict[str, Tensor] | None = None) -> None:
        """Write config.json and model.safetensors (transformers format); with `weights` (this policy's
        names, e.g. an actor group's gathered full weights), those tensors rather than the module's own."""
        if weights is None:
            self.model.save_pretrained(directory)
            return
        prefix = "model."
        self.model.save_pretrained(directory, state_dict={k[len(prefix) :]: v for k, v in weights.items()})

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP shards as units of their own: each transformer layer (gathered only while it runs) and the
        float32 heads, so that every unit holds one dtype when the trunk is bfloat16."""
        layers = set(self.model._no_split_modules)
        units = [m for m in self.model.modules() if type(m).__name__ in layers]
        return units + [m for m in (self.model.head, self.model.value_head) if m is not None]

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, spec: EnvSpec, dtype: str = "auto") -> VLAPolicy:
        """Load a saved DvlaVLAModel strictly and check it fits `spec`."""
        directory = os.fspath(directory)
        check_pretrained_dir(directory)
        config = DvlaVLAConfig.from_pretrained(directory)
        _check_fits(config, spec, directory)
        # Load in float32 (exact for bf16 weights), then cast the trunk, so heads stay float32.
        model, info = DvlaVLAModel.from_pretrained(
            directory, config=config, dtype=torch.float32, output_loading_info=True
        )
        problems = {
            k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v
        }
        if problems:
            raise ValueError(f"vla checkpoint '{directory}' does not match the model: {problems}")
        # transformers (5.x) leaves the tensors as views into the mapped file, at offsets that are not
        # 64-byte aligned: CPU kernels then sum in another order (values differed by 1 ulp), and the
        # tensors would change if the file did. Each gets memory of its own.
        with torch.no_grad():
            for t in [*model.parameters(), *model.buffers()]:
                t.data = t.data.clone()
        # transformers hands the model back in eval mode; a policy starts in train mode like a freshly
        # built one (the caller chooses .eval()), so a save/load round trip computes exactly the same
        return cls(model.cast_trunk(resolve_dtype(dtype))).train()

    # Input checks ---------------------------------------------------------------------------------------------

    def _inputs(self, obs: Tensor, images: Tensor | None, instructions: list[str] | None):
        cfg, device = self.model.config, self.model.device
        if not isinstance(obs, Tensor) or obs.dim() != 2 or obs.shape[1] != cfg.state_dim:
            raise ValueError(f"obs has shape {tuple(getattr(obs, 'shape', ()))}, expected [N, {cfg.state_dim}]")
        if not obs.is_floating_point():
            raise ValueError(f"obs has dtype {obs.dtype}, expected float32")
        n = obs.shape[0]
        if images is None:
            raise ValueError("the vla policy needs images (uint8 [N, H*W*3]); got None")
        if images.dtype != torch.uint8:
            raise ValueError(f"images have dtype {images.dtype}, expected torch.uint8")
        if images.shape != (n, self.processor.num_pixels):
            raise ValueError(
                f"images have shape {tuple(images.shape)}, expected [{n}, {self.processor.num_pixels}] "
                f"(flattened {tuple(cfg.image_shape)})"
            )
        if instructions is None:
            instructions = [cfg.instruction] * n
        elif len(instructions) != n or not all(isinstance(s, str) for s in instructions):
            raise ValueError(f"instructions must be {n} strings, got {len(instructions)} items")
        pixels = self.processor.pixel_values(images, device, self.model.trunk_dtype)
        input_ids, text_mask = self.processor.tokens(instructions, device)
        return pixels, obs.to(device), input_ids, text_mask

    def _check_actions(self, actions: Tensor, n: int) -> None:
        if not isinstance(actions, Tensor) or actions.shape != (n, self.sample_dim):
            raise ValueError(
                f"actions have shape {tuple(getattr(actions, 'shape', ()))}, "
                f"expected [{n}, {self.sample_dim}] ({self.action_head} head sample)"
            )
        if not actions.is_floating_point():
            raise ValueError(f"actions have dtype {actions.dtype}, expected float32")

    # Policy interface -----------------------------------------------------------------------------------------

    def value(self, obs: Tensor, images: Tensor | None = None, instructions: list[str] | None = None) -> Tensor:
        pooled, _ = self.model.run_backbone(*self._inputs(obs, images, instructions), with_queries=False)
        return self.model.value_from(pooled)

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        images: Tensor | None = None,
        instructions: list[str] | None = None,
        *,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> ActOutput:
        model, cfg = self.model, self.model.config
        inputs = self._inputs(obs, images, instructions)
        n, dim, device = obs.shape[0], cfg.num_action_tokens, model.device
        discrete = self.action_head == "discrete"
        pooled, query_hidden = model.run_backbone(*inputs, with_queries=discrete)
        if discrete:
            log_p = torch.log_softmax(model.bin_logits(query_hidden), dim=-1)
            if deterministic:
                bins = log_p.argmax(-1)
            else:  # inverse CDF: one uniform per token, drawn by us so `generator` governs it
                cdf = log_p.exp().cumsum(-1)
                u = _draw(torch.rand, (n, dim, 1), generator, device) * cdf[..., -1:]
                bins = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=cfg.num_bins - 1)
            log_probs = log_p.gather(-1, bins[..., None]).squeeze(-1).sum(-1)
            sample, chunk = bins.float(), model.to_env_actions(model.bins_to_unit(bins))
        else:
            if deterministic:  # start at the prior's mean and inject no noise
                x0, noise = torch.zeros(n, dim, device=device), None
            else:
                x0 = _draw(torch.randn, (n, dim), generator, device) * cfg.init_action_std
                noise = _draw(torch.randn, (n, cfg.flow_steps, dim), generator, device)
            chain, log_probs = model.flow_sample(pooled, x0, noise)
            sample, chunk = chain.reshape(n, -1), model.to_env_actions(chain[:, -1])
        return ActOutput(actions=sample, log_probs=log_probs, values=model.value_from(pooled), chunk=chunk)

    def evaluate(
        self, obs: Tensor, actions: Tensor, images: Tensor | None = None, instructions: list[str] | None = None
    ) -> EvalOutput:
        model, cfg = self.model, self.model.config
        inputs = self._inputs(obs, images, instructions)
        n = obs.shape[0]
        self._check_actions(actions, n)
        actions = actions.to(model.device)
        if self.action_head == "discrete":
            pooled, query_hidden = model.run_backbone(*inputs, with_queries=True)
            bins = actions.long()
            if bins.min() < 0 or bins.max() >= cfg.num_bins or not torch.equal(bins.float(), actions.float()):
                raise ValueError(f"discrete actions must be whole bin indices in [0, {cfg.num_bins})")
            log_p = torch.log_softmax(model.bin_logits(query_hidden), dim=-1)
            log_probs = log_p.gather(-1, bins[..., None]).squeeze(-1).sum(-1)
            entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)
        else:
            pooled, _ = model.run_backbone(*inputs, with_queries=False)
            chain = actions.float().view(n, cfg.flow_steps + 1, cfg.num_action_tokens)
            log_probs, entropy = model.flow_log_prob(pooled, chain), model.flow_entropy(n)
        return EvalOutput(log_probs=log_probs, entropy=entropy, values=model.value_from(pooled))


def _draw(fn, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Random draws on the generator's device (CPU without one), moved to `device`: reproducible anywhere."""
    where = generator.device if generator is not None else torch.device("cpu")
    return fn(shape, generator=generator, device=where, dtype=torch.float32).to(device)


def _check_fits(config: DvlaVLAConfig, spec: EnvSpec, directory: str) -> None:
    for name, saved, env in (
        ("action_dim", config.action_dim, spec.action_dim),
        ("state_dim", config.state_dim, spec.obs_dim),
        ("image_shape", tuple(config.image_shape), tuple(spec.image_shape)),
    ):
        if saved != env:
            raise ValueError(f"vla checkpoint '{directory}' has {name} {saved}, but the env has {env}")


def check_pretrained_dir(directory: str | os.PathLike) -> None:
    """ValueError unless `directory` holds a saved dvla VLA (config.json of our model_type + weights).

    Cheap (reads config.json only), so `dvla run` checks policy.path before starting any process.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"vla checkpoint directory '{directory}' does not exist")
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"vla checkpoint '{directory}' has no config.json")
    if not any(os.path.isfile(os.path.join(directory, f)) for f in _WEIGHT_FILES):
        raise ValueError(f"vla checkpoint '{directory}' has no model.safetensors")
    try:
        with open(config_path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"vla checkpoint '{directory}': config.json is not valid JSON ({e})") from None
    if raw.get("model_type") != MODEL_TYPE:
        held = raw.get("architectures") or raw.get("model_type") or "an unknown architecture"
        raise ValueError(
            f"vla checkpoint '{directory}' holds {held} (model_type "
            f"'{raw.get('model_type')}'), not a '{MODEL_TYPE}' model"
        )


def build_vla(cfg: PolicyConfig, spec: EnvSpec) -> VLAPolicy:
    """A VLA for `spec`: loaded from cfg.path, or fresh from the cfg.size preset (torch's global RNG inits)."""
    if not spec.image_shape:
        raise ValueError("the vla policy needs camera images: set env.obs_mode='rgb'")
    if cfg.path:
        return VLAPolicy.from_pretrained(cfg.path, spec, dtype=cfg.dtype)
    model = DvlaVLAModel(vla_config(cfg.vla.size, cfg.vla.action_head, spec, cfg))
    return VLAPolicy(model.cast_trunk(resolve_dtype(cfg.dtype)))


def _register_auto_classes() -> None:
    """Let AutoConfig / AutoModel resolve model_type 'dvla_vla'."""
    from transformers import AutoConfig, AutoModel

    AutoConfig.register(MODEL_TYPE, DvlaVLAConfig, exist_ok=True)
    AutoModel.register(DvlaVLAConfig, DvlaVLAModel, exist_ok=True)


_register_auto_classes()

__all__ = [
    "DvlaVLAConfig",
    "DvlaVLAModel",
    "VLAPolicy",
    "VLAProcessor",
    "build_vla",
    "check_pretrained_dir",
    "vla_config",
]
