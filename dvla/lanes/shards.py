"""Env shards: groups of envs the sampling lane steps, in this process or each in a process of its own.

    LocalShard    one env batch stepped in the sampling thread (the modes before rollout_async,
                  and GPU simulation)
    ProcessShard  K envs in a child process; observations and actions cross through shared
                  memory, and a pipe carries only 'reset', 'step' and 'ready'. CPU physics holds
                  the GIL (measured: two envs in two threads ran at 0.74x of one), so shards that
                  should step side by side are processes.

Both take the same calls (start_reset, start_step, complete) and go through the
same states, so one sampling loop drives either. A ShardPool holds the shards of
one worker; their number can change while it runs (rescale): new processes start
in the background and join once their envs are built; surplus shards finish the
round under way and close.
"""

from __future__ import annotations

import logging
import multiprocessing.connection as mpc
import time
from dataclasses import replace
from enum import Enum

import torch
import torch.multiprocessing as mp

from dvla import telemetry
from dvla.config import EnvConfig, TelemetryConfig
from dvla.envs import StepResult, make_env_batch, step_chunk
from dvla.lanes.recorder import EpisodeRecorder
from dvla.types import EnvSpec

log = logging.getLogger("dvla.lanes.shards")


class ShardState(Enum):
    STARTING = "starting"  # a process building its envs
    IDLE = "idle"  # between rounds
    RESETTING = "resetting"  # a round's reset under way
    INFERENCE = "inference"  # waiting for its actions
    STEPPING = "stepping"  # an action chunk under way


class Shard:
    """What the sampling loop keeps per shard, whatever runs its envs."""

    def __init__(self, index: int, num_envs: int):
        self.index, self.num_envs = index, num_envs
        self.state = ShardState.IDLE
        self.retiring = False  # rescaled away: start no new round, close once idle
        self.round = 0
        self.recorder: EpisodeRecorder | None = None
        self.group_ids: list[int] = []
        self.span = None  # the round under way (telemetry)

    @property
    def busy(self) -> bool:
        """Its envs are working: a result (or its spec) will come."""
        return self.state in (ShardState.STARTING, ShardState.RESETTING, ShardState.STEPPING)


class LocalShard(Shard):
    def __init__(self, envs, index: int = 0):
        super().__init__(index, envs.num_envs)
        self.envs, self.spec = envs, envs.spec
        self._obs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._result: StepResult | None = None

    def start_reset(self, seeds: list[int]) -> None:
        self._obs = self.envs.reset(seeds)
        self.state = ShardState.RESETTING

    def start_step(self, chunk: torch.Tensor, active: torch.Tensor) -> None:
        with telemetry.span("sampling.env_step", num_envs=int(active.sum()), chunk=chunk.shape[1]):
            self._result = step_chunk(self.envs, chunk, active.clone())
        self.state = ShardState.STEPPING

    def complete(self) -> None:
        """The reset or step is done (it ran in start_*)."""

    def reset_obs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._obs

    def result(self) -> StepResult:
        return self._result

    def close(self) -> None:
        self.envs.close()


def _shard_main(env_cfg: EnvConfig, tel_cfg: TelemetryConfig, index: int, conn) -> None:
    """Child process: own K envs; step them when told, through the shared buffers."""
    torch.set_num_threads(1)
    telemetry.setup(tel_cfg, f"rollout-shard{index}")
    try:
        envs = make_env_batch(env_cfg, "cpu")
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
        return
    s = envs.spec
    conn.send(
        (
            "spec",
            (
                s.task,
                s.obs_dim,
                s.action_dim,
                s.action_low,
                s.action_high,
                s.max_episode_steps,
                s.image_shape,
                s.instruction,
            ),
        )
    )
    bufs = conn.recv()
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "reset":
                obs, images = envs.reset(msg[1])
                bufs["obs"].copy_(obs)
                bufs["images"].copy_(images)
            elif msg[0] == "step":
                with telemetry.span(
                    "sampling.env_step", shard=index, num_envs=int(bufs["active"].sum()), chunk=bufs["chunk"].shape[1]
                ):
                    res = step_chunk(envs, bufs["chunk"], bufs["active"].clone())
                for name in ("obs", "images", "reward", "terminated", "truncated", "success", "steps"):
                    bufs[name].copy_(getattr(res, name))
            elif msg[0] == "close":
                return
            conn.send(("ok", None))
    except (EOFError, KeyboardInterrupt):
        return
    except BaseException as e:
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        envs.close()
        telemetry.shutdown()


def _shard_context():
    """Shard processes fork from a server that imported torch and the simulator once (multiprocessing's
    forkserver): a shard then starts in about a second instead of importing both again (measured: ~9 s of
    CPU each on this machine's 2 cores, the bulk of a rollout worker's start). The server is a clean
    process of its own, started before any CUDA or gRPC state exists, so forking it is safe."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["dvla.lanes.shards", "mani_skill.envs"])  # an import that fails is skipped
    return ctx


class ProcessShard(Shard):
    """Starting it returns at once; its spec arrives later (state STARTING)."""

    def __init__(self, ctx, env_cfg: EnvConfig, tel_cfg: TelemetryConfig, index: int, chunk_size: int):
        super().__init__(index, env_cfg.num_envs)
        self.chunk_size = chunk_size
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_shard_main, args=(env_cfg, tel_cfg, index, child), name=f"env-shard-{index}", daemon=True
        )
        self.proc.start()
        child.close()
        self.bufs: dict[str, torch.Tensor] = {}
        self.state = ShardState.STARTING

    def handshake(self) -> EnvSpec:
        kind, payload = self.conn.recv()
        if kind != "spec":
            raise RuntimeError(f"env shard {self.index} failed to start: {payload}")
        spec = EnvSpec(*payload)
        k, d, a = self.num_envs, spec.obs_dim, spec.action_dim

        def shared(*shape, dtype=torch.float32) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype).share_memory_()

        self.bufs = {
            "obs": shared(k, d),
            "images": shared(k, spec.image_size, dtype=torch.uint8),
            "chunk": shared(k, self.chunk_size, a),
            "active": shared(k, dtype=torch.bool),
            "reward": shared(k),
            "terminated": shared(k, dtype=torch.bool),
            "truncated": shared(k, dtype=torch.bool),
            "success": shared(k, dtype=torch.bool),
            "steps": shared(k, dtype=torch.int64),
        }
        self.conn.send(self.bufs)
        self.state = ShardState.IDLE
        return spec

    def start_reset(self, seeds: list[int]) -> None:
        self.conn.send(("reset", seeds))
        self.state = ShardState.RESETTING

    def start_step(self, chunk: torch.Tensor, active: torch.Tensor) -> None:
        self.bufs["chunk"].copy_(chunk)
        self.bufs["active"].copy_(active)
        self.conn.send(("step",))
        self.state = ShardState.STEPPING

    def complete(self) -> None:
        kind, payload = self.conn.recv()
        if kind != "ok":
            raise RuntimeError(f"env shard {self.index}: {payload}")

    def reset_obs(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.bufs["obs"], self.bufs["images"]

    def result(self) -> StepResult:
        """Views of the shared buffers, valid until the next 'step' (the recorder copies what it keeps)."""
        b = self.bufs
        return StepResult(
            obs=b["obs"],
            reward=b["reward"],
            terminated=b["terminated"],
            truncated=b["truncated"],
            success=b["success"],
            images=b["images"],
            steps=b["steps"],
        )

    def ask_to_close(self) -> None:
        try:
            self.conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass

    def close(self, deadline: float | None = None) -> None:
        """Closes the envs and ends the process; killed if it is not gone by `deadline` (monotonic; default 5 s)."""
        self.ask_to_close()
        self.proc.join(max(0.0, (deadline or time.monotonic() + 5) - time.monotonic()))
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(1)


class ShardPool:
    """The shards of one rollout worker."""

    def __init__(self, shards: list[Shard], spec: EnvSpec, chunk_size: int | None, start_shard=None):
        """chunk_size: what process shards were built for (None: any); start_shard(index): a new shard."""
        self.shards, self.spec, self.chunk_size, self._start_shard = shards, spec, chunk_size, start_shard
        self._next_index = len(shards)  # shard indices are never reused: they seed the episodes
        self.envs_per_shard = shards[0].num_envs
        self.parked_s = 0.0  # no shard busy, every one held back by admission control (or a pause)

    @staticmethod
    def local(envs) -> ShardPool:
        return ShardPool([LocalShard(envs)], envs.spec, chunk_size=None)

    @staticmethod
    def processes(
        env_cfg: EnvConfig,
        num_shards: int,
        chunk_size: int,
        tel_cfg: TelemetryConfig | None = None,
    ) -> ShardPool:
        """Shard processes; tel_cfg: how they export spans (default: not at all)."""
        tel_cfg = tel_cfg or TelemetryConfig(exporter="none")
        if env_cfg.num_envs % num_shards:
            raise ValueError(f"env.num_envs={env_cfg.num_envs} does not split into {num_shards} shards")
        ctx = _shard_context()
        shard_cfg = replace(env_cfg, num_envs=env_cfg.num_envs // num_shards)

        def start(index: int) -> ProcessShard:
            return ProcessShard(ctx, shard_cfg, tel_cfg, index, chunk_size)

        shards = [start(i) for i in range(num_shards)]
        specs = {s.handshake() for s in shards}
        return ShardPool(shards, specs.pop(), chunk_size, start_shard=start)

    @property
    def num_shards(self) -> int:
        """Shards taking part in new rounds (starting ones included, retiring ones not)."""
        return sum(not s.retiring for s in self.shards)

    @property
    def num_envs(self) -> int:
        return self.num_shards * self.envs_per_shard

    @property
    def quiet(self) -> bool:
        """No shard holds an unfinished round."""
        return all(s.state in (ShardState.IDLE, ShardState.STARTING) for s in self.shards)

    def start_rounds_at(self, first_round: int, rewind: bool = False) -> None:
        """Number the next rounds from `first_round` on (never back, unless `rewind`: the actor continues
        from an older checkpoint)."""
        for s in self.shards:
            s.round = first_round if rewind else max(s.round, first_round)

    def rescale(self, target: int) -> None:
        """Aim for `target` shards (0: no instruction): start new processes, or retire the newest shards."""
        if target <= 0 or target == self.num_shards or self._start_shard is None:
            return
        live = [s for s in self.shards if not s.retiring]
        if target < len(live):
            for s in live[target:]:
                s.retiring = True
            log.info("retiring env shard(s) %s: %d shard(s) from now on", [s.index for s in live[target:]], target)
            return
        for s in self.shards:  # un-retire before starting new processes
            if s.retiring and self.num_shards < target:
                s.retiring = False
        first_round = max((s.round for s in self.shards), default=0)
        while self.num_shards < target:
            s = self._start_shard(self._next_index)
            s.round = first_round  # a new shard does not replay rounds the others have run
            self._next_index += 1
            self.shards.append(s)
        log.info("starting env shard(s) up to %d", target)

    def retire_idle(self) -> None:
        for s in [s for s in self.shards if s.retiring and s.state == ShardState.IDLE]:
            s.close()
            self.shards.remove(s)

    def wait_ready(self, timeout_s: float | None) -> list[Shard]:
        """Busy shards whose reset, step or start has finished, waiting up to timeout_s (None: a short poll)."""
        busy = [s for s in self.shards if s.busy]
        local = [s for s in busy if isinstance(s, LocalShard)]
        if local:
            return local  # their work ran in start_*
        if busy:
            by_conn = {s.conn: s for s in busy}
            return [by_conn[c] for c in mpc.wait(list(by_conn), timeout=0.05 if timeout_s is None else timeout_s)]
        if timeout_s is None:
            time.sleep(0.005)  # every shard is parked on admission control
            self.parked_s += 0.005
        return []

    def join(self, s: Shard) -> None:
        """A started process has built its envs."""
        spec = s.handshake()
        if spec != self.spec:
            raise RuntimeError(f"env shard {s.index} reports {spec}, the others {self.spec}")

    def close(self) -> None:
        """All shards close side by side: each takes a while to tear its envs and interpreter down."""
        for s in self.shards:
            if isinstance(s, ProcessShard):
                s.ask_to_close()
        deadline = time.monotonic() + 5
        for s in self.shards:
            if isinstance(s, ProcessShard):
                s.close(deadline)
            else:
                s.close()
