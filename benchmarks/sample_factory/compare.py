"""Sample Factory vs dvla on the same ManiSkill task, settings and env-step budget (issue 13).

    .venv/bin/python benchmarks/sample_factory/compare.py                 # 240k env steps, seed 0, dvla sync
    .venv/bin/python benchmarks/sample_factory/compare.py --seeds 3 --dvla-mode sync,swimlane
    .venv/bin/python benchmarks/sample_factory/compare.py --env-steps 8000 --window 4000   # a quick look

Standard library only, so any Python 3.10+ runs it; dvla's .venv is the one meant. Each system runs in its own
venv as a subprocess, one at a time (side by side they would share the cores and both measure less):

    for each seed:
      Sample Factory  benchmarks/sample_factory/.venv/bin/python sf_maniskill.py ...   (its own venv: gymnasium<1,
                      numpy<2) trains APPO until it has trained --env-steps; writes stats.jsonl (episodes,
                      training iterations, its own FPS), which this script tails for progress and reads at the end
      dvla, per mode  .venv/bin/dvla run --preset pushcube ...: writes metrics.jsonl (one row per update), which
                      this script tails; dvla stops after whole updates, so once a row reaches --env-steps this
                      script stops the run (SIGTERM: dvla stops all its processes) and cuts its rows there
    then              result.md and result.csv: per system and seed, env steps/s three ways, wall time, success
                      rate over the last --window env steps, and dvla / Sample Factory

Both sides read the same dvla preset (PushCube-v1 state obs, 2 rollout workers x 16 envs, PPO settings,
MLP 256x256); sf_maniskill.py maps it onto Sample Factory's arguments (README.md beside this file).
Run folders go to runs/sf-compare-<time>/ (logs, SF's train_dir, dvla's run folders).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SF_PYTHON = HERE / ".venv" / "bin" / "python"
SF_SCRIPT = HERE / "sf_maniskill.py"
DVLA = ROOT / ".venv" / "bin" / "dvla"
PRESET = "pushcube"
POLL_S = 0.5  # how often the run's metrics are read: dvla is stopped within this of reaching the budget
PROGRESS_S = 10.0  # how often a progress line is printed
STEADY_SKIP = 0.1  # the steady rate leaves out the first 10% of the budget: start-up, on both sides alike


@dataclass
class RunResult:
    system: str  # "sample-factory" or "dvla"
    mode: str  # SF: "appo"; dvla: pipeline.mode
    seed: int
    env_steps: int  # trained, at the budget's cut
    wall_s: float  # launch to exit of the whole command (imports, env builds, start-up and shut-down included)
    steps_per_s_own: float  # the system's own figure: SF's "FPS" (steps / main loop s), dvla's env_steps_per_s
    steps_per_s_steady: float  # one definition for both: steps / s between STEADY_SKIP of the budget and the cut
    success: float  # episodes that succeeded / episodes, over the last `window_steps` env steps
    episodes: int  # episodes in that window
    window_steps: int
    run_dir: str
    points: list = field(default_factory=list, repr=False)  # (seconds, env steps trained), for the steady rate

    @property
    def steps_per_s_wall(self) -> float:
        return self.env_steps / self.wall_s if self.wall_s > 0 else math.nan


def say(text: str) -> None:
    print(f"[compare] {text}", flush=True)


def read_jsonl(path: Path) -> list[dict]:
    """Every complete line; the half-written last line of a live run is skipped."""
    out = []
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def steady_rate(points: list[tuple[float, int]], budget: int) -> float:
    """Env steps per second from the first point past STEADY_SKIP x budget to the last point."""
    start = next((p for p in points if p[1] >= STEADY_SKIP * budget), None)
    if start is None or points[-1][0] <= start[0]:
        return math.nan
    return (points[-1][1] - start[1]) / (points[-1][0] - start[0])


class Child:
    """One system's command: its own session (so it can be stopped whole), its output in a log file."""

    def __init__(self, cmd: list[str], log_path: Path, max_s: float):
        self.log_path, self.max_s = log_path, max_s
        self._log = open(log_path, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.stopped_by_us = False

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc) -> None:
        """Whatever happened here (Ctrl-C, an error while reading its output), the command does not outlive us."""
        if self.proc.poll() is None:
            self.stop(grace_s=10)
        self._log.close()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def over_time(self) -> bool:
        return self.max_s > 0 and self.elapsed > self.max_s

    def stop(self, sig: int = signal.SIGTERM, grace_s: float = 60.0) -> None:
        """Ask the command to stop (both systems stop their workers on it); after grace_s, kill its session."""
        self.stopped_by_us = True
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                say(f"pid {self.proc.pid} still running {grace_s:.0f}s after the signal: killing its session")
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session this script started for it
                self.proc.wait()

    def finish(self) -> tuple[int, float]:
        rc = self.proc.wait()
        wall_s = self.elapsed
        try:  # a worker that outlived its parent would take cores from the next run
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session this script started for it
            say(f"killed what was left of pid {self.proc.pid}'s session after it exited")
        except ProcessLookupError:
            pass  # nothing left: the usual case
        self._log.close()
        return rc, wall_s

    def tail(self, n: int = 25) -> str:
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-n:])


def success_rate(episodes: list[tuple[int, float]], end: int, window: int) -> tuple[float, int]:
    """(env steps stamp, success) per episode -> mean success and count over stamps in (end - window, end]."""
    hits = [s for e, s in episodes if end - window < e <= end and not math.isnan(s)]
    return (sum(hits) / len(hits) if hits else math.nan), len(hits)


def run_sf(seed: int, args, cmp_dir: Path) -> RunResult:
    name = f"sf-seed{seed}"
    stats_path = cmp_dir / f"{name}.stats.jsonl"
    cmd = [str(SF_PYTHON), str(SF_SCRIPT), "--dvla_preset", PRESET, "--experiment", name,
           "--train_dir", str(cmp_dir / "sf"), "--seed", str(seed),
           # SF stops after the iteration that passes this (>, not >=): one less stops it where dvla is stopped
           "--train_for_env_steps", str(args.env_steps - 1),
           "--stats_out", str(stats_path), *args.sf_arg]  # fmt: skip
    say(f"sample-factory seed {seed}: {' '.join(cmd[1:])}")
    with Child(cmd, cmp_dir / f"{name}.log", args.max_run_s) as child:
        last_print = 0.0
        while child.proc.poll() is None:
            time.sleep(POLL_S)
            if child.over_time():
                say(f"sample-factory seed {seed}: over --max-run-s {args.max_run_s:.0f}: stopping it")
                child.stop(signal.SIGINT, grace_s=10)  # SF's runner stops its workers on Ctrl-C, unless busy
            elif child.elapsed - last_print >= PROGRESS_S:
                last_print = child.elapsed
                _sf_progress(seed, read_jsonl(stats_path), args.env_steps, child.elapsed)
        rc, wall_s = child.finish()
    records = read_jsonl(stats_path)
    done = next((r for r in records if r["kind"] == "done"), None)
    points = [(r["t"], r["env_steps"]) for r in records if r["kind"] == "train"]
    if not points or (done is None and not child.stopped_by_us):
        why = f"exit {rc}" if rc != 0 else "no training iteration recorded"
        raise RuntimeError(
            f"Sample Factory run {name} failed ({why}); its log, {child.log_path}, ends:\n{child.tail()}"
        )
    if done is None:  # stopped over --max-run-s and killed before it wrote its summary
        done = {"sf_fps": math.nan}
    # cut where dvla's rows are cut: at the first iteration that reaches the budget (async SF may train on)
    points = points[: next((i + 1 for i, p in enumerate(points) if p[1] >= args.env_steps), len(points))]
    steps = points[-1][1]
    window = min(args.window, steps)
    episodes = [(r["env_steps"], r["success"]) for r in records if r["kind"] == "episode"]
    success, n = success_rate(episodes, steps, window)
    return RunResult("sample-factory", "appo", seed, steps, wall_s, done["sf_fps"], steady_rate(points, args.env_steps),
                     success, n, window, str(cmp_dir / "sf" / name), points)  # fmt: skip


def _sf_progress(seed: int, records: list[dict], budget: int, elapsed: float) -> None:
    train = [r for r in records if r["kind"] == "train"]
    recent = [r["success"] for r in records if r["kind"] == "episode"][-100:]
    if not train:
        say(f"sample-factory seed {seed}: starting ({elapsed:.0f}s)")
        return
    rate = steady_rate([(r["t"], r["env_steps"]) for r in train], budget)
    rate_text = f"{rate:.0f} steps/s" if not math.isnan(rate) else "rate after 10% of the budget"
    success = f"success {sum(recent) / len(recent):.2f} (last {len(recent)} episodes)" if recent else "no episode yet"
    say(f"sample-factory seed {seed}: {train[-1]['env_steps']}/{budget} env steps, {rate_text}, {success}, "
        f"{elapsed:.0f}s")  # fmt: skip


def run_dvla(seed: int, mode: str, args, cmp_dir: Path) -> RunResult:
    name = f"dvla-{mode}-seed{seed}"
    out_dir = cmp_dir / "dvla"
    metrics_path = out_dir / name / "metrics.jsonl"
    # dvla ends after a number of updates, not of env steps, and an update's steps vary (episodes end on success).
    # Every update trains at least one step, so --env-steps updates always reach the budget; the run is stopped
    # at the first row that does, and its rows are cut there.
    cmd = [str(DVLA), "run", "--preset", PRESET, "--no-progress", "control.port=0", "telemetry.exporter=none",
           f"name={name}", f"out_dir={out_dir}", f"seed={seed}", f"pipeline.mode={mode}",
           f"pipeline.num_updates={args.env_steps}",
           "checkpoint.every_updates=0",  # no periodic checkpoint in the timed loop (SF's side: save_every_sec)
           *args.dvla_arg]  # fmt: skip
    say(f"dvla {mode} seed {seed}: {' '.join(cmd[1:])}")
    with Child(cmd, cmp_dir / f"{name}.log", args.max_run_s) as child:
        last_print = 0.0
        while child.proc.poll() is None:
            time.sleep(POLL_S)
            rows = read_jsonl(metrics_path)
            if rows and rows[-1]["env_steps"] >= args.env_steps:
                say(f"dvla {mode} seed {seed}: {rows[-1]['env_steps']} env steps trained at update "
                    f"{rows[-1]['update']}: stopping it")  # fmt: skip
                child.stop(signal.SIGTERM)  # `dvla run` stops every process it started on it
            elif child.over_time():
                say(f"dvla {mode} seed {seed}: over --max-run-s {args.max_run_s:.0f}: stopping it")
                child.stop(signal.SIGTERM)
            elif child.elapsed - last_print >= PROGRESS_S:
                last_print = child.elapsed
                _dvla_progress(mode, seed, rows, args.env_steps, child.elapsed)
        rc, wall_s = child.finish()
    rows = read_jsonl(metrics_path)
    if not rows or (rc != 0 and not child.stopped_by_us):
        raise RuntimeError(f"dvla run {name} failed (exit {rc}); its log, {child.log_path}, ends:\n{child.tail()}")
    rows = rows[: next((i + 1 for i, r in enumerate(rows) if r["env_steps"] >= args.env_steps), len(rows))]
    last = rows[-1]
    window = min(args.window, last["env_steps"])
    # a row's success_rate is over that update's episodes: one entry per episode weights the updates alike
    episodes, seen = [], 0
    for r in rows:
        episodes += [(r["env_steps"], r["success_rate"])] * (r["episodes"] - seen)
        seen = r["episodes"]
    success, n = success_rate(episodes, last["env_steps"], window)
    points = [(r["wall_s"], r["env_steps"]) for r in rows]
    return RunResult("dvla", mode, seed, last["env_steps"], wall_s, last["env_steps_per_s"],
                     steady_rate(points, args.env_steps), success, n, window, str(out_dir / name), points)  # fmt: skip


def _dvla_progress(mode: str, seed: int, rows: list[dict], budget: int, elapsed: float) -> None:
    if not rows:
        say(f"dvla {mode} seed {seed}: starting ({elapsed:.0f}s)")
        return
    r = rows[-1]
    say(f"dvla {mode} seed {seed}: {r['env_steps']}/{budget} env steps, {r['env_steps_per_s']:.0f} steps/s, "
        f"success {r['success_rate']:.2f} (update {r['update']}), {elapsed:.0f}s")  # fmt: skip


COLUMNS = [
    ("system", "system"),
    ("mode", "mode"),
    ("seed", "seed"),
    ("env_steps", "env steps"),
    ("wall_s", "wall (s)"),
    ("steps_per_s_wall", "env steps/s, wall"),
    ("steps_per_s_steady", "env steps/s, steady"),
    ("steps_per_s_own", "env steps/s, own report"),
    ("success", "success, last window"),
    ("episodes", "episodes in window"),
    ("window_steps", "window (env steps)"),
    ("ratio", "dvla / SF (steady)"),
]


def _ratio(r: RunResult, results: list[RunResult]) -> float:
    """dvla's steady rate over Sample Factory's with the same seed (the mean over seeds when that one is absent)."""
    sf = [x.steps_per_s_steady for x in results if x.system == "sample-factory"]
    same = [x.steps_per_s_steady for x in results if x.system == "sample-factory" and x.seed == r.seed]
    base = same or sf
    return r.steps_per_s_steady / (sum(base) / len(base)) if base else math.nan


def table_rows(results: list[RunResult]) -> list[dict]:
    out = []
    for r in results:
        row = asdict(r)
        row.pop("points")
        row["steps_per_s_wall"] = r.steps_per_s_wall
        row["ratio"] = _ratio(r, results) if r.system == "dvla" else 1.0
        out.append(row)
    return out


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"
    return str(v)


def write_results(results: list[RunResult], args, cmp_dir: Path, versions: dict) -> str:
    rows = table_rows(results)
    lines = [
        "# Sample Factory vs dvla (benchmarks/sample_factory/compare.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPU cores ({platform.machine()}), budget "
        f"{args.env_steps} env steps per run, seeds {args.seeds}, success over the last {args.window} env steps "
        f"(or the whole run if shorter). Task and settings: dvla's `{PRESET}` preset on both sides "
        "(benchmarks/sample_factory/README.md).",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + f". Runs: `{cmp_dir}`.",
        "",
        "env steps/s: *wall* = env steps / seconds from launch to exit of the whole command; *steady* = env "
        f"steps / seconds from the first report past {STEADY_SKIP:.0%} of the budget to the cut (start-up left out "
        "on both sides alike); *own report* = what each system prints (SF: steps / its main loop's seconds, "
        "start-up and its env decorrelation included; dvla: steps / seconds since the actor published v0).",
        "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(_fmt(row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    lines += ["", *summary_lines(results)]
    text = "\n".join(lines) + "\n"
    md = Path(args.result)
    md.parent.mkdir(parents=True, exist_ok=True)
    for path in (md, cmp_dir / md.name):
        path.write_text(text)
        with open(path.with_suffix(".csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k, _ in COLUMNS] + ["run_dir"], extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
    return text


def summary_lines(results: list[RunResult]) -> list[str]:
    """Mean over seeds per system and mode, and dvla / SF of the means."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.system, r.mode), []).append(r)
    mean = lambda xs: sum(xs) / len(xs) if xs else math.nan  # noqa: E731
    sf = groups.get(("sample-factory", "appo"), [])
    sf_rate = mean([r.steps_per_s_steady for r in sf])
    out = ["Means over seeds:", ""]
    for (system, mode), rs in groups.items():
        rate = mean([r.steps_per_s_steady for r in rs])
        ratio = f", {_fmt(rate / sf_rate)}x Sample Factory" if system == "dvla" and sf else ""
        out.append(
            f"- {system} ({mode}): {_fmt(rate)} env steps/s steady, {_fmt(mean([r.steps_per_s_wall for r in rs]))} "
            f"wall, {_fmt(mean([r.wall_s for r in rs]))} s, success {_fmt(mean([r.success for r in rs]))}{ratio}"
        )
    return out


def versions() -> dict:
    """What each side ran, from its own venv."""
    ask = "import importlib.metadata as m; print(m.version('{}'))"
    out = {}
    for label, py, pkg in (("sample-factory", SF_PYTHON, "sample-factory"), ("dvla", ROOT / ".venv/bin/python", "dvla"),
                           ("torch", SF_PYTHON, "torch"), ("mani_skill", SF_PYTHON, "mani_skill")):  # fmt: skip
        done = subprocess.run([str(py), "-c", ask.format(pkg)], capture_output=True, text=True)
        out[label] = done.stdout.strip() or "?"
    return out


def check_setup(need_sf: bool, need_dvla: bool) -> None:
    if need_sf and not SF_PYTHON.exists():
        raise SystemExit(
            f"Sample Factory's venv is missing ({SF_PYTHON}): run benchmarks/sample_factory/setup.sh first"
        )
    if need_sf:
        # find_spec, not import: importing ManiSkill takes seconds, the run itself does that
        find = "import importlib.util as u, sys; sys.exit(not all(map(u.find_spec, ('sample_factory', 'mani_skill'))))"
        probe = subprocess.run([str(SF_PYTHON), "-c", find], capture_output=True)
        if probe.returncode != 0:
            raise SystemExit(f"{SF_PYTHON} cannot import sample_factory and mani_skill: run "
                             "benchmarks/sample_factory/setup.sh first")  # fmt: skip
    if need_dvla and not DVLA.exists():
        raise SystemExit(f"dvla's venv is missing ({DVLA}): run scripts/setup.sh first")


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env-steps", type=int, default=240_000, help="env steps each run trains (dvla's default run)")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1, each system once per seed")
    p.add_argument("--dvla-mode", default="sync", help="comma-separated dvla pipeline modes, e.g. sync,swimlane")
    p.add_argument("--systems", default="sf,dvla", help="which to run: sf, dvla or both")
    p.add_argument("--window", type=int, default=25_000, help="success rate over the last this many env steps")
    p.add_argument("--max-run-s", type=float, default=0, help="stop a run after this many seconds (0: never)")
    p.add_argument("--sf-arg", action="append", default=[], help="extra Sample Factory argument (repeat), "
                   "e.g. --sf-arg=--rollout=32")  # fmt: skip
    p.add_argument("--dvla-arg", action="append", default=[], help="extra dvla override (repeat), e.g. "
                   "--dvla-arg=pipeline.num_shards=1")  # fmt: skip
    p.add_argument("--out-dir", default=str(ROOT / "runs"), help="folder for the sf-compare-<time> folder")
    p.add_argument("--result", default=str(HERE / "result.md"), help="where result.md goes (result.csv beside it)")
    args = p.parse_args(argv)
    systems = set(args.systems.split(","))
    if not systems or systems - {"sf", "dvla"}:
        p.error(f"--systems takes sf, dvla or sf,dvla, not {args.systems!r}")
    if args.env_steps <= 0 or args.seeds <= 0 or args.window <= 0:
        p.error("--env-steps, --seeds and --window must be > 0")
    args.systems = systems
    args.modes = [m for m in args.dvla_mode.split(",") if m]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_setup("sf" in args.systems, "dvla" in args.systems)
    cmp_dir = Path(args.out_dir) / time.strftime("sf-compare-%Y%m%d-%H%M%S")
    cmp_dir.mkdir(parents=True)
    say(f"runs in {cmp_dir}; budget {args.env_steps} env steps, seeds {args.seeds}, dvla modes {args.modes}")
    results: list[RunResult] = []
    for seed in range(args.seeds):
        if "sf" in args.systems:
            results.append(run_sf(seed, args, cmp_dir))
            say(_line(results[-1]))
        if "dvla" in args.systems:
            for mode in args.modes:
                results.append(run_dvla(seed, mode, args, cmp_dir))
                say(_line(results[-1]))
    print()
    print(write_results(results, args, cmp_dir, versions()), end="")
    say(f"wrote {args.result} and {Path(args.result).with_suffix('.csv')} (copies in {cmp_dir})")
    return 0


def _line(r: RunResult) -> str:
    return (f"{r.system} {r.mode} seed {r.seed}: {r.env_steps} env steps in {r.wall_s:.0f}s, "
            f"{_fmt(r.steps_per_s_steady)} steps/s steady, {_fmt(r.steps_per_s_own)} own report, success "
            f"{_fmt(r.success)} over the last {r.window_steps} env steps ({r.episodes} episodes)")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
