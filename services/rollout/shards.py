"""Env shards in their own processes, served by one inference lane with dynamic batching.

    shard 0 (process): step K envs --obs--+
    shard 1 (process): step K envs --obs--+--> batcher (B_max, T_max) --> policy.act --> action chunks --> shards
                                                 (this process: inference lane + recorders + sender)

CPU physics holds the GIL (measured: two envs in two threads ran at 0.74x of
one), so shards are processes. Observations and actions cross through shared
memory; a pipe per shard carries only 'reset', 'step' and 'ready'. A shard runs
a whole action chunk (C env steps) per 'step'. While one shard steps its
physics, the others' observations go through inference.
"""
from __future__ import annotations

import logging
import multiprocessing.connection as mpc
import threading
import time
from dataclasses import replace
from typing import Callable

import torch
import torch.multiprocessing as mp

from dvla import telemetry
from dvla.algo.batching import DynamicBatcher
from dvla.config import EnvConfig, TelemetryConfig
from dvla.envs import StepResult, make_env_batch, step_chunk
from dvla.policy import ActOutput
from dvla.types import EnvSpec, TrajectoryBatch

from .sampler import EpisodeRecorder
from .weights import WeightLane

log = logging.getLogger("dvla.rollout.shards")


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
    conn.send(("spec", (s.task, s.obs_dim, s.action_dim, s.action_low, s.action_high, s.max_episode_steps,
                        s.image_shape, s.instruction)))
    bufs = conn.recv()
    try:
        while True:
            msg = conn.recv()
            if msg[0] == "reset":
                obs, images = envs.reset(msg[1])
                bufs["obs"].copy_(obs)
                bufs["images"].copy_(images)
            elif msg[0] == "step":
                with telemetry.span("sampling.env_step", shard=index, num_envs=int(bufs["active"].sum()),
                                    chunk=bufs["chunk"].shape[1]):
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


class Shard:
    """One env shard process. Starting it returns at once; its spec arrives later (state 'starting')."""

    def __init__(self, ctx, env_cfg: EnvConfig, tel_cfg: TelemetryConfig, index: int, chunk_size: int):
        self.index, self.num_envs, self.chunk_size = index, env_cfg.num_envs, chunk_size
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_shard_main, args=(env_cfg, tel_cfg, index, child), name=f"env-shard-{index}", daemon=True)
        self.proc.start()
        child.close()
        self.bufs: dict[str, torch.Tensor] = {}
        self.state = "starting"  # starting | idle | resetting | inference | stepping
        self.retiring = False  # rescaled away: start no new round, close once idle
        self.round = 0
        self.recorder: EpisodeRecorder | None = None
        self.group_ids: list[int] = []
        self.span = None  # the round under way (telemetry)

    def handshake(self) -> EnvSpec:
        kind, payload = self.conn.recv()
        if kind != "spec":
            raise RuntimeError(f"env shard {self.index} failed to start: {payload}")
        spec = EnvSpec(*payload)
        k, d, a = self.num_envs, spec.obs_dim, spec.action_dim
        self.bufs = {
            "obs": torch.zeros(k, d).share_memory_(),
            "images": torch.zeros(k, spec.image_size, dtype=torch.uint8).share_memory_(),
            "chunk": torch.zeros(k, self.chunk_size, a).share_memory_(),
            "active": torch.zeros(k, dtype=torch.bool).share_memory_(), "reward": torch.zeros(k).share_memory_(),
            "terminated": torch.zeros(k, dtype=torch.bool).share_memory_(),
            "truncated": torch.zeros(k, dtype=torch.bool).share_memory_(),
            "success": torch.zeros(k, dtype=torch.bool).share_memory_(),
            "steps": torch.zeros(k, dtype=torch.int64).share_memory_(),
        }
        self.conn.send(self.bufs)
        self.state = "idle"
        return spec

    def receive(self) -> None:
        kind, payload = self.conn.recv()
        if kind != "ok":
            raise RuntimeError(f"env shard {self.index}: {payload}")

    def result(self) -> StepResult:
        """Views of the shared buffers, valid until the next 'step' (the recorder copies what it keeps)."""
        b = self.bufs
        return StepResult(obs=b["obs"], reward=b["reward"], terminated=b["terminated"], truncated=b["truncated"],
                          success=b["success"], images=b["images"], steps=b["steps"])

    def close(self) -> None:
        try:
            self.conn.send(("close",))
        except (BrokenPipeError, OSError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


class ShardedSampler:
    """Runs env shards; every finished shard epoch is handed to `emit` as a TrajectoryBatch.

    The number of shards can change while it runs (`run(target_shards=...)`):
    new shard processes start in the background and join once their envs are
    built; surplus shards finish the round under way, are emitted, and close.
    """

    def __init__(self, env_cfg: EnvConfig, num_shards: int, max_batch: int, timeout_s: float, device: torch.device,
                 tel_cfg: TelemetryConfig = TelemetryConfig(exporter="none"), chunk_size: int = 1):
        if env_cfg.num_envs % num_shards:
            raise ValueError(f"env.num_envs={env_cfg.num_envs} does not split into {num_shards} shards")
        self._ctx = mp.get_context("spawn")
        self._shard_cfg = replace(env_cfg, num_envs=env_cfg.num_envs // num_shards)
        self._tel_cfg = tel_cfg
        self.chunk_size = chunk_size
        self.envs_per_shard = self._shard_cfg.num_envs
        self.shards = [self._start_shard(i) for i in range(num_shards)]
        self._next_index = num_shards  # shard indices are never reused: they seed the episodes
        specs = {s.handshake() for s in self.shards}
        self.spec = specs.pop()
        self.batcher = DynamicBatcher(max_batch, timeout_s)
        self.device = device
        self.inference_batches = 0
        self.parked_s = 0.0  # every shard idle, held back by admission control

    def _start_shard(self, index: int) -> Shard:
        return Shard(self._ctx, self._shard_cfg, self._tel_cfg, index, self.chunk_size)

    @property
    def num_shards(self) -> int:
        """Shards taking part in new rounds (starting ones included, retiring ones not)."""
        return sum(not s.retiring for s in self.shards)

    @property
    def num_envs(self) -> int:
        return self.num_shards * self.envs_per_shard

    def close(self) -> None:
        for s in self.shards:
            s.close()

    def rescale(self, target: int) -> None:
        """Aim for `target` shards: start new processes, or retire the newest shards (after their round)."""
        if target <= 0 or target == self.num_shards:
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

    def _retire_idle(self) -> None:
        for s in [s for s in self.shards if s.retiring and s.state == "idle"]:
            s.close()
            self.shards.remove(s)

    def _quiet(self) -> bool:
        """No shard holds an unfinished round."""
        return all(s.state in ("idle", "starting") for s in self.shards) and not len(self.batcher)

    def run(self, lane: WeightLane, seeds_for: Callable[[int, int], tuple[list[int], list[int]]], staleness: int,
            emit: Callable[[TrajectoryBatch, int], None], stop: threading.Event, step_delay_s: float = 0.0,
            paused: Callable[[], bool] = lambda: False, should_yield: Callable[[], bool] = lambda: False,
            target_shards: Callable[[], int] = lambda: 0, first_round: int = 0) -> str:
        """Start, step and emit shard epochs until one of: 'final' (the actor's final version is in use),
        'stop', or 'yield' (should_yield() asked for a safe point, and every round under way is emitted).

        seeds_for(round, shard) gives that shard epoch's reset seeds and group ids; a
        shard starts round r only once version >= r - staleness is in use, and
        none starts while paused() or should_yield() (rounds under way finish and are
        emitted). Rounds start at first_round at least.
        """
        for s in self.shards:
            s.round = max(s.round, first_round)
        while not stop.is_set():
            _, version = lane.current()
            if lane.final:
                return "final"  # unfinished shard epochs are abandoned: never counted as produced
            self.rescale(target_shards())
            self._retire_idle()
            leaving = should_yield()
            if leaving and self._quiet():
                return "yield"
            hold = paused() or leaving
            for s in self.shards:
                if s.state == "idle" and not hold and not s.retiring:
                    need = max(0, s.round - staleness)  # v0 at least: only fetched weights run
                    if version < need and not lane.background:
                        t = time.monotonic()
                        ok = lane.wait_loaded(need, interrupt=should_yield)  # a rescale must not wait on it
                        self.parked_s += time.monotonic() - t
                        if not ok:
                            if stop.is_set():
                                return "stop"
                            if should_yield():
                                break  # the next pass holds every shard and yields once all are quiet
                            return "final"
                        _, version = lane.current()
                    if version >= need:
                        # one trace per shard round: the actor's training spans link back to it
                        s.span = telemetry.start_span("sampling.round", shard=s.index, round=s.round)
                        s.conn.send(("reset", seeds_for(s.round, s.index)[0]))
                        s.group_ids = seeds_for(s.round, s.index)[1]
                        s.state = "resetting"
            by_conn = {s.conn: s for s in self.shards}
            busy = [s.conn for s in self.shards if s.state in ("resetting", "stepping", "starting")]
            wait_s = self.batcher.time_left(time.monotonic())
            if busy:
                ready = mpc.wait(busy, timeout=0.05 if wait_s is None else wait_s)
            else:
                ready = []
                if wait_s is None:
                    time.sleep(0.005)  # every shard is parked on admission control
                    self.parked_s += 0.005
            for conn in ready:
                s = by_conn[conn]
                if s.state == "starting":
                    spec = s.handshake()
                    if spec != self.spec:
                        raise RuntimeError(f"env shard {s.index} reports {spec}, the others {self.spec}")
                    continue
                s.receive()
                if s.state == "resetting":
                    if s.recorder is None:
                        s.recorder = self._recorder(s, lane)
                    s.recorder.begin(s.bufs["obs"], s.bufs["images"], s.group_ids)
                else:
                    if step_delay_s:
                        time.sleep(step_delay_s)
                    s.recorder.record_step(s.result())
                if s.recorder.done:
                    batch = s.recorder.finish()
                    batch.trace_context = telemetry.context_of(s.span)
                    emit(batch, s.round)
                    s.span.end()
                    s.round += 1
                    s.state = "idle"
                else:
                    self.batcher.add(s.index, int(s.recorder.active.sum()), time.monotonic())
                    s.state = "inference"
            no_more_coming = len(self.batcher) and not any(s.state in ("resetting", "stepping") for s in self.shards)
            if no_more_coming or self.batcher.ready(time.monotonic()):
                by_index = {s.index: s for s in self.shards}
                self._infer([by_index[i] for i in self.batcher.take(time.monotonic())], lane)
        return "stop"

    def _recorder(self, s: Shard, lane: WeightLane) -> EpisodeRecorder:
        policy, _ = lane.current()
        if policy.chunk_size != self.chunk_size:
            raise ValueError(f"the policy acts in chunks of {policy.chunk_size}, the env shards were built for "
                             f"{self.chunk_size} (policy.chunk_size)")
        return EpisodeRecorder(s.num_envs, self.spec, policy.sample_dim, policy.chunk_size)

    def _infer(self, shards: list[Shard], lane: WeightLane) -> None:
        policy, version = lane.current()  # a waiting version is swapped in here, between two batches
        obs = torch.cat([s.recorder.current_obs[s.recorder.active] for s in shards])
        images = torch.cat([s.recorder.current_images[s.recorder.active] for s in shards])
        with telemetry.span("inference.batch", version=version, batch_size=obs.shape[0], shards=len(shards)):
            out = policy.act(obs.to(self.device), images.to(self.device))
        start = 0
        for s in shards:
            rec = s.recorder
            n = int(rec.active.sum())
            k, c, a = s.num_envs, self.chunk_size, self.spec.action_dim
            full = ActOutput(torch.zeros(k, policy.sample_dim), torch.zeros(k), torch.zeros(k), torch.zeros(k, c, a))
            for name in ("actions", "log_probs", "values", "chunk"):
                getattr(full, name)[rec.active] = getattr(out, name)[start:start + n].cpu().float()
            start += n
            rec.record_action(full, version)
            s.bufs["chunk"].copy_(full.chunk)
            s.bufs["active"].copy_(rec.active)
            s.conn.send(("step",))
            s.state = "stepping"
        self.inference_batches += 1
