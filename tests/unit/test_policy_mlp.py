"""MLPPolicy: the Policy contract on a small state policy."""

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dvla.config import MlpConfig, PolicyConfig
from dvla.policy import REGISTRY, MLPPolicy, build_policy
from dvla.types import EnvSpec

SPEC = EnvSpec(
    task="Fake-v0", obs_dim=5, action_dim=3, action_low=(-1.0,) * 3, action_high=(1.0,) * 3, max_episode_steps=10
)
CFG = PolicyConfig(mlp=MlpConfig(hidden_sizes=(16, 16)))


def make_policy(seed: int = 0, cfg: PolicyConfig = CFG) -> MLPPolicy:
    torch.manual_seed(seed)
    return build_policy(cfg, SPEC)


def obs(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, SPEC.obs_dim, generator=torch.Generator().manual_seed(seed))


def test_build_policy_by_name_and_unknown_name():
    assert isinstance(make_policy(), MLPPolicy) and "mlp" in REGISTRY
    with pytest.raises(ValueError, match="mlp"):
        build_policy(PolicyConfig(name="nope"), SPEC)


def test_act_shapes_and_no_grad():
    out = make_policy().act(obs())
    assert out.actions.shape == (6, 3) and out.log_probs.shape == (6,) and out.values.shape == (6,)
    assert not out.actions.requires_grad and not out.log_probs.requires_grad


def test_act_log_probs_match_evaluate():
    policy, o = make_policy(), obs()
    act = policy.act(o, generator=torch.Generator().manual_seed(3))
    ev = policy.evaluate(o, act.actions)
    torch.testing.assert_close(ev.log_probs.detach(), act.log_probs)
    torch.testing.assert_close(ev.values.detach(), act.values)
    assert ev.entropy.shape == (6,)


def test_deterministic_act_returns_mean():
    policy, o = make_policy(), obs()
    out = policy.act(o, deterministic=True)
    torch.testing.assert_close(out.actions, policy.actor_mean(o).detach())


def test_seeded_act_is_reproducible():
    policy, o = make_policy(), obs()
    a = policy.act(o, generator=torch.Generator().manual_seed(7)).actions
    b = policy.act(o, generator=torch.Generator().manual_seed(7)).actions
    c = policy.act(o, generator=torch.Generator().manual_seed(8)).actions
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, c)


def test_export_load_round_trip():
    src, dst, o = make_policy(0), make_policy(1), obs()
    actions = src.act(o, deterministic=True).actions
    weights = src.export_weights()
    assert all(t.device.type == "cpu" and t.is_contiguous() for t in weights.values())
    dst.load_weights(st_load(st_save(weights)))  # through the wire format
    a, b = src.evaluate(o, actions), dst.evaluate(o, actions)
    for x, y in [(a.log_probs, b.log_probs), (a.entropy, b.entropy), (a.values, b.values)]:
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def test_exported_weights_do_not_alias_parameters():
    policy = make_policy()
    weights = policy.export_weights()
    before = weights["actor_log_std"].clone()
    with torch.no_grad():
        policy.actor_log_std.add_(1.0)
    torch.testing.assert_close(weights["actor_log_std"], before)


def test_load_weights_keeps_optimizer_working():
    policy = make_policy(0)
    opt = torch.optim.SGD(policy.parameters(), lr=0.1)
    policy.load_weights(make_policy(1).export_weights())
    before = policy.actor_log_std.detach().clone()
    policy.evaluate(obs(), torch.zeros(6, 3)).log_probs.sum().backward()
    opt.step()
    assert not torch.equal(policy.actor_log_std.detach(), before)


def test_load_weights_rejects_missing_and_misshapen():
    policy = make_policy()
    weights = policy.export_weights()
    missing = {k: v for k, v in weights.items() if k != "actor_log_std"}
    with pytest.raises(ValueError, match="actor_log_std"):
        policy.load_weights(missing)
    wrong_shape = dict(weights, **{"critic.0.weight": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"critic\.0\.weight"):
        policy.load_weights(wrong_shape)
    wrong_dtype = dict(weights, actor_log_std=weights["actor_log_std"].double())
    with pytest.raises(ValueError, match="actor_log_std"):
        policy.load_weights(wrong_dtype)
    with pytest.raises(ValueError, match="extra"):
        policy.load_weights(dict(weights, extra=torch.zeros(1)))


def test_gradients_reach_all_parameters():
    policy, o = make_policy(), obs()
    actions = policy.act(o, generator=torch.Generator().manual_seed(0)).actions
    ev = policy.evaluate(o, actions)
    (-ev.log_probs.mean() - 0.01 * ev.entropy.mean() + ev.values.square().mean()).backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_no_value_head_gives_zero_values():
    policy = make_policy(cfg=PolicyConfig(mlp=MlpConfig(hidden_sizes=(8,)), value_head=False))
    assert policy.critic is None
    assert torch.equal(policy.act(obs()).values, torch.zeros(6))
    assert not any(k.startswith("critic") for k in policy.export_weights())


def test_init_log_std_and_orthogonal_init():
    policy = make_policy(cfg=PolicyConfig(mlp=MlpConfig(hidden_sizes=(16,), init_log_std=-1.25)))
    torch.testing.assert_close(policy.actor_log_std.detach(), torch.full((3,), -1.25))
    w = policy.actor_mean[0].weight.detach()  # [16, 5], orthogonal columns scaled by sqrt(2)
    torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(5), atol=1e-5, rtol=0)
    assert policy.actor_mean[-1].bias.abs().sum() == 0
