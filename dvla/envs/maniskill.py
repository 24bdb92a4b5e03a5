"""ManiSkill3 adapters: N envs behind one tensor interface (reset, step, close).

Two implementations of `EnvBatch`:
- `CpuEnvBatch`: N single-env ManiSkill instances on the physx_cpu backend, stepped
  one after another in this process (the CPU backend holds one env per instance).
- `GpuEnvBatch`: one ManiSkill env with num_envs=N on physx_cuda.

Both return tensors of shape [N, ...]; ManiSkill's own leading batch dim of 1 on
CPU is removed here so callers never see it. With obs_mode 'rgb', an observation
is the robot's state vector plus one camera image (uint8, flattened HWC);
the interface itself and `step_chunk` (a chunk of C actions per env) are in batch.py.
"""

from __future__ import annotations

import difflib

import gymnasium as gym
import numpy as np
import torch

from dvla.config import EnvConfig
from dvla.envs.batch import EnvBatch, StepResult
from dvla.types import EnvSpec

CPU_BACKEND = "physx_cpu"
GPU_BACKEND = "physx_cuda"


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


def env_spec(
    task: str, obs_space: gym.Space, action_space: gym.Space, max_episode_steps: int, instruction: str = ""
) -> EnvSpec:
    """EnvSpec from one env's (unbatched) spaces: a flat state Box, or a Dict of 'state' and 'rgb'."""
    image_shape: tuple[int, ...] = ()
    if isinstance(obs_space, gym.spaces.Dict) and set(obs_space.spaces) == {"state", "rgb"}:
        image_shape = tuple(int(x) for x in obs_space["rgb"].shape)
        if len(image_shape) != 3 or image_shape[2] != 3:
            raise ValueError(f"{task}: expected one RGB camera of shape (H, W, 3), got {image_shape}")
        obs_space = obs_space["state"]
    if not isinstance(obs_space, gym.spaces.Box) or not isinstance(action_space, gym.spaces.Box):
        raise ValueError(
            f"{task}: need a Box state and a Box action space, "
            f"got {type(obs_space).__name__} and {type(action_space).__name__}"
        )
    if len(action_space.shape) != 1:
        raise ValueError(f"{task}: expected a flat action space, got shape {action_space.shape}")
    return EnvSpec(
        task=task,
        obs_dim=int(np.prod(obs_space.shape)),
        action_dim=int(action_space.shape[0]),
        action_low=tuple(float(x) for x in action_space.low),
        action_high=tuple(float(x) for x in action_space.high),
        max_episode_steps=max_episode_steps,
        image_shape=image_shape,
        instruction=instruction,
    )


# The task in words, for language-conditioned policies (env.instruction overrides it).
INSTRUCTIONS = {
    "PushCube-v1": "push the cube to the goal region",
    "PullCube-v1": "pull the cube to the goal region",
    "PickCube-v1": "pick up the cube and move it to the goal position",
    "StackCube-v1": "stack the red cube on top of the green cube",
    "PegInsertionSide-v1": "insert the peg into the hole from the side",
    "LiftPegUpright-v1": "lift the peg and stand it upright",
}


def instruction_for(cfg: EnvConfig) -> str:
    if cfg.instruction:
        return cfg.instruction
    return INSTRUCTIONS.get(cfg.task, "solve the task " + cfg.task.split("-")[0])


def _check_task(task: str) -> None:
    import mani_skill.envs  # noqa: F401  (registers the ManiSkill tasks with gymnasium)
    from mani_skill.utils.registration import REGISTERED_ENVS

    if task in REGISTERED_ENVS:
        return
    ids = sorted(REGISTERED_ENVS)
    near = difflib.get_close_matches(task, ids, n=3)
    hint = f"did you mean {', '.join(near)}? " if near else ""
    examples = ", ".join(x for x in ("PushCube-v1", "PickCube-v1", "StackCube-v1", "PegInsertionSide-v1") if x in ids)
    raise ValueError(f"unknown ManiSkill task '{task}'; {hint}registered ids include {examples} ({len(ids)} in all)")


def _make(cfg: EnvConfig, num_envs: int, sim_backend: str) -> gym.Env:
    _check_task(cfg.task)
    kwargs = {}
    if cfg.obs_mode == "rgb":
        # One camera at image_size; on a machine without CUDA, SAPIEN renders on the
        # CPU (Mesa lavapipe) - ask for that directly rather than fall back with a warning.
        kwargs = dict(
            sensor_configs=dict(width=cfg.image_size, height=cfg.image_size),
            render_backend="gpu" if torch.cuda.is_available() else "cpu",
        )
    else:
        kwargs = dict(render_backend="none")  # state obs need no renderer
    env = gym.make(
        cfg.task,
        num_envs=num_envs,
        obs_mode=cfg.obs_mode,
        control_mode=cfg.control_mode,
        reward_mode=cfg.reward_mode,
        sim_backend=sim_backend,
        max_episode_steps=cfg.max_episode_steps,
        **kwargs,
    )
    if cfg.obs_mode == "rgb":
        from mani_skill.utils.wrappers.flatten import FlattenRGBDObservationWrapper

        # Several cameras would be stacked along channels; env_spec then refuses the shape.
        env = FlattenRGBDObservationWrapper(env, rgb=True, depth=False, state=True)
    return env


def _spec_of(cfg: EnvConfig, env: gym.Env) -> EnvSpec:
    obs_space = env.observation_space if cfg.obs_mode == "rgb" else env.unwrapped.single_observation_space
    if cfg.obs_mode == "rgb":  # the wrapper's space is batched: drop the leading dim
        obs_space = gym.spaces.Dict(
            {
                k: gym.spaces.Box(0, 255, tuple(v.shape[1:]), v.dtype)
                if k == "rgb"
                else gym.spaces.Box(-np.inf, np.inf, tuple(v.shape[1:]), v.dtype)
                for k, v in obs_space.spaces.items()
            }
        )
    return env_spec(cfg.task, obs_space, env.unwrapped.single_action_space, cfg.max_episode_steps, instruction_for(cfg))


def _split_obs(o, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ManiSkill obs (a state tensor, or the flattened {'state', 'rgb'} dict) -> state [n, D], images [n, I]."""
    if isinstance(o, dict):
        return (
            torch.as_tensor(o["state"]).reshape(n, -1).to(torch.float32),
            torch.as_tensor(o["rgb"]).reshape(n, -1).to(torch.uint8),
        )
    return torch.as_tensor(o).reshape(n, -1).to(torch.float32), torch.zeros(n, 0, dtype=torch.uint8)


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

    Every call into ManiSkill (building, reset, step, observe) runs under torch.inference_mode: on
    the CPU backend an env step is mostly torch ops on tensors of one row (poses, rewards, the
    controller), and autograd's bookkeeping on them (version counters, view tracking) cost a
    sixth of it (measured: 1.21x env steps per CPU-second, PushCube, interleaved in one process).
    The env's own tensors are then inference tensors, used only in here; what this class returns
    is copied out into ordinary tensors.
    """

    def __init__(self, cfg: EnvConfig, device: str | torch.device = "cpu"):
        self.num_envs = cfg.num_envs
        self.device = torch.device(device)
        self._envs: list[gym.Env] = []
        try:
            for _ in range(cfg.num_envs):
                with torch.inference_mode():
                    self._envs.append(_make(cfg, 1, CPU_BACKEND))
        except BaseException:
            self.close()
            raise
        self.spec = _spec_of(cfg, self._envs[0])
        self._rgb = cfg.obs_mode == "rgb"
        self._low, self._high = _bounds(self.spec, torch.device("cpu"))

    def reset(self, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        seeds = _check_seeds(seeds, self.num_envs)
        with torch.inference_mode():
            raw = [env.reset(seed=s)[0] for env, s in zip(self._envs, seeds)]
        parts = [_split_obs(o, 1) for o in raw]  # (torch.cat below makes ordinary tensors of them)
        return (torch.cat([p[0] for p in parts]).to(self.device), torch.cat([p[1] for p in parts]).to(self.device))

    def step(self, actions: torch.Tensor, active: torch.Tensor, observe: bool = True) -> StepResult:
        _check_step_args(actions, active, self.spec, self.num_envs)
        actions = torch.clamp(actions.detach().to("cpu", torch.float32), self._low, self._high)
        blind = not observe and self._rgb
        n, d = self.num_envs, self.spec.obs_dim
        obs = torch.zeros(n, d)
        images = torch.zeros(n, self.spec.image_size, dtype=torch.uint8)
        reward = torch.zeros(n)
        terminated, truncated, success = (torch.zeros(n, dtype=torch.bool) for _ in range(3))
        for i in active.cpu().nonzero().flatten().tolist():
            with torch.inference_mode():
                if blind:
                    o, r, term, trunc, info = _step_without_rendering(self._envs[i], actions[i : i + 1])
                else:
                    o, r, term, trunc, info = self._envs[i].step(actions[i : i + 1])
            if not blind:
                obs[i], images[i] = (x[0] for x in _split_obs(o, 1))  # copied into ordinary tensors
            reward[i] = float(torch.as_tensor(r).reshape(-1)[0])
            terminated[i] = bool(torch.as_tensor(term).reshape(-1)[0])
            truncated[i] = bool(torch.as_tensor(trunc).reshape(-1)[0])
            success[i] = bool(torch.as_tensor(info.get("success", False)).reshape(-1)[0])
        out = (x.to(self.device) for x in (obs, reward, terminated, truncated, success, images))
        return StepResult(*out, steps=active.to(self.device, torch.int64))

    def observe(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.num_envs
        obs, images = torch.zeros(n, self.spec.obs_dim), torch.zeros(n, self.spec.image_size, dtype=torch.uint8)
        for i in rows.cpu().nonzero().flatten().tolist():
            env = self._envs[i]
            with torch.inference_mode():
                raw = env.unwrapped.get_obs()
                raw = env.observation(raw) if self._rgb else raw
            obs[i], images[i] = (x[0] for x in _split_obs(raw, 1))
        return obs.to(self.device), images.to(self.device)

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []


def _step_without_rendering(env: gym.Env, action: torch.Tensor):
    """Step a flattened-RGB env while its base env computes only state observations.

    The camera is what costs on a CPU; the observation of a step inside an action
    chunk is never read, so it is not rendered (reward and success come from the
    env's info, not from the observation). Relies on ManiSkill's `_obs_mode`
    switch in `get_obs`; `observe` renders on demand afterwards.
    """
    base = env.unwrapped
    mode = base._obs_mode
    base._obs_mode = "state_dict"
    try:
        return env.env.step(action)  # below the flattening wrapper, which expects camera data
    finally:
        base._obs_mode = mode


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

    def reset(self, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
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
        return _split_obs(obs, self.num_envs)

    def observe(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, images = _split_obs(
            self._env.observation(self._base.get_obs())
            if isinstance(self._env, gym.ObservationWrapper)
            else self._base.get_obs(),
            self.num_envs,
        )
        keep = rows.to(self.device).reshape(-1, 1)
        return torch.where(keep, state, 0.0), torch.where(keep, images, 0)

    def step(self, actions: torch.Tensor, active: torch.Tensor, observe: bool = True) -> StepResult:
        # The GPU renders every sub-scene at once, cheaply: always observe.
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
        state, images = _split_obs(obs, self.num_envs)
        return StepResult(
            obs=torch.where(keep, state, 0.0),
            reward=torch.where(active, reward.to(torch.float32), 0.0),
            terminated=terminated.bool() & active,
            truncated=truncated.bool() & active,
            success=success.bool() & active,
            images=torch.where(keep, images, 0),
            steps=active.to(torch.int64),
        )

    def close(self) -> None:
        self._env.close()


def _index_state(state: dict, idx: torch.Tensor) -> dict:
    """Rows `idx` of every tensor in a (nested) ManiSkill state dict."""
    return {k: _index_state(v, idx) if isinstance(v, dict) else v[idx].clone() for k, v in state.items()}
