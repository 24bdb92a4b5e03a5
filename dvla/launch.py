"""`dvla run`: start weight_control, the actor and the rollouts as separate OS
processes on this machine, show progress, and stop every one of them on exit,
Ctrl-C or SIGTERM (no orphans, no ports left bound)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from dvla.config import RunConfig, to_yaml
from dvla.metrics import read_metrics


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


class Launcher:
    def __init__(self, cfg: RunConfig, run_dir: Path, progress: str = "off"):
        """progress: 'bar' (tqdm), 'lines' (a line per update) or 'off'."""
        if cfg.telemetry.exporter == "json" and not cfg.telemetry.json_dir:
            cfg = replace(cfg, telemetry=replace(cfg.telemetry, json_dir=str(run_dir / "traces")))
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.children: list[Child] = []
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        self.config_path = run_dir / "config.yaml"
        self.config_path.write_text(to_yaml(cfg))

    def spawn(self, name: str, module: str, *args: str, cores: set[int] | None = None) -> Child:
        log_path = self.run_dir / "logs" / f"{name}.log"
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        f = open(log_path, "w")
        # Own session: a terminal's Ctrl-C reaches only us, and we stop the children in order.
        proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(self.config_path), *args],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        f.close()
        if cores:
            os.sched_setaffinity(proc.pid, cores)
        child = Child(name, proc, log_path)
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
        port = cfg.control.port if cfg.control.port and _port_free(cfg.control.host, cfg.control.port) else free_port(cfg.control.host)
        address = f"{cfg.control.host}:{port}"
        self.spawn("weight_control", "services.weight_control", f"control.port={port}")
        from dvla.rpc.client import ControlClient
        client = ControlClient(address, cfg.control)
        try:
            client.wait_healthy(60)
        finally:
            client.close()
        actor_cores, rollout_cores = placement(cfg)
        self.spawn("actor", "services.actor", "--control", address, "--run-dir", str(self.run_dir), "--worker-id", "actor-0",
                   cores=actor_cores)
        for i in range(cfg.pipeline.num_rollout_workers):
            self.spawn(f"rollout-{i}", "services.rollout", "--control", address, "--worker-id", f"rollout-{i}",
                       cores=rollout_cores)
        return address

    def wait(self) -> int:
        """Until the actor finishes (0) or any process fails (its exit code)."""
        bar = _Progress(self.cfg, self.run_dir / "metrics.jsonl", self.progress)
        actor = next(c for c in self.children if c.name == "actor")
        try:
            while True:
                bar.update()
                for c in self.children:
                    rc = c.proc.poll()
                    if rc not in (None, 0):
                        bar.close()
                        print(f"\n{c.name} exited with code {rc}; last lines of {c.log_path}:\n{c.tail()}", file=sys.stderr)
                        return rc
                if actor.proc.poll() == 0:
                    rollouts = [c for c in self.children if c.name.startswith("rollout")]
                    for c in rollouts:
                        try:
                            c.proc.wait(30)
                        except subprocess.TimeoutExpired:
                            print(f"{c.name} did not exit after the actor finished", file=sys.stderr)
                    bar.update()
                    bar.close()
                    return 0
                time.sleep(0.5)
        finally:
            bar.close()


def placement(cfg: RunConfig) -> tuple[set[int] | None, set[int] | None]:
    """CPU cores for (actor, rollouts): shared when colocated, disjoint when disaggregated.

    Disaggregated, the actor gets the last core and the rollouts the rest: on a
    CPU machine the rollouts' physics is the heavier side.
    """
    cores = sorted(os.sched_getaffinity(0))
    if not cfg.pipeline.pinned or len(cores) < 2:
        return None, None
    return {cores[-1]}, set(cores[:-1])


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

    def update(self) -> None:
        rows = read_metrics(self.metrics_path)
        if len(rows) <= self.seen:
            return
        new, self.seen = rows[self.seen:], len(rows)
        last = new[-1]
        if self.bar is not None:
            self.bar.update(len(new))
            self.bar.set_postfix_str(
                f"v{last['version']} steps={last['env_steps']} {last['env_steps_per_s']:.0f} steps/s "
                f"success={last['success_rate']:.2f} return={last['return_mean']:.2f}")
        elif self.mode == "lines":
            print(f"update {last['update']}: v{last['version']} env_steps={last['env_steps']} "
                  f"{last['env_steps_per_s']:.0f} steps/s success={last['success_rate']:.2f} return={last['return_mean']:.2f}",
                  flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def run(cfg: RunConfig, progress: str = "bar") -> int:
    run_dir = new_run_dir(cfg)
    launcher = Launcher(replace(cfg), run_dir, progress)
    print(f"run folder: {run_dir}", flush=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, on_signal)
    t0 = time.monotonic()
    try:
        address = launcher.start()
        print(f"weight_control at {address}; actor + {cfg.pipeline.num_rollout_workers} rollout worker(s) started "
              f"(logs in {run_dir / 'logs'})", flush=True)
        rc = launcher.wait()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process", file=sys.stderr)
        rc = 130
    finally:
        launcher.stop_all()
        signal.signal(signal.SIGTERM, old)
    if rc == 0:
        from dvla.tracechart import plot_trace
        plot_trace(run_dir / "traces", run_dir / "trace.png")
        summarize(run_dir, time.monotonic() - t0)
    return rc


def summarize(run_dir: Path, wall_s: float) -> None:
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not rows:
        return
    first, last = rows[0], rows[-1]
    tail = rows[-max(1, len(rows) // 10):]
    mean = lambda k: sum(r[k] for r in tail) / len(tail)  # noqa: E731
    print(f"\nfinished in {wall_s:.0f}s: {last['update']} updates, {last['env_steps']} env steps, "
          f"{last['env_steps_per_s']:.0f} env steps/s")
    print(f"success rate {first['success_rate']:.2f} -> {mean('success_rate'):.2f}, "
          f"return {first['return_mean']:.2f} -> {mean('return_mean'):.2f} (first update -> mean of last {len(tail)})")
    print(f"outputs: {run_dir}/metrics.jsonl, training.png, trace.png, tensorboard/, checkpoint/, config.yaml, logs/, traces/")
