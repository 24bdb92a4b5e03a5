"""Sample Factory 2.1.1 (APPO) on ManiSkill3's PushCube-v1, set up like dvla's default run (issue 13).

Runs in Sample Factory's own venv (benchmarks/sample_factory/setup.sh makes it: SF pins gymnasium<1 and
numpy<2). compare.py starts it; alone:

    benchmarks/sample_factory/.venv/bin/python benchmarks/sample_factory/sf_maniskill.py \
        --experiment sf-seed0 --train_dir runs/sf --train_for_env_steps 240000 --seed 0 \
        [--stats_out stats.jsonl] [--dvla_preset pushcube] [any Sample Factory argument]

The settings are not copied: `sf_defaults` reads them from dvla's preset (dvla.config is plain Python and
imports in this venv from this checkout) and maps each onto Sample Factory's arguments, so a change to dvla's
defaults reaches this side too. Sample Factory arguments on the command line override the mapping.

--stats_out FILE gets JSON lines: {"kind": "episode"} per finished episode (success, length, return, and the
env steps trained when it arrived), {"kind": "train"} per training iteration (env steps trained, seconds since
start) and a last {"kind": "done"} with Sample Factory's own FPS (env steps / its main loop's seconds).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # dvla.config, from this checkout; spawned SF workers re-run this line too

from sample_factory.algo.runners.runner import Runner  # noqa: E402
from sample_factory.algo.utils.misc import EPISODIC, LEARNER_ENV_STEPS, ExperimentStatus  # noqa: E402
from sample_factory.cfg.arguments import parse_full_cfg, parse_sf_args  # noqa: E402
from sample_factory.envs.env_utils import register_env  # noqa: E402
from sample_factory.train import make_runner  # noqa: E402

from dvla.config import PRESETS, RunConfig  # noqa: E402


def sf_defaults(cfg: RunConfig) -> dict:
    """dvla's run config as Sample Factory arguments; the comment on each says where the mapping is inexact."""
    env, algo, mlp, pipe = cfg.env, cfg.algo, cfg.policy.mlp, cfg.pipeline
    # dvla trains on one round per update: every env of every rollout runs one whole episode (at most
    # max_episode_steps; episodes end early on success), so a global batch holds <= workers x envs x 50 steps.
    # SF cuts each env's stream into fixed fragments of --rollout steps regardless of episode ends (they carry on
    # into the next episode) and trains on batch_size x num_batches_per_epoch steps: fragments of 50 steps and a
    # batch of 2 x 16 x 50 = 1600 make SF's batch dvla's largest; dvla's shrinks as episodes get shorter.
    steps_per_round = pipe.num_rollout_workers * env.num_envs * env.max_episode_steps
    return dict(
        # --- the system: dvla's 2 rollout workers x 16 envs -> 2 SF rollout workers x 16 envs ------------------
        algo="APPO",
        async_rl=True,  # APPO as the author ran it: sampling goes on while the learner trains
        serial_mode=False,
        batched_sampling=False,  # one gym env per SF env, stepped in turn, like dvla's CpuEnvBatch
        num_workers=pipe.num_rollout_workers,  # pipeline.num_rollout_workers
        num_envs_per_worker=env.num_envs,  # env.num_envs; SF double-buffers them in 2 halves (worker_num_splits)
        num_policies=1,
        device="cpu",
        # --- one update ---------------------------------------------------------------------------------------
        rollout=env.max_episode_steps,  # whole-episode rounds -> fixed fragments (see above)
        num_batches_per_epoch=algo.num_minibatches,  # algo.num_minibatches
        batch_size=steps_per_round // algo.num_minibatches,  # SF's batch_size is the minibatch size
        num_epochs=algo.update_epochs,  # algo.update_epochs
        shuffle_minibatches=True,  # dvla draws a random permutation each epoch; SF's default is fixed slices
        # --- PPO ----------------------------------------------------------------------------------------------
        learning_rate=algo.lr,  # algo.lr
        adam_eps=1e-5,  # dvla's Adam (dvla/algo/learner.py); SF's default is 1e-6
        gamma=algo.gamma,  # algo.gamma
        gae_lambda=algo.gae_lambda,  # algo.gae_lambda
        with_vtrace=False,  # GAE, as dvla
        # algo.clip_eps. Inexact: SF clips the ratio to [1/(1+e), 1+e] = [0.83, 1.2], dvla to [1-e, 1+e] = [0.8, 1.2].
        ppo_clip_ratio=algo.clip_eps,
        ppo_clip_value=1e9,  # dvla does not clip the value update; SF's default clips it to +-1
        exploration_loss_coeff=algo.ent_coef,  # algo.ent_coef (entropy bonus)
        # algo.vf_coef: dvla's value loss is vf_coef * 0.5 * MSE, SF's is value_loss_coeff * MSE.
        value_loss_coeff=algo.vf_coef * 0.5,
        kl_loss_coeff=0.0,
        max_grad_norm=algo.max_grad_norm,  # algo.max_grad_norm
        normalize_returns=False,  # dvla keeps raw returns; SF's default normalises them
        normalize_input=False,  # dvla feeds raw state; SF's default normalises observations
        # algo.bootstrap_on_termination: the env reports a success termination as a time-out (ManiSkillSF.step),
        # and SF bootstraps time-outs. Inexact: SF adds gamma * V(s_t) of the last step (it has no obs after
        # it), dvla gamma * V(s_{t+1}) of the final observation.
        value_bootstrap=True,
        # --- policy: dvla's MLP (policy.mlp) -------------------------------------------------------------------
        use_rnn=False,
        encoder_mlp_layers=list(mlp.hidden_sizes),  # policy.mlp.hidden_sizes, one trunk each for actor and critic
        decoder_mlp_layers=[],
        nonlinearity="tanh",
        actor_critic_share_weights=False,  # dvla: separate actor and critic trunks
        adaptive_stddev=False,  # a learned state-independent log-std, as dvla
        initial_stddev=math.exp(mlp.init_log_std),  # policy.mlp.init_log_std
        # Inexact: SF's orthogonal init uses one gain (1.0) for every layer; dvla uses sqrt(2) for the trunks,
        # 0.01 for the action-mean head and 1.0 for the value head (CleanRL's init).
        policy_initialization="orthogonal",
        # --- outputs: nothing periodic inside the timed loop (dvla: checkpoint.every_updates=0 in compare.py) --
        save_every_sec=10**9,
        save_best_every_sec=10**9,
        with_wandb=False,
    )


class ManiSkillSF(gym.Env):
    """One ManiSkill env (num_envs=1, CPU physics) as a plain gymnasium<1 env: numpy in, numpy out.

    ManiSkill returns batched torch tensors even for one env; Sample Factory wants one env's numpy arrays.
    At an episode's end, info carries `episode_extra_stats` = {'success': 0 or 1} (SF averages it in its
    summaries) and `true_objective` = success (SF's console line then shows the success rate).
    Every call into ManiSkill runs under torch.inference_mode, as in dvla's CpuEnvBatch (it makes the CPU
    env step ~1.2x cheaper): the comparison is of the two systems, not of their env wrappers.
    """

    def __init__(self, cfg: RunConfig, seed_offset: int):
        import mani_skill.envs  # noqa: F401  (registers the tasks with gymnasium)

        e = cfg.env
        if e.obs_mode != "state":
            raise ValueError(f"this benchmark wraps state observations only, not env.obs_mode={e.obs_mode!r}")
        # As dvla's CpuEnvBatch builds each of its envs (dvla/envs/maniskill.py: _make).
        with torch.inference_mode():
            self._env = self._make(e)
        base = self._env.unwrapped
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, base.single_observation_space.shape, np.float32)
        self.action_space = base.single_action_space
        self._low, self._high = self.action_space.low, self.action_space.high
        self._bootstrap_on_termination = cfg.algo.bootstrap_on_termination
        self._seed_offset = seed_offset

    @staticmethod
    def _make(e):
        return gym.make(
            e.task,
            num_envs=1,
            obs_mode=e.obs_mode,
            control_mode=e.control_mode,
            reward_mode=e.reward_mode,
            sim_backend="physx_cpu",
            render_backend="none",  # state obs need no renderer
            max_episode_steps=e.max_episode_steps,
        )

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # SF seeds the first reset with the env's global index whatever --seed is; shifting it by the run's
        # seed gives each seed its own initial states. Later resets (SF's auto-reset) are unseeded.
        if seed is not None:
            seed += self._seed_offset
        with torch.inference_mode():
            obs, _ = self._env.reset(seed=seed, options=options)
        return _row(obs), {}

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float32), self._low, self._high)  # dvla clamps too
        with torch.inference_mode():
            obs, reward, terminated, truncated, info = self._env.step(action[None])
        terminated, truncated = _flag(terminated), _flag(truncated)
        out = {}
        if terminated or truncated:
            success = float(_flag(info.get("success", False)))
            out = {"episode_extra_stats": {"success": success}, "true_objective": success}
        if terminated and self._bootstrap_on_termination:
            terminated, truncated = False, True  # see sf_defaults: value_bootstrap
        return _row(obs), float(_row(reward)[0]), terminated, truncated, out

    def close(self):
        self._env.close()


def _row(x) -> np.ndarray:
    """ManiSkill's batch of one (a torch tensor) -> that one row as a float32 numpy array."""
    return np.asarray(x.cpu() if hasattr(x, "cpu") else x, dtype=np.float32).reshape(-1)


def _flag(x) -> bool:
    return bool(np.asarray(x.cpu() if hasattr(x, "cpu") else x).reshape(-1)[0])


def make_env(full_env_name: str, cfg, env_config=None, render_mode=None) -> ManiSkillSF:
    """Sample Factory's env factory (module level: SF pickles it into its spawned worker processes)."""
    run_cfg = PRESETS[cfg.dvla_preset]()
    if full_env_name != run_cfg.env.task:
        raise ValueError(f"preset {cfg.dvla_preset!r} runs {run_cfg.env.task}, not {full_env_name}")
    return ManiSkillSF(run_cfg, seed_offset=10_000 * (cfg.seed or 0))


class StatsLog:
    """Writes --stats_out: every finished episode and every training iteration, as they reach the runner."""

    def __init__(self, path: Path, t0: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "a", buffering=1)
        self._t0 = t0

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record) + "\n")

    def on_episode(self, runner: Runner, msg: dict, policy_id: int) -> None:
        s = msg[EPISODIC]
        self.write({
            "kind": "episode",
            "t": time.monotonic() - self._t0,
            "env_steps": runner.env_steps.get(policy_id, 0),  # trained so far, as dvla's metrics count them
            "success": float(s.get("episode_extra_stats", {}).get("success", math.nan)),
            "length": float(s["len"]),
            "return": float(s["reward"]),
        })  # fmt: skip

    def on_learner_steps(self, runner: Runner, msg: dict, policy_id: int) -> None:
        """The learner's env-step count, sent after each training iteration (AlgoObserver.on_training_step
        fires before it arrives, so the count there is one iteration old)."""
        if msg[LEARNER_ENV_STEPS] > 0:  # the first comes at start-up, before any training
            self.write({"kind": "train", "t": time.monotonic() - self._t0, "env_steps": msg[LEARNER_ENV_STEPS]})

    def close(self, runner: Runner) -> None:
        steps = runner.total_env_steps_since_resume or 0
        main_loop_s = float(runner.timing.get("main_loop", math.nan))
        self.write({
            "kind": "done",
            "t": time.monotonic() - self._t0,
            "env_steps": runner.env_steps.get(0, 0),
            "main_loop_s": main_loop_s,
            "sf_fps": steps / main_loop_s if main_loop_s > 0 else math.nan,  # what SF logs as "Collected ..., FPS"
        })  # fmt: skip
        self._f.close()


def add_own_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dvla_preset", default="pushcube", choices=sorted(PRESETS), help="dvla preset to mirror")
    p.add_argument("--stats_out", default="", help="JSON lines of episodes and training iterations")


def parse_cfg(argv: list[str]):
    """SF's full config with sf_defaults(preset) as defaults; the preset's task is --env unless given."""
    first = argparse.ArgumentParser(add_help=False)
    add_own_args(first)
    run_cfg = PRESETS[first.parse_known_args(argv)[0].dvla_preset]()
    if "--env" not in argv:  # SF requires it; the preset names the task
        argv = ["--env", run_cfg.env.task, *argv]
    parser, _ = parse_sf_args(argv)
    add_own_args(parser)
    parser.set_defaults(seed=run_cfg.seed, **sf_defaults(run_cfg))
    return parse_full_cfg(parser, argv), run_cfg


def main(argv: list[str] | None = None) -> int:
    t0 = time.monotonic()
    cfg, run_cfg = parse_cfg(sys.argv[1:] if argv is None else argv)
    register_env(run_cfg.env.task, make_env)
    cfg, runner = make_runner(cfg)
    stats = None
    if cfg.stats_out:
        stats = StatsLog(Path(cfg.stats_out), t0)
        runner.register_episodic_stats_handler(stats.on_episode)
        # appended after the runner's own handler, which updates runner.env_steps first (SF's
        # register_policy_msg_handler would replace the list of handlers with this one)
        runner.policy_msg_handlers[LEARNER_ENV_STEPS].append(stats.on_learner_steps)
    status = runner.init()
    if status == ExperimentStatus.SUCCESS:
        status = runner.run()
    if stats is not None:
        stats.close(runner)
    return status


if __name__ == "__main__":
    sys.exit(main())
