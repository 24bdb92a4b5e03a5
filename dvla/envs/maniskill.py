"""ManiSkill3 adapters: N envs behind one tensor interface (reset, step, close).

Two implementations of `EnvBatch`:
- `CpuEnvBatch`: N single-env ManiSkill instances on the physx_cpu backend, stepped
  one after another in this process (the CPU backend holds one env per instance).
- `GpuEnvBatch`: one ManiSkill env with num_envs=N on physx_cuda.

Both return tensors of shape [N, ...]; ManiSkill's own leading batch dim of 1 on
CPU is removed here so callers never see it.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Protocol

import gymnasium as gym
import numpy as np
import torch

from dvla.config import EnvConfig
from dvla.types import EnvSpec

CPU_BACKEND = "physx_cpu"
GPU_BACKEND = "physx_cuda"


@dataclass
class StepResult:
    obs: torch.Tensor  # [N, D] float32, zeros on inactive rows
    reward: torch.Tensor  # [N] float32
    terminated: torch.Tensor  # [N] bool, ended by the task (ManiSkill: success or fail)
    truncated: torch.Tensor  # [N] bool, hit max_episode_steps
    success: torch.Tensor  # [N] bool


class EnvBatch(Protocol):
    spec: EnvSpec
    num_envs: int
    device: torch.device

    def reset(self, seeds: list[int]) -> torch.Tensor:
        """Reset all N envs, env i with seeds[i]; returns obs [N, D] float32."""
        ...

    def step(self, actions: torch.Tensor, active: torch.Tensor) -> StepResult:
        """Step the envs where active[i] ([N] bool) with actions [N, A], clipped to bounds."""
        ...

    def close(self) -> None:
        ...


def make_env_batch(cfg: EnvConfig, device: str | torch.device = "cpu") -> EnvBatch:
    """Build cfg.num_envs envs on the backend cfg.sim_backend asks for.

    'auto' means physx_cuda when CUDA is available, else the CPU backend. Results
    come back on `device` (for the GPU backend, the GPU the simulator runs on).
    """
    backend = cfg.sim_backend
    if backend == "auto":
        backend = GPU_BACKEND if torch.cuda.is_available() else "cpu"
    if backend == "cpu":
        return CpuEnvBatch(cfg, device=device)
    if backend in ("gpu", GPU_BACKEND):
        if not torch.cuda.is_available():
            raise ValueError(f"env.sim_backend='{cfg.sim_backend}' needs CUDA, which this machine lacks; use 'cpu'")
        device = torch.device(device)
        return GpuEnvBatch(cfg, device=device if device.type == "cuda" else torch.device("cuda"))
    raise ValueError(f"unknown env.sim_backend '{cfg.sim_backend}'; use 'auto', 'cpu' or 'physx_cuda'")


def env_spec(task: str, obs_space: gym.Space, action_space: gym.Space, max_episode_steps: int) -> EnvSpec:
    """EnvSpec from one env's (unbatched) spaces; the obs must be a flat state vector."""
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(action_space, gym.spaces.Box):
        raise ValueError(f"{task}: need Box observation and action spaces (obs_mode='state'), "
                         f"got {type(obs_space).__name__} and {type(action_space).__name__}")
    if len(action_space.shape) != 1:
        raise ValueError(f"{task}: expected a flat action space, got shape {action_space.shape}")
    return EnvSpec(
        task=task,
        obs_dim=int(np.prod(obs_space.shape)),
        action_dim=int(action_space.shape[0]),
        action_low=tuple(float(x) for x in action_space.low),
        action_high=tuple(float(x) for x in action_space.high),
        max_episode_steps=max_episode_steps,
    )


def _check_task(task: str) -> None:
    import mani_skill.envs  # noqa: F401  (registers the ManiSkill tasks with gymnasium)
    from mani_skill.utils.registration import REGISTERED_ENVS

    if task in REGISTERED_ENVS:
        return
    ids = sorted(REGISTERED_ENVS)
    near = difflib.get_close_matches(task, ids, n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    examples = ", ".join(x for x in ("PushCube-v1", "PickCube-v1", "StackCube-v1", "PegInsertionSide-v1") if x in ids)
    raise ValueError(f"unknown ManiSkill task '{task}'; {hint}registered ids include {examples} "
                     f"({len(ids)} in all)")


def _make(cfg: EnvConfig, num_envs: int, sim_backend: str) -> gym.Env:
    _check_task(cfg.task)
    return gym.make(
        cfg.task,
        num_envs=num_envs,
        obs_mode=cfg.obs_mode,
        control_mode=cfg.control_mode,
        reward_mode=cfg.reward_mode,
        sim_backend=sim_backend,
        # No renderer: state obs need none, and asking for one warns on machines without CUDA.
        render_backend="none",
        max_episode_steps=cfg.max_episode_steps,
    )


def _spec_of(cfg: EnvConfig, env: gym.Env) -> EnvSpec:
    base = env.unwrapped
    return env_spec(cfg.task, base.single_observation_space, base.single_action_space, cfg.max_episode_steps)


def _bounds(spec: EnvSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    low = torch.tensor(spec.action_low, dtype=torch.float32, device=device)
    high = torch.tensor(spec.action_high, dtype=torch.float32, device=device)
    return low, high


def _check_seeds(seeds: list[int], num_envs: int) -> list[int]:
    if len(seeds) != num_envs:
        raise ValueError(f"reset needs one seed per env: got {len(seeds)} for {num_envs} envs")
    return [int(s) for s in seeds]


def _check_step_args(actions: torch.Tensor, active: torch.Tensor, spec: EnvSpec, num_envs: int) -> None:
    if tuple(actions.shape) != (num_envs, spec.action_dim):
        raise ValueError(f"actions must have shape [{num_envs}, {spec.action_dim}], got {list(actions.shape)}")
    if tuple(active.shape) != (num_envs,) or active.dtype != torch.bool:
        raise ValueError(f"active must be a [{num_envs}] bool tensor, got {active.dtype} {list(active.shape)}")


class CpuEnvBatch:
    """N ManiSkill envs on the CPU backend, stepped in turn in this process.

    The physics step holds the GIL, so threads would not run these in parallel;
    parallelism across cores comes from more rollout processes.
    """

    def __init__(self, cfg: EnvConfig, device: str | torch.device = "cpu"):
        self.num_envs = cfg.num_envs
        self.device = torch.device(device)
        self._envs: list[gym.Env] = []
        try:
            for _ in range(cfg.num_envs):
                self._envs.append(_make(cfg, 1, CPU_BACKEND))
        except BaseException:
            self.close()
            raise
        self.spec = _spec_of(cfg, self._envs[0])
        self._low, self._high = _bounds(self.spec, torch.device("cpu"))

    def reset(self, seeds: list[int]) -> torch.Tensor:
        seeds = _check_seeds(seeds, self.num_envs)
        obs = [env.reset(seed=s)[0].reshape(-1) for env, s in zip(self._envs, seeds)]
        return torch.stack(obs).to(self.device, torch.float32)

    def step(self, actions: torch.Tensor, active: torch.Tensor) -> StepResult:
        _check_step_args(actions, active, self.spec, self.num_envs)
        actions = torch.clamp(actions.detach().to("cpu", torch.float32), self._low, self._high)
        n, d = self.num_envs, self.spec.obs_dim
        obs = torch.zeros(n, d)
        reward = torch.zeros(n)
        terminated, truncated, success = (torch.zeros(n, dtype=torch.bool) for _ in range(3))
        for i in active.cpu().nonzero().flatten().tolist():
            o, r, term, trunc, info = self._envs[i].step(actions[i : i + 1])
            obs[i] = torch.as_tensor(o).reshape(-1)
            reward[i] = float(torch.as_tensor(r).reshape(-1)[0])
            terminated[i] = bool(torch.as_tensor(term).reshape(-1)[0])
            truncated[i] = bool(torch.as_tensor(trunc).reshape(-1)[0])
            success[i] = bool(torch.as_tensor(info.get("success", False)).reshape(-1)[0])
        return StepResult(*(x.to(self.device) for x in (obs, reward, terminated, truncated, success)))

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


class GpuEnvBatch:
    """One ManiSkill env with num_envs=N on physx_cuda.

    UNTESTED: written against ManiSkill 3.0's batched API but never run, because
    the machines this was written on have no GPU. Test it on a CUDA machine first.
    """

    def __init__(self, cfg: EnvConfig, device: torch.device):
        self.num_envs = cfg.num_envs
        backend = GPU_BACKEND if device.index is None else f"{GPU_BACKEND}:{device.index}"
        self._env = _make(cfg, cfg.num_envs, backend)
        self._base = self._env.unwrapped
        self.device = self._base.device
        self.spec = _spec_of(cfg, self._env)
        self._low, self._high = _bounds(self.spec, self.device)

    def reset(self, seeds: list[int]) -> torch.Tensor:
        seeds = _check_seeds(seeds, self.num_envs)
        obs, _ = self._env.reset(seed=seeds)
        # A batched reset draws the initial states of all sub-scenes from one torch
        # generator seeded with seeds[0], so equal seeds in different rows do not
        # give equal states. GRPO groups need them equal: copy the first row of each seed.
        first = {}
        src = torch.tensor([first.setdefault(s, i) for i, s in enumerate(seeds)], device=self.device)
        if not torch.equal(src, torch.arange(self.num_envs, device=self.device)):
            states = _index_state(self._base.get_state_dict(), src)
            obs, _ = self._env.reset(options={"reset_to_env_states": {"env_states": states}})
        return obs.to(torch.float32)

    def step(self, actions: torch.Tensor, active: torch.Tensor) -> StepResult:
        _check_step_args(actions, active, self.spec, self.num_envs)
        active = active.to(self.device)
        actions = torch.clamp(actions.detach().to(self.device, torch.float32), self._low, self._high)
        # The GPU sim steps every sub-scene at once, so idle envs are stepped too,
        # then put back as they were: same physics state and step count, hence
        # the same truncation time, as if they had not moved.
        idle = (~active).nonzero().flatten()
        if len(idle):
            saved_state = _index_state(self._base.get_state_dict(), idle)
            saved_steps = self._base._elapsed_steps[idle].clone()
            actions = actions.masked_fill(~active[:, None], 0.0)
        obs, reward, terminated, truncated, info = self._env.step(actions)
        success = info.get("success", torch.zeros(self.num_envs, dtype=torch.bool, device=self.device))
        if len(idle):
            self._base.set_state_dict(saved_state, idle)
            self._base._elapsed_steps[idle] = saved_steps
        keep = active.reshape(-1, 1)
        return StepResult(
            obs=torch.where(keep, obs.to(torch.float32), 0.0),
            reward=torch.where(active, reward.to(torch.float32), 0.0),
            terminated=terminated.bool() & active,
            truncated=truncated.bool() & active,
            success=success.bool() & active,
        )

    def close(self) -> None:
        self._env.close()


def _index_state(state: dict, idx: torch.Tensor) -> dict:
    """Rows `idx` of every tensor in a (nested) ManiSkill state dict."""
    return {k: _index_state(v, idx) if isinstance(v, dict) else v[idx].clone() for k, v in state.items()}
