"""`dvla run`: start weight_control, the actor and the rollouts as separate OS
processes on this machine, show progress, and stop every one of them on exit,
Ctrl-C or SIGTERM (no orphans, no ports left bound)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from dvla.autoplace import AutoPlacer, Decision, cpu_candidates, describe
from dvla.checkpoint import CHECKPOINTS, config_text, list_checkpoints
from dvla.config import RunConfig
from dvla.metrics import read_metrics
from dvla.net import free_port
from dvla.placement import Placement, Slot, plan
from dvla.proto.v1 import common_pb2 as pb
from dvla.types import RunState

PLACEMENT_LOG = "placement.jsonl"  # the measured placement's decisions (pipeline.placement=auto)
CONTROL_STATE = "control-state.json"  # weight_control's ledger in the run folder (control.state_path)
# A process that ran this long had started fine: its death is a new failure (restarted after 1 s), not a
# crash loop (restarted after 1, 2, 4 ... 30 s while it keeps dying sooner)
STABLE_S = 30.0


def new_run_dir(cfg: RunConfig) -> Path:
    """<out_dir>/<name>, or <name>-2, -3 ... if taken: a new run never overwrites an old one."""
    base = Path(cfg.out_dir) / cfg.name
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{cfg.name}-{i}")
    path.mkdir(parents=True)
    return path


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log_path: Path
    argv: tuple[str, ...] = ()  # module and arguments: what a restart runs again
    cores: set[int] | None = None
    restarts: int = 0  # times it was started again after dying
    quick_deaths: int = 0  # deaths in a row within STABLE_S of starting: the restart backoff's exponent
    started: float = field(default_factory=time.monotonic)

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Launcher:
    def __init__(self, cfg: RunConfig, run_dir: Path, progress: str = "off", resume: Path | None = None):
        """progress: 'bar' (tqdm), 'lines' (a line per update) or 'off'; resume: the checkpoint folder the
        actor continues from (see dvla.checkpoint.find_checkpoint)."""
        if cfg.telemetry.exporter == "json" and not cfg.telemetry.json_dir:
            cfg = replace(cfg, telemetry=replace(cfg.telemetry, json_dir=str(run_dir / "traces")))
        # env shards per rollout (pipeline.num_shards=0): for the cores the rollouts of this node share
        cfg = cfg.with_shards_for(len(os.sched_getaffinity(0)), cfg.pipeline.num_rollout_workers)
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.resume = Path(resume).resolve() if resume is not None else None
        self.children: list[Child] = []
        self.auto: MeasuredPlacement | None = None  # pipeline.placement=auto, measured (async modes on CPU)
        self._due: dict[str, float] = {}  # processes that died -> when to start them again
        self._finished = False  # the final version is out (as of the last look)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.config_path = run_dir / "config.yaml"
        self.config_path.write_text(config_text(cfg, self.resume or ""))

    def spawn(self, name: str, module: str, *args: str, cores: set[int] | None = None, again: bool = False) -> Child:
        """Start `python -m module`; `again`: a restart of the child called `name`, which it replaces (its log
        goes on in the same file)."""
        log_path = self.run_dir / "logs" / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if self.cfg.control.token and not env.get("DVLA_TOKEN"):
            env["DVLA_TOKEN"] = self.cfg.control.token  # config.yaml holds it redacted
        f = open(log_path, "a" if again else "w")
        if again:
            f.write(f"\n---- {name} started again ----\n")
            f.flush()
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(self.config_path), *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        f.close()
        if cores:
            os.sched_setaffinity(proc.pid, cores)
        child = Child(name, proc, log_path, (module, *args), cores)
        self.children = [c for c in self.children if c.name != name] if again else self.children
        self.children.append(child)
        return child

    def stop_all(self, grace_s: float = 10.0) -> None:
        for c in reversed(self.children):
            if c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for c in self.children:
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(c.proc.pid, signal.SIGKILL)
                c.proc.wait()

    def start(self) -> str:
        cfg = self.cfg
        port = (
            cfg.control.port
            if cfg.control.port and _port_free(cfg.control.host, cfg.control.port)
            else free_port(cfg.control.host)
        )
        ledger = cfg.control.state_path
        if not ledger:  # the ledger of this launch's weight_control, for one started again; not an earlier launch's
            ledger = str(self.run_dir / CONTROL_STATE)
            Path(ledger).unlink(missing_ok=True)
        control = self.spawn(
            "weight_control", "services.weight_control", f"control.port={port}", f"control.state_path={ledger}"
        )
        # Talk to the port *our* weight_control bound: a free port can be taken by another run between
        # the check and the bind, and its server would answer the health check just as well.
        address = f"{cfg.control.host}:{_bound_port(control, 60.0)}"
        from dvla.rpc.client import ControlClient

        client = ControlClient(address, cfg.control)
        try:
            client.wait_healthy(60)
        finally:
            client.close()
        self.auto = MeasuredPlacement.for_run(self, address)
        self.placement = placement(cfg) if self.auto is None else self.auto.plan(self.auto.placer.current)
        resume = ("--resume", str(self.resume)) if self.resume is not None else ()
        for k, slot in enumerate(self.placement.actors):  # ranks go by registration; rank 0 writes the metrics
            self.spawn(
                "actor" if k == 0 else f"actor-{k}",
                "services.actor",
                "--control",
                address,
                "--run-dir",
                str(self.run_dir),
                "--worker-id",
                f"actor-{k}",
                "--busy-neighbours",
                str(self._physics_beside(slot)),
                *resume,
                *_device(slot),
                cores=slot.cores,
            )
        self.address, self._next_rollout = address, 0
        for _ in range(cfg.pipeline.num_rollout_workers):
            self.spawn_rollout()
        return address

    def _physics_beside(self, slot: Slot) -> int:
        """The env-stepping processes that run on an actor rank's cores while it trains: every rollout's
        (its shards, or the worker itself) where they share cores in an asynchronous mode on CPU; else 0."""
        p = self.cfg.pipeline
        if p.lockstep or slot.cores or slot.device or _gpus(self.cfg):
            return 0
        return p.num_rollout_workers * (p.num_shards if p.sharded else 1)

    def slot_of(self, name: str) -> Slot | None:
        """The placement slot of the child called `name` (None for weight_control)."""
        if _is_actor(name):
            return self.placement.actors[0 if name == "actor" else int(name.split("-")[1])]
        if name.startswith("rollout-"):
            return self.placement.rollout(int(name.split("-")[1]))
        return None

    def spawn_rollout(self) -> Child:
        i, self._next_rollout = self._next_rollout, self._next_rollout + 1
        slot = self.placement.rollout(i)
        return self.spawn(
            f"rollout-{i}",
            "services.rollout",
            "--control",
            self.address,
            "--worker-id",
            f"rollout-{i}",
            *_device(slot),
            cores=slot.cores,
        )

    def follow_rescale(self, world) -> int:
        """Start rollout processes until those running and not rescaled away number the target
        (`dvla admin rescale --rollouts N`); leavers exit by themselves. Returns how many were started."""
        gone = {w.worker_id for w in world.workers if w.membership in (pb.LEAVING, pb.LEFT)}
        running = [
            c
            for c in self.children
            if c.name.startswith("rollout-") and (c.proc.poll() is None or c.name in self._due) and c.name not in gone
        ]
        started = 0
        for _ in range(world.target_rollouts - len(running)):
            c = self.spawn_rollout()
            print(f"rescale: started {c.name} (log {c.log_path})", flush=True)
            started += 1
        return started

    def actors(self) -> list[Child]:
        """The actor ranks' processes (the newest of each), rank 0 first."""
        return [c for c in self.children if _is_actor(c.name)]

    def _budget(self, name: str) -> tuple[str, int]:
        """The setting that bounds how often the process `name` is started again, and its value."""
        key = "actor_restarts" if _is_actor(name) else "control_restarts" if name == "weight_control" else (
            "rollout_restarts"
        )  # fmt: skip
        return f"pipeline.{key}", getattr(self.cfg.pipeline, key)

    def _restartable(self, c: Child) -> bool:
        """A process that died while the run goes on, with restarts left (an actor: the group's)."""
        if self._finished or any(a.proc.poll() == 0 for a in self.actors()):
            return False
        return c.restarts < self._budget(c.name)[1]

    def _plan_restart(self, c: Child, rc: int) -> None:
        c.quick_deaths = c.quick_deaths + 1 if time.monotonic() - c.started < STABLE_S else 0
        delay = min(30.0, 2.0 ** max(c.quick_deaths - 1, 0))
        if _is_actor(c.name):
            self._plan_actor_restart(c, rc, delay)
            return
        self._due[c.name] = time.monotonic() + delay
        wc = c.name == "weight_control"
        then = "the workers keep going and register with it again" if wc else "the run goes on without it"
        print(
            f"\n{c.name} {_exit_text(rc)}; starting it again in {delay:.0f} s "
            f"(restart {c.restarts + 1} of {self._budget(c.name)[1]}); {then}. "
            f"Last lines of {c.log_path}:\n{c.tail(8)}",
            file=sys.stderr,
            flush=True,
        )

    def _plan_actor_restart(self, c: Child, rc: int, delay: float) -> None:
        """Every actor rank starts again from the newest checkpoint: the group's collectives lost a member."""
        for a in self.actors():
            if a.proc.poll() is None:
                os.killpg(a.proc.pid, signal.SIGKILL)
                a.proc.wait()
            self._due[a.name] = time.monotonic() + delay
        found = list_checkpoints(self.run_dir / CHECKPOINTS)
        source = (
            f"its newest checkpoint ({found[-1].relative_to(self.run_dir)})"
            if found
            else (f"{self.resume}" if self.resume else "the start (no checkpoint written yet)")
        )
        who = "the actor" if len(self.actors()) == 1 else f"the {len(self.actors())} actor ranks"
        print(
            f"\n{c.name} {_exit_text(rc)}; starting {who} again from {source} in {delay:.0f} s "
            f"(restart {c.restarts + 1} of {self._budget(c.name)[1]}); rollouts wait for it. "
            f"Last lines of {c.log_path}:\n{c.tail(8)}",
            file=sys.stderr,
            flush=True,
        )

    def _actor_argv(self, argv: tuple[str, ...], slot: Slot | None = None) -> tuple[str, ...]:
        """An actor's arguments for a restart: --resume the run folder once it holds a checkpoint, and the env
        processes beside it where it is placed now (placement=auto may have moved it onto cores of its own)."""
        args = list(argv)
        if "--resume" in args:
            i = args.index("--resume")
            del args[i : i + 2]
        if slot is not None and "--busy-neighbours" in args:
            args[args.index("--busy-neighbours") + 1] = str(self._physics_beside(slot))
        if list_checkpoints(self.run_dir / CHECKPOINTS):
            args += ["--resume", str(self.run_dir)]
        elif self.resume is not None:
            args += ["--resume", str(self.resume)]
        return tuple(args)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for name, due in sorted(self._due.items(), key=lambda kv: (not _is_actor(kv[0]), kv[0])):
            if due > now:
                continue
            del self._due[name]
            old = next(c for c in self.children if c.name == name)
            argv = self._actor_argv(old.argv, self.slot_of(name)) if _is_actor(name) else old.argv
            new = self.spawn(name, *argv, cores=old.cores, again=True)
            new.restarts, new.quick_deaths = old.restarts + 1, old.quick_deaths
            what = (
                "the data plane re-forms around it"
                if _is_actor(name)
                else "the workers register with it again"
                if name == "weight_control"
                else "it rejoins at the next data-plane epoch"
            )
            print(f"{name} started again (pid {new.proc.pid}); {what}", flush=True)

    def wait(self) -> int:
        """Until the actors finish (0) or any process fails (its exit code)."""
        from dvla.rpc.client import ControlClient, RpcFailed

        bar = _Progress(self.cfg, self.run_dir / "metrics.jsonl", self.progress)
        client = ControlClient(self.address, self.cfg.control)
        next_look = 0.0
        try:
            while True:
                rows = bar.update()
                if self.auto is not None and rows:
                    self.auto.observe(rows, client, bar.say)
                for c in list(self.children):
                    rc = c.proc.poll()
                    if rc in (None, 0) or c.name in self._due:
                        continue
                    if self._restartable(c):
                        self._plan_restart(c, rc)
                        continue
                    bar.close()
                    print(f"\n{c.name} {_exit_text(rc)}; last lines of {c.log_path}:\n{c.tail()}", file=sys.stderr)
                    if c.restarts:
                        print(f"{c.name} was started again {c.restarts} time(s), the most allowed "
                              f"({self._budget(c.name)[0]}): giving up", file=sys.stderr)  # fmt: skip
                    return rc
                self._restart_due()
                actors = self.actors()
                if time.monotonic() >= next_look and actors[0].proc.poll() is None:
                    next_look = time.monotonic() + 1.0
                    try:
                        # Once the final version is out, rollouts exit by themselves while the actor still
                        # writes its last checkpoint: none of them is to be replaced.
                        self._finished = client.latest(patient=False).state == RunState.FINISHED
                        if not self._finished:
                            self.follow_rescale(client.world())
                    except RpcFailed:
                        pass  # weight_control's own exit is reported with the other children's
                if all(a.proc.poll() == 0 and a.name not in self._due for a in actors):
                    # Every member sent END before the actor finished, so they are on their way out; one
                    # still here had not joined yet (started again late): stop_all stops it.
                    rollouts = [c for c in self.children if c.name.startswith("rollout")]
                    deadline = time.monotonic() + 15.0
                    for c in rollouts:
                        try:
                            c.proc.wait(max(0.1, deadline - time.monotonic()))
                        except subprocess.TimeoutExpired:
                            print(f"{c.name} had not joined when the run finished: stopping it", file=sys.stderr)
                    bar.update()
                    bar.close()
                    return 0
                time.sleep(0.5)
        finally:
            bar.close()
            client.close()


class MeasuredPlacement:
    """pipeline.placement=auto in an asynchronous mode on CPU: the AutoPlacer's decisions (dvla/autoplace.py)
    carried out on the running processes (their CPU affinity, every thread, child processes included),
    written to <run>/placement.jsonl and told to weight_control for `dvla admin status`."""

    def __init__(self, launcher: Launcher, cores: list[int]):
        p = launcher.cfg.pipeline
        self.launcher, self.cores = launcher, cores
        self.placer = AutoPlacer(cpu_candidates(len(cores), p.num_actors), window_updates=p.auto_window_updates,
                                 recheck_windows=p.auto_recheck_windows, cut_below=p.auto_cut_below, cores=len(cores),
                                 num_actors=p.num_actors)  # fmt: skip
        self.path = launcher.run_dir / PLACEMENT_LOG
        self._last_update = 0
        self._first = Decision(0, self.placer.current, "planned; measuring each of: " + ", ".join(
            f"{c} ({describe(c, len(cores), p.num_actors)})" for c in self.placer.candidates))  # fmt: skip
        self.path.write_text("")
        self._record(self._first, None)

    @staticmethod
    def for_run(launcher: Launcher, address: str) -> MeasuredPlacement | None:
        p, cores = launcher.cfg.pipeline, sorted(os.sched_getaffinity(0))
        if not p.measured_placement or _gpus(launcher.cfg) or len(cores) < 2:
            return None
        auto = MeasuredPlacement(launcher, cores)
        auto._tell(address)
        return auto

    def _tell(self, address: str) -> None:
        from dvla.rpc.client import ControlClient

        client = ControlClient(address, self.launcher.cfg.control)
        try:
            self._note(self._first, client)
        finally:
            client.close()

    def cpu_used(self) -> tuple[float, dict[str, float]]:
        """(now, CPU seconds the rollouts (env shards included) and the actor ranks have used so far)."""
        running = [c for c in self.launcher.children if c.proc.poll() is None]
        actors = [c.proc.pid for c in running if _is_actor(c.name)]
        rollouts = [c.proc.pid for c in running if c.name.startswith("rollout")]
        stats = _proc_stats()  # one pass over /proc for both stages
        return time.monotonic(), {"rollout": tree_cpu_s(rollouts, stats), "actor": tree_cpu_s(actors, stats)}

    def observe(self, rows: list[dict], client, say) -> None:
        cpu = self.cpu_used() if rows else None  # one snapshot for the rows read together (timed on its own)
        for row in rows:
            if row["update"] <= self._last_update:  # an actor started again repeats updates: measure afresh
                self.placer.restart_window()
            self._last_update = row["update"]
            d = self.placer.observe(row["update"], row["wall_s"], row["env_steps"], cpu)
            if d is None:
                continue
            if d.switch:
                self.apply(d.placement)
            self._record(d, say)
            self._note(d, client)

    def plan(self, placement_mode: str) -> Placement:
        p = self.launcher.cfg.pipeline
        return plan(placement_mode, p.num_actors, p.num_rollout_workers, self.cores, 0)

    def apply(self, placement_mode: str) -> None:
        self.launcher.placement = self.plan(placement_mode)
        for c in self.launcher.children:
            slot = self.launcher.slot_of(c.name)
            if slot is None:
                continue
            c.cores = set(slot.cores) if slot.cores else None
            if c.proc.poll() is None:
                set_tree_affinity(c.proc.pid, c.cores or set(self.cores))

    def _record(self, d: Decision, say) -> None:
        n = self.launcher.cfg.pipeline.num_actors
        line = {"update": d.update, "placement": d.placement, "detail": describe(d.placement, len(self.cores), n),
                "reason": d.reason, "switch": d.switch, "rates": d.rates, "busy": d.busy,
                "unix_s": time.time()}  # fmt: skip
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if say is not None:
            say(f"placement after update {d.update}: {d.placement} ({line['detail']}): {d.reason}")

    def _note(self, d: Decision, client) -> None:
        from dvla.rpc.client import RpcFailed

        try:
            detail = describe(d.placement, len(self.cores), self.launcher.cfg.pipeline.num_actors)
            client.set_placement(d.placement, detail, d.reason, d.update)
        except RpcFailed:
            pass  # weight_control restarting: the next decision tells it again


def _proc_stats() -> dict[int, tuple[int, float]]:
    """Every process on the machine: pid -> (parent pid, CPU seconds used, user + system)."""
    stats: dict[int, tuple[int, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
            except (OSError, IndexError, ValueError):
                continue
    return stats


def process_tree(pid: int, stats: dict[int, tuple[int, float]] | None = None) -> set[int]:
    """`pid` and every process below it (children, their children: env shards under a forkserver)."""
    stats = _proc_stats() if stats is None else stats
    tree, frontier = {pid}, [pid]
    while frontier:
        kids = [c for c, (parent, _) in stats.items() if parent in frontier and c not in tree]
        tree.update(kids)
        frontier = kids
    return tree


def tree_cpu_s(pids: list[int], stats: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds used so far by the processes `pids` and every process below them (those still running)."""
    stats = _proc_stats() if stats is None else stats
    tree = set().union(*(process_tree(p, stats) for p in pids)) if pids else set()
    return sum(stats[p][1] for p in tree if p in stats)


def set_tree_affinity(pid: int, cores: set[int]) -> int:
    """Move process `pid`, every thread of it, and every process below it onto `cores`; how many threads
    moved. Processes and threads that ended meanwhile are skipped."""
    moved = 0
    for p in process_tree(pid):
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{p}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(tid, cores)
                moved += 1
            except OSError:  # ended meanwhile
                pass
    return moved


def _is_actor(name: str) -> bool:
    return name == "actor" or name.startswith("actor-")


def _exit_text(rc: int) -> str:
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            pass
    return f"exited with code {rc}"


def _actors(cfg: RunConfig) -> str:
    k = cfg.pipeline.num_actors
    return "actor" if k == 1 else f"{k} actor ranks ({cfg.actor.strategy})"


def placement(cfg: RunConfig) -> Placement:
    """Each process's device and cores on this node by pipeline.placement (dvla/placement.py): GPUs when
    the run's device is CUDA and no single device was named, otherwise this process's CPU cores."""
    p = cfg.pipeline
    return plan(p.placement_in_force, p.num_actors, p.num_rollout_workers, sorted(os.sched_getaffinity(0)), _gpus(cfg))


def _gpus(cfg: RunConfig) -> int:
    """CUDA devices the run places processes on (0: a CPU run)."""
    if cfg.device not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _device(slot: Slot) -> tuple[str, ...]:
    return (f"device={slot.device}",) if slot.device else ()


def _bound_port(child: Child, timeout_s: float) -> int:
    """The port weight_control reports listening on (its first line of output)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in child.tail(50).splitlines():
            if line.startswith("weight_control listening on "):
                return int(line.rsplit(":", 1)[1])
        if child.proc.poll() is not None:
            raise RuntimeError(f"weight_control exited with code {child.proc.returncode}:\n{child.tail()}")
        time.sleep(0.05)
    raise RuntimeError(f"weight_control did not start listening within {timeout_s:.0f}s:\n{child.tail()}")


def _port_free(host: str, port: int) -> bool:
    """Free to listen on; like servers, ignore connections lingering in TIME_WAIT."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


class _Progress:
    """A tqdm bar fed by the actor's metrics file: updates, env steps/s, success, version."""

    def __init__(self, cfg: RunConfig, metrics_path: Path, mode: str):
        self.metrics_path, self.seen, self.mode = metrics_path, 0, mode
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=cfg.pipeline.num_updates, unit="update", desc=f"{cfg.name}")

    def update(self) -> list[dict]:
        """Show what the actor's metrics file gained since the last look; the new rows."""
        rows = read_metrics(self.metrics_path)
        if len(rows) <= self.seen:
            return []
        new, self.seen = rows[self.seen :], len(rows)
        last = new[-1]
        if self.bar is not None:
            # an actor started again repeats the updates after its checkpoint: the bar stays where it was
            self.bar.update(max(0, last["update"] - self.bar.n))
            self.bar.set_postfix_str(
                f"v{last['version']} steps={last['env_steps']} {last['env_steps_per_s']:.0f} steps/s "
                f"success={last['success_rate']:.2f} return={last['return_mean']:.2f}"
            )
        elif self.mode == "lines":
            print(
                f"update {last['update']}: v{last['version']} env_steps={last['env_steps']} "
                f"{last['env_steps_per_s']:.0f} steps/s success={last['success_rate']:.2f} "
                f"return={last['return_mean']:.2f}",
                flush=True,
            )
        return new

    def say(self, text: str) -> None:
        """A line for the user that does not break the bar."""
        if self.bar is not None:
            self.bar.write(text)
        elif self.mode != "off":
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(cfg: RunConfig, progress: str = "bar", resume: Path | None = None) -> int:
    """resume: a checkpoint folder, already checked (dvla.checkpoint.inspect_checkpoint); the run still gets
    a new folder, and its actor continues that checkpoint's version numbering."""
    run_dir = new_run_dir(cfg)
    launcher = Launcher(replace(cfg), run_dir, progress, resume=resume)
    print(f"run folder: {run_dir}" + (f" (resumed from {launcher.resume})" if resume is not None else ""), flush=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        address = launcher.start()
        print(
            f"weight_control at {address}; {_actors(cfg)} + {cfg.pipeline.num_rollout_workers} rollout worker(s) "
            "started "
            f"(logs in {run_dir / 'logs'})",
            flush=True,
        )
        if cfg.pipeline.pinned or cfg.pipeline.num_actors > 1:
            print("placement: " + "; ".join(launcher.placement.describe(cfg.pipeline.num_rollout_workers)), flush=True)
        rc = launcher.wait()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr)
        rc = 130
    except RuntimeError as e:  # weight_control could not start
        print(f"error: {e}", file=sys.stderr)
        rc = 1
    finally:
        launcher.stop_all()
        signal.signal(signal.SIGTERM, old)
    if rc == 0:
        from dvla.tracechart import plot_trace

        plot_trace(run_dir / "traces", run_dir / "trace.png")
        if launcher.auto is not None:
            from dvla.metrics import plot_placement

            plot_placement(run_dir)
        summarize(run_dir, time.monotonic() - t0)
    return rc


def summarize(run_dir: Path, wall_s: float) -> None:
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return
    first, last = rows[0], rows[-1]
    tail = rows[-max(1, len(rows) // 10) :]
    mean = lambda k: sum(r[k] for r in tail) / len(tail)  # noqa: E731
    done = f"{last['update']} updates" if first["update"] == 1 else f"updates {first['update']}..{last['update']}"
    print(
        f"\nfinished in {wall_s:.0f}s: {done}, {last['env_steps']} env steps, {last['env_steps_per_s']:.0f} env steps/s"
    )
    print(
        f"success rate {first['success_rate']:.2f} -> {mean('success_rate'):.2f}, "
        f"return {first['return_mean']:.2f} -> {mean('return_mean'):.2f} (first update -> mean of last {len(tail)})"
    )
    print(
        f"outputs: {run_dir}/metrics.jsonl, training.png, trace.png, tensorboard/, checkpoints/, config.yaml, "
        f"logs/, traces/"
    )
    print(f"continue training: dvla run --resume {run_dir} pipeline.num_updates=<more than {last['update']}>")
