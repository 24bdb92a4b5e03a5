"""CpuEnvBatch on real ManiSkill3 tasks: shapes, seeding, masked stepping."""
import pytest
import torch

from dvla.config import EnvConfig
from dvla.envs import CpuEnvBatch, make_env_batch

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
    obs = batch.reset([0, 1])
    assert obs.shape == (2, batch.spec.obs_dim)
    assert obs.dtype == torch.float32
    assert batch.spec.action_dim == len(batch.spec.action_low) == len(batch.spec.action_high)
    assert batch.spec.max_episode_steps == 20


def test_same_seed_same_initial_obs_and_different_seeds_differ(batch):
    same = batch.reset([7, 7])
    assert torch.equal(same[0], same[1])
    again = batch.reset([7, 7])
    assert torch.equal(same, again)
    different = batch.reset([7, 8])
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
