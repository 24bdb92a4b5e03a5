"""VLAPolicy: the Policy contract on the tiny VLA, both action heads, and the transformers save format."""

import json
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig

from dvla.config import PolicyConfig, VlaConfig
from dvla.policy import REGISTRY, build_policy
from dvla.policy.vla import DvlaVLAModel, VLAPolicy, build_vla, vla_config
from dvla.types import EnvSpec

SPEC = EnvSpec(
    task="PickCube-v1",
    obs_dim=29,
    action_dim=4,
    action_low=(-1.0,) * 4,
    action_high=(1.0,) * 4,
    max_episode_steps=50,
    image_shape=(64, 64, 3),
    instruction="pick up the cube",
)
HEADS = ["discrete", "flow"]
N = 6


def make_cfg(head: str, **kw) -> PolicyConfig:
    vla = VlaConfig(size="tiny", action_head=head, num_bins=32, flow_steps=3)
    return PolicyConfig(name="vla", chunk_size=2, dtype="float32", vla=vla, **kw)


def make_policy(head: str, seed: int = 0, **kw) -> VLAPolicy:
    torch.manual_seed(seed)
    return build_policy(make_cfg(head, **kw), SPEC)


def inputs(n: int = N, seed: int = 0, spec: EnvSpec = SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, spec.obs_dim, generator=g)
    images = torch.randint(0, 256, (n, spec.image_size), generator=g, dtype=torch.uint8)
    return obs, images


def sample_dim(head: str) -> int:
    c, a, k = 2, SPEC.action_dim, 3
    return c * a if head == "discrete" else (k + 1) * c * a


@pytest.fixture(scope="module", params=HEADS)
def head_policy(request):
    return request.param, make_policy(request.param)


def test_registered_by_name_and_loaded_only_when_asked_for():
    assert "vla" in REGISTRY and isinstance(build_policy(make_cfg("discrete"), SPEC), VLAPolicy)
    # an MLP run's processes start without transformers (~3 s of CPU each)
    code = "import sys, dvla.policy, dvla.lanes.sampling, dvla.algo.learner; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_act_matches_evaluate_and_shapes(head_policy):
    head, policy = head_policy
    obs, images = inputs()
    out = policy.act(obs, images, generator=torch.Generator().manual_seed(3))
    s = sample_dim(head)
    assert policy.sample_dim == s and policy.chunk_size == 2
    assert out.actions.shape == (N, s) and out.actions.dtype == torch.float32
    assert out.chunk.shape == (N, 2, SPEC.action_dim) and out.chunk.dtype == torch.float32
    assert out.log_probs.shape == (N,) and out.values.shape == (N,)
    assert not out.log_probs.requires_grad
    ev = policy.evaluate(obs, out.actions, images)
    torch.testing.assert_close(ev.log_probs.detach(), out.log_probs, atol=1e-4, rtol=0)
    torch.testing.assert_close(ev.values.detach(), out.values, atol=1e-4, rtol=0)
    assert ev.entropy.shape == (N,) and torch.isfinite(ev.entropy).all()
    # Explicit instructions equal to the default give the same log-probs, and mixing in a longer
    # instruction (more padding in the batch) does not change the rows that kept theirs.
    mixed = [SPEC.instruction] * (N - 2) + ["put the red cube on the green one, carefully"] * 2
    ev_mixed = policy.evaluate(obs, out.actions, images, mixed)
    torch.testing.assert_close(ev_mixed.log_probs[: N - 2].detach(), out.log_probs[: N - 2], atol=1e-4, rtol=0)


def test_discrete_chunk_is_bin_centres():
    policy = make_policy("discrete")
    obs, images = inputs()
    out = policy.act(obs, images)
    centres = (2 * out.actions + 1) / 32 - 1
    torch.testing.assert_close(out.chunk.reshape(N, -1), centres)
    assert out.actions.min() >= 0 and out.actions.max() < 32


def test_flow_chunk_is_chain_end():
    policy = make_policy("flow")
    obs, images = inputs()
    out = policy.act(obs, images)
    torch.testing.assert_close(out.chunk.reshape(N, -1), out.actions[:, -2 * SPEC.action_dim :])


def test_deterministic_and_seeded_act_reproducible(head_policy):
    _, policy = head_policy
    obs, images = inputs()
    a = policy.act(obs, images, deterministic=True)
    b = policy.act(obs, images, deterministic=True)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.chunk, b.chunk)
    s1 = policy.act(obs, images, generator=torch.Generator().manual_seed(7)).actions
    s2 = policy.act(obs, images, generator=torch.Generator().manual_seed(7)).actions
    s3 = policy.act(obs, images, generator=torch.Generator().manual_seed(8)).actions
    assert torch.equal(s1, s2) and not torch.equal(s1, s3)


def test_backward_reaches_vision_backbone_and_head(head_policy):
    _, policy = head_policy
    obs, images = inputs()
    actions = policy.act(obs, images, generator=torch.Generator().manual_seed(1)).actions
    policy.zero_grad()
    ev = policy.evaluate(obs, actions, images)
    (-ev.log_probs.mean() + ev.values.square().mean()).backward()

    def has_grad(module: torch.nn.Module) -> bool:
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())

    model = policy.model
    assert has_grad(model.vision) and has_grad(model.backbone) and has_grad(model.head)
    assert has_grad(model.value_head)
    policy.zero_grad()


def test_save_and_from_pretrained_round_trip(head_policy, tmp_path):
    _, policy = head_policy
    obs, images = inputs()
    out = policy.act(obs, images, generator=torch.Generator().manual_seed(2))
    policy.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "dvla_vla"
    loaded = VLAPolicy.from_pretrained(tmp_path, SPEC, dtype="float32")
    a, b = policy.evaluate(obs, out.actions, images), loaded.evaluate(obs, out.actions, images)
    assert torch.equal(a.log_probs, b.log_probs) and torch.equal(a.values, b.values)
    assert torch.equal(a.entropy, b.entropy)
    det_a, det_b = policy.act(obs, images, deterministic=True), loaded.act(obs, images, deterministic=True)
    assert torch.equal(det_a.chunk, det_b.chunk)
    # build_vla with a path loads the same weights.
    via_cfg = build_vla(replace(make_cfg(policy.action_head), path=str(tmp_path)), SPEC)
    assert torch.equal(via_cfg.evaluate(obs, out.actions, images).log_probs, a.log_probs)


def test_export_and_load_weights_into_fresh_policy(head_policy):
    head, policy = head_policy
    obs, images = inputs()
    out = policy.act(obs, images, generator=torch.Generator().manual_seed(4))
    weights = policy.export_weights()
    assert any(k.startswith("model.vision.") for k in weights) and any(k.startswith("model.backbone.") for k in weights)
    assert any(k.startswith("model.head.") for k in weights)
    fresh = make_policy(head, seed=1)
    assert not torch.equal(
        fresh.evaluate(obs, out.actions, images).log_probs, policy.evaluate(obs, out.actions, images).log_probs
    )
    fresh.load_weights(weights)
    a, b = policy.evaluate(obs, out.actions, images), fresh.evaluate(obs, out.actions, images)
    assert torch.equal(a.log_probs, b.log_probs) and torch.equal(a.values, b.values)


def test_weights_save_as_safetensors_without_shared_tensors(tmp_path):
    weights = make_policy("flow").export_weights()
    save_file(weights, str(tmp_path / "w.safetensors"))
    assert load_file(str(tmp_path / "w.safetensors")).keys() == weights.keys()


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        VLAPolicy.from_pretrained(tmp_path / "nope", SPEC)
    policy = make_policy("discrete")
    saved = tmp_path / "saved"
    policy.save_pretrained(saved)
    (saved / "model.safetensors").rename(tmp_path / "moved.safetensors")
    with pytest.raises(ValueError, match="no model.safetensors"):
        VLAPolicy.from_pretrained(saved, SPEC)
    bert = tmp_path / "bert"
    BertConfig().save_pretrained(bert)
    save_file({"x": torch.zeros(1)}, str(bert / "model.safetensors"))
    with pytest.raises(ValueError, match="bert"):
        VLAPolicy.from_pretrained(bert, SPEC)
    # A weights file missing a tensor is refused (strict loading).
    tensors = load_file(str(tmp_path / "moved.safetensors"))
    tensors.pop(next(iter(tensors)))
    save_file(tensors, str(saved / "model.safetensors"))
    with pytest.raises(ValueError, match="missing"):
        VLAPolicy.from_pretrained(saved, SPEC)
    with pytest.raises(ValueError, match="action_dim"):
        VLAPolicy.from_pretrained(saved, replace(SPEC, action_dim=3, action_low=(-1.0,) * 3, action_high=(1.0,) * 3))
    with pytest.raises(ValueError, match="image_shape"):
        VLAPolicy.from_pretrained(saved, replace(SPEC, image_shape=(32, 32, 3)))


def test_bad_inputs_raise(head_policy):
    head, policy = head_policy
    obs, images = inputs()
    with pytest.raises(ValueError, match="images"):
        policy.act(obs, None)
    with pytest.raises(ValueError, match="images"):
        policy.act(obs, images[:, :-3])
    with pytest.raises(ValueError, match="uint8"):
        policy.act(obs, images.float())
    with pytest.raises(ValueError, match="obs"):
        policy.act(obs[:, :-1], images)
    with pytest.raises(ValueError, match="instructions"):
        policy.act(obs, images, ["just one"])
    with pytest.raises(ValueError, match="actions"):
        policy.evaluate(obs, torch.zeros(N, sample_dim(head) + 1), images)


def test_other_image_size_is_resized():
    spec = replace(SPEC, image_shape=(40, 48, 3))
    torch.manual_seed(0)
    policy = build_vla(make_cfg("discrete"), spec)
    obs, images = inputs(spec=spec)
    out = policy.act(obs, images)
    ev = policy.evaluate(obs, out.actions, images)
    torch.testing.assert_close(ev.log_probs.detach(), out.log_probs, atol=1e-4, rtol=0)


def test_state_only_spec_is_refused():
    with pytest.raises(ValueError, match="obs_mode"):
        build_vla(make_cfg("discrete"), replace(SPEC, image_shape=()))


@pytest.mark.parametrize("head", HEADS)
def test_parameter_counts(head):
    cfg = make_cfg(head)
    assert sum(p.numel() for p in make_policy(head).parameters()) < 5e6
    for size, low, high in (("small", 85e6, 115e6), ("1b", 0.9e9, 1.3e9)):
        with torch.device("meta"):
            model = DvlaVLAModel(
                vla_config(size, head, SPEC, replace(cfg, vla=replace(cfg.vla, size=size), chunk_size=4))
            )
        assert low <= sum(p.numel() for p in model.parameters()) <= high, size


def test_flow_log_prob_matches_naive_loop():
    policy = make_policy("flow")
    model, obs_images = policy.model, inputs()
    out = policy.act(*obs_images, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        pooled, _ = model.run_backbone(*policy._inputs(*obs_images, None), with_queries=False)
        chain = out.actions.view(N, 4, -1)  # K + 1 = 4 chain states
        expected = torch.zeros(N)
        for k in range(3):
            t = torch.full((N,), k / 3)
            mean = chain[:, k] + model.head.velocity(chain[:, k], t, pooled) / 3
            step = torch.distributions.Normal(mean, model.head.log_sigma.exp() * (1 / 3) ** 0.5)  # sigma sqrt(dt)
            expected += step.log_prob(chain[:, k + 1]).sum(-1)
    torch.testing.assert_close(out.log_probs, expected, atol=1e-4, rtol=0)


def test_proprioception_is_optional():
    with_state = build_vla(PolicyConfig(name="vla", chunk_size=4), SPEC)
    without = build_vla(PolicyConfig(name="vla", chunk_size=4, vla=VlaConfig(use_state=False)), SPEC)
    assert with_state.model.state_proj is not None and without.model.state_proj is None
    obs, images = inputs()
    a = without.act(obs, images, deterministic=True)
    b = without.act(torch.randn_like(obs), images, deterministic=True)
    assert torch.equal(a.actions, b.actions)  # the state is not read
