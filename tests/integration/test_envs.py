"""CpuEnvBatch on real ManiSkill3 tasks: shapes, seeding, masked stepping."""

import pytest
import torch

from dvla.config import EnvConfig
from dvla.envs import CpuEnvBatch, make_env_batch, step_chunk

TASKS = ["PushCube-v1", "PickCube-v1"]

# ManiSkill 3.0 calls np.isnan on torch tensors; NumPy 2 warns about it on every CPU step.
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")


@pytest.fixture(scope="module", params=TASKS)
def batch(request):
    envs = CpuEnvBatch(EnvConfig(task=request.param, num_envs=2, max_episode_steps=20))
    yield envs
    envs.close()


def random_actions(num_steps: int, action_dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(num_steps, action_dim, generator=g) * 2 - 1  # [K, A]


def test_reset_shapes_match_spec(batch):
    obs, images = batch.reset([0, 1])
    assert obs.shape == (2, batch.spec.obs_dim) and images.shape == (2, 0)
    assert obs.dtype == torch.float32
    assert batch.spec.action_dim == len(batch.spec.action_low) == len(batch.spec.action_high)
    assert batch.spec.max_episode_steps == 20


def test_same_seed_same_initial_obs_and_different_seeds_differ(batch):
    same, _ = batch.reset([7, 7])
    assert torch.equal(same[0], same[1])
    again, _ = batch.reset([7, 7])
    assert torch.equal(same, again)
    different, _ = batch.reset([7, 8])
    assert not torch.equal(different[0], different[1])


def test_inactive_env_is_untouched_and_resumes_where_it_stopped(batch):
    a = batch.spec.action_dim
    actions = random_actions(6, a, seed=0)
    batch.reset([3, 3])
    both, only0, only1 = (torch.tensor(x) for x in ([True, True], [True, False], [False, True]))
    for k in range(2):
        batch.step(actions[k].expand(2, a), both)
    # env 0 runs ahead while env 1 waits; then env 1 catches up with the same actions.
    ahead = []
    for k in range(2, 6):
        res = batch.step(actions[k].expand(2, a), only0)
        assert torch.all(res.obs[1] == 0) and res.reward[1] == 0
        assert not (res.terminated[1] or res.truncated[1] or res.success[1])
        ahead.append(res.obs[0])
    for k in range(2, 6):
        res = batch.step(actions[k].expand(2, a), only1)
        assert torch.all(res.obs[0] == 0)
        assert torch.equal(res.obs[1], ahead[k - 2])


def test_reward_is_finite_and_episode_truncates(batch):
    batch.reset([0, 1])
    actions = random_actions(batch.spec.max_episode_steps, batch.spec.action_dim, seed=1)
    active = torch.ones(2, dtype=torch.bool)
    for k in range(batch.spec.max_episode_steps):
        res = batch.step(actions[k].expand(2, -1) * 5, active)  # out of bounds: clipped
        assert torch.isfinite(res.reward).all() and torch.isfinite(res.obs).all()
    assert res.truncated.all()


def test_bad_arguments_raise_value_error(batch):
    with pytest.raises(ValueError, match="one seed per env"):
        batch.reset([0])
    with pytest.raises(ValueError, match="actions must have shape"):
        batch.step(torch.zeros(2, batch.spec.action_dim + 1), torch.ones(2, dtype=torch.bool))


def test_unknown_task_names_registered_ids():
    with pytest.raises(ValueError, match="PushCube-v1"):
        make_env_batch(EnvConfig(task="PushCub-v1", sim_backend="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="'auto' picks the GPU backend here")
def test_auto_backend_without_cuda_is_cpu_and_gpu_backend_is_refused():
    envs = make_env_batch(EnvConfig(num_envs=1))
    try:
        assert isinstance(envs, CpuEnvBatch)
    finally:
        envs.close()
    with pytest.raises(ValueError, match="needs CUDA"):
        make_env_batch(EnvConfig(num_envs=1, sim_backend="physx_cuda"))


def test_step_chunk_equals_single_steps_and_stops_at_the_episode_end():
    cfg = EnvConfig(task="PushCube-v1", num_envs=2, max_episode_steps=6, sim_backend="cpu")
    a, b = CpuEnvBatch(cfg), CpuEnvBatch(cfg)
    try:
        chunk = random_actions(8, a.spec.action_dim, seed=3).reshape(2, 4, -1)  # [N=2, C=4, A]
        a.reset([5, 6]), b.reset([5, 6])
        active = torch.ones(2, dtype=torch.bool)
        first = step_chunk(a, chunk, active)
        rewards = sum(b.step(chunk[:, j], active).reward for j in range(4))
        assert first.steps.tolist() == [4, 4] and torch.allclose(first.reward, rewards)
        second = step_chunk(a, chunk, active)  # only 2 of 4 steps are left before truncation
        assert second.steps.tolist() == [2, 2] and second.truncated.all()
        for j in range(2):
            last = b.step(chunk[:, j], active)
        assert torch.equal(second.obs, last.obs)
    finally:
        a.close(), b.close()


def test_rgb_observations_carry_the_state_an_image_and_an_instruction():
    envs = CpuEnvBatch(
        EnvConfig(
            task="PickCube-v1",
            obs_mode="rgb",
            image_size=32,
            num_envs=2,
            max_episode_steps=5,
            control_mode="pd_ee_delta_pos",
            sim_backend="cpu",
        )
    )
    try:
        assert envs.spec.image_shape == (32, 32, 3) and envs.spec.image_size == 32 * 32 * 3
        assert "cube" in envs.spec.instruction
        state, images = envs.reset([4, 4])
        assert state.shape == (2, envs.spec.obs_dim) and images.dtype == torch.uint8
        assert torch.equal(images[0], images[1]) and images.float().std() > 5  # same seed, a real picture
        res = envs.step(torch.zeros(2, envs.spec.action_dim), torch.tensor([True, False]))
        assert res.images.shape == (2, 32 * 32 * 3) and res.images[0].any() and not res.images[1].any()
    finally:
        envs.close()


def test_a_chunk_renders_only_what_the_policy_reads_and_matches_rendering_every_step():
    cfg = EnvConfig(
        task="PickCube-v1",
        obs_mode="rgb",
        image_size=32,
        num_envs=2,
        max_episode_steps=6,
        control_mode="pd_ee_delta_pos",
        sim_backend="cpu",
    )
    a, b = CpuEnvBatch(cfg), CpuEnvBatch(cfg)
    try:
        chunk = random_actions(8, a.spec.action_dim, seed=4).reshape(2, 4, -1)
        a.reset([9, 9]), b.reset([9, 9])
        active = torch.ones(2, dtype=torch.bool)
        for expect_steps in (4, 2):  # the second chunk is cut by truncation after 2 steps
            chunked = step_chunk(a, chunk, active)
            for j in range(expect_steps):
                every = b.step(chunk[:, j], active)
            assert chunked.steps.tolist() == [expect_steps] * 2
            assert torch.equal(chunked.images, every.images) and torch.allclose(chunked.obs, every.obs)
        assert chunked.truncated.all()
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("task", TASKS)
def test_stepping_under_inference_mode_matches_plain_maniskill_and_returns_ordinary_tensors(task):
    """CpuEnvBatch runs ManiSkill under torch.inference_mode (faster): the envs must behave exactly as
    ManiSkill's own envs stepped without it, and what comes out must be usable anywhere (in place, autograd)."""
    from dvla.envs.maniskill import CPU_BACKEND, _make, _split_obs

    cfg = EnvConfig(task=task, num_envs=2, max_episode_steps=20)
    ours, theirs = CpuEnvBatch(cfg), [_make(cfg, 1, CPU_BACKEND) for _ in range(2)]
    try:
        obs, _ = ours.reset([3, 4])
        plain = torch.cat([_split_obs(env.reset(seed=s)[0], 1)[0] for env, s in zip(theirs, (3, 4))])
        assert torch.equal(obs, plain)
        actions = random_actions(24, ours.spec.action_dim, seed=5).reshape(2, 12, -1)
        active = torch.ones(2, dtype=torch.bool)
        for t in range(12):
            res = ours.step(actions[:, t], active)
            for i, env in enumerate(theirs):
                o, r, term, trunc, info = env.step(actions[i, t : t + 1])
                assert torch.equal(res.obs[i], _split_obs(o, 1)[0][0])
                assert res.reward[i].item() == float(r.reshape(-1)[0])
                assert bool(res.success[i]) == bool(info["success"].reshape(-1)[0])
        for x in (obs, res.obs, res.reward, res.success, *ours.observe(active)):
            assert not x.is_inference()
        res.obs += 1.0  # in place, outside inference mode: an inference tensor would refuse it
        w = torch.ones(ours.spec.obs_dim, requires_grad=True)
        (res.obs @ w).sum().backward()  # and into autograd
        assert w.grad is not None
    finally:
        ours.close()
        for env in theirs:
            env.close()
