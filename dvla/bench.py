"""`dvla bench`: every pipeline mode on the same task, model and env-step budget, in one
invocation, with the RL-VLA3 columns, lane busy fractions and the slowest-stage bound.

    throughput = env steps trained / wall time of the run (v0 published -> last update)
    bound      = env steps / max(rollout-alone time, actor-alone time)
    efficiency = throughput / bound

Rollout-alone and actor-alone times are the busy times each stage reports
(rollout: stepping envs and inference; actor: training) in the lockstep `sync`
run of the same invocation, where the stages never overlap and so never slow
each other down; the bound says how fast a run could be if the two stages
overlapped perfectly. (Without a sync run, each mode's own busy times are
used.) Writes runs/bench-<time>/ with bench.md, bench.csv and bench.png.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

from dvla.config import MODES, RunConfig, load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics
from dvla.proto.v1 import common_pb2 as pb

# A model and env count where rollout and actor take roughly as long per update
# on a 2-core CPU machine (measured: rollout ~1.8 s on its core, actor ~1.6 s on
# the other), which is where overlap pays. One env shard: disaggregated, the
# rollouts have one core, and two shard processes on one core only add IPC
# (measured: rollout_async 283 env steps/s with 2 shards vs 412 with 1).
BALANCED = [
    "policy.mlp.hidden_sizes=[1024, 1024, 1024]",
    "env.num_envs=16",
    "pipeline.num_rollout_workers=1",
    "pipeline.num_updates=15",
    "pipeline.num_shards=1",
    "pipeline.max_staleness=1",
]

# With --preset: the preset's own model and envs, over fewer updates (enough for placement=auto to
# measure both core splits of a 2-core node and run on the faster: 2 warm-up + 2 windows of 4 + a settle).
PRESET_BENCH = ["pipeline.num_updates=16", "pipeline.max_staleness=1"]

COLUMNS = [
    ("mode", "mode", "{}"),
    ("placement", "placement", "{}"),
    ("throughput", "env steps/s", "{:.0f}"),
    ("step_time_s", "step time (s)", "{:.2f}"),
    ("rollout_time_s", "rollout time (s)", "{:.2f}"),
    ("actor_time_s", "actor time (s)", "{:.2f}"),
    ("busy_sampling", "sampling busy", "{:.2f}"),
    ("busy_training", "training busy", "{:.2f}"),
    ("busy_weights_in", "weight-recv busy", "{:.2f}"),
    ("busy_publish", "publish busy", "{:.2f}"),
    ("staleness_mean", "staleness mean", "{:.2f}"),
    ("staleness_max", "staleness max", "{:.0f}"),
    ("episodes_dropped", "dropped", "{:.0f}"),
    ("swap_p99_ms", "swap p99 (ms)", "{:.3f}"),
    ("bound", "bound (steps/s)", "{:.0f}"),
    ("efficiency", "efficiency", "{:.2f}"),
    ("speedup", "x sync", "{:.2f}"),
]


def measure(cfg: RunConfig, run_dir: Path) -> dict:
    """Run one mode to completion and turn what its workers report into one table row."""
    launcher = Launcher(cfg, run_dir, progress=False)
    try:
        address = launcher.start()
        rc = launcher.wait()
        if rc != 0:
            raise RuntimeError(f"mode {cfg.pipeline.mode} failed (exit {rc}); logs in {run_dir / 'logs'}")
        from dvla.rpc.client import ControlClient

        client = ControlClient(address, cfg.control)
        status = client.status()
        client.close()
    finally:
        launcher.stop_all()
    rows = read_metrics(run_dir / "metrics.jsonl")
    actor = next(w.stats for w in status.workers if w.role == pb.ACTOR and w.rank == 0)
    actors = [w.stats for w in status.workers if w.role == pb.ACTOR]  # an actor group: its slowest rank
    rollouts = [w.stats for w in status.workers if w.role == pb.ROLLOUT]
    updates, steps = len(rows), rows[-1]["env_steps"]
    wall = rows[-1]["wall_s"]
    rollout_alone = max(r.busy_s for r in rollouts)
    actor_alone = max(a.busy_s for a in actors)
    throughput = steps / wall
    return {
        "mode": cfg.pipeline.mode,
        "placement": placement_used(cfg, run_dir),
        "throughput": throughput,
        "step_time_s": wall / updates,
        "rollout_time_s": rollout_alone / updates,
        "actor_time_s": actor_alone / updates,
        "busy_sampling": sum(r.busy_s / max(r.loop_s, 1e-9) for r in rollouts) / len(rollouts),
        "busy_training": actor.busy_s / max(actor.loop_s, 1e-9),
        "busy_weights_in": sum(r.weights_s / max(r.loop_s, 1e-9) for r in rollouts) / len(rollouts),
        "busy_publish": actor.weights_s / max(actor.loop_s, 1e-9),
        "staleness_mean": sum(r["staleness_mean"] for r in rows) / updates,
        "staleness_max": max(r["staleness_max"] for r in rows),
        "episodes_dropped": status.totals.episodes_dropped,
        "swap_p99_ms": max(r.swap_pause_p99_ms for r in rollouts),
        "env_steps": steps,
        "updates": updates,
        "wall_s": wall,
    }


def placement_used(cfg: RunConfig, run_dir: Path) -> str:
    """The placement a run ended on: 'auto: X' where it was measured (X the last decision), else the static one."""
    from dvla.launch import PLACEMENT_LOG

    log = run_dir / PLACEMENT_LOG
    if not log.exists():
        return cfg.pipeline.placement_in_force
    last = json.loads(log.read_text().splitlines()[-1])
    return f"auto: {last['placement']}"


def add_bound(rows: list[dict]) -> None:
    """Slowest-stage bound and efficiency, from the sync run's stage times when there is one."""
    ref = next((r for r in rows if r["mode"] == "sync"), None)
    for r in rows:
        src = ref or r
        per_update = max(src["rollout_time_s"], src["actor_time_s"], 1e-9)
        r["bound"] = (r["env_steps"] / r["updates"]) / per_update
        r["efficiency"] = r["throughput"] / r["bound"]


def combine(rounds: list[list[dict]]) -> list[dict]:
    """Rounds of the same modes in the same order (bench --repeat) -> one row per mode: its median run (by
    throughput), with 'speedup' the median of its ratios to the sync run of the same round and
    'speedup_runs' every such ratio. A ratio within a round is what to trust on a machine whose speed drifts
    by a fifth from one minute to the next (measured here): both runs of it met the same drift."""
    rows = []
    sync_first = rounds[0][0]["mode"] == "sync"
    for i in range(len(rounds[0])):
        runs = sorted((r[i] for r in rounds), key=lambda r: r["throughput"])
        row = dict(runs[(len(runs) - 1) // 2])  # (of an even number, the lower of the middle two)
        if sync_first:
            ratios = [r[i]["throughput"] / r[0]["throughput"] for r in rounds]
            row["speedup"] = statistics.median(ratios)
            row["speedup_runs"] = " / ".join(f"{x:.2f}" for x in ratios)
        rows.append(row)
    return rows


def write_outputs(rows: list[dict], out: Path, note: str) -> None:
    add_bound(rows)
    base = rows[0]["throughput"] if rows and rows[0]["mode"] == "sync" else None
    for r in rows:
        if "speedup_runs" not in r:  # (a repeated bench set it from ratios within each round)
            r["speedup"] = r["throughput"] / base if base else float("nan")
    with open(out / "bench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    columns = COLUMNS + ([("speedup_runs", "x sync, each round", "{}")] if "speedup_runs" in rows[0] else [])
    head = "| " + " | ".join(title for _, title, _ in columns) + " |"
    sep = "|" + "---|" * len(columns)
    lines = [head, sep] + ["| " + " | ".join(fmt.format(r[key]) for key, _, fmt in columns) + " |" for r in rows]
    ceiling = ""
    if base:
        sync = rows[0]
        ceiling = (
            f"\nThe most any mode could gain over sync here: bound / sync throughput = "
            f"{sync['bound'] / sync['throughput']:.2f}x (perfect overlap of the stages as measured alone, "
            f"with no slow-down from sharing the machine).\n"
        )
    (out / "bench.md").write_text(f"{note}\n\n" + "\n".join(lines) + "\n" + ceiling)
    plot(rows, out / "bench.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [r["mode"] for r in rows]
    x = range(len(rows))
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.2), constrained_layout=True)
    a.bar(x, [r["throughput"] for r in rows], color="tab:blue", label="measured")
    a.scatter(x, [r["bound"] for r in rows], color="black", marker="_", s=600, label="slowest-stage bound")
    for i, r in enumerate(rows):
        a.text(i, r["throughput"], f"{r['efficiency']:.2f}", ha="center", va="bottom", fontsize=8)
    a.set_xticks(list(x), modes, rotation=20)
    a.set_ylabel("env steps / s")
    a.set_title("throughput (label: efficiency = measured / bound)")
    a.legend(fontsize=8)
    width = 0.2
    for j, (key, label) in enumerate(
        [
            ("busy_sampling", "sampling"),
            ("busy_training", "training"),
            ("busy_weights_in", "weight receiving"),
            ("busy_publish", "publishing"),
        ]
    ):
        b.bar([i + (j - 1.5) * width for i in x], [r[key] for r in rows], width, label=label)
    b.set_xticks(list(x), modes, rotation=20)
    b.set_ylim(0, 1.05)
    b.set_ylabel("busy fraction of the run")
    b.set_title("lane busy fractions")
    b.legend(fontsize=8, ncol=2)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def measure_publish_overhead(cfg: RunConfig, updates: int = 6, sink=None) -> dict:
    """Actor update time with a background publish of every version vs with none, side by side.

    Same learner, same synthetic global batch; the publish lane, on its own thread as in
    swimlane, packs, checksums and stores version k while update k+1 runs: in an in-process
    weight store (dvla/inproc.py: the same lane as over gRPC, without the sockets), or in
    `sink` (a ControlClient registered as the actor: a real weight_control).
    """
    import torch

    from dvla.algo.learner import Learner, Samples
    from dvla.inproc import LocalWeights
    from dvla.lanes.publish import OffThread, PublishLane
    from dvla.policy import build_policy
    from dvla.types import EnvSpec

    rgb = cfg.env.obs_mode == "rgb"
    d, a = (29, 4) if rgb else (43, 8)  # PickCube with ee control / PushCube with joint control
    image_shape = (cfg.env.image_size, cfg.env.image_size, 3) if rgb else ()
    spec = EnvSpec(cfg.env.task, d, a, (-1.0,) * a, (1.0,) * a, cfg.env.max_episode_steps, image_shape, "bench")
    torch.manual_seed(0)
    policy = build_policy(cfg.policy, spec)
    learner = Learner(policy, cfg.algo, torch.device("cpu"))
    decisions = -(-cfg.env.max_episode_steps // policy.chunk_size)
    n = cfg.env.num_envs * decisions * cfg.pipeline.num_rollout_workers
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(n, d, generator=g)
    images = torch.randint(0, 256, (n, spec.image_size), generator=g, dtype=torch.uint8)
    actions = policy.act(obs, images, generator=g).actions  # valid samples for any head
    s = Samples(
        obs, images, actions, torch.zeros(n), torch.ones(n), torch.randn(n, generator=g), torch.randn(n, generator=g)
    )
    nbytes = sum(t.numel() * t.element_size() for t in policy.export_weights().values())
    lane = PublishLane(sink if sink is not None else LocalWeights(keep=cfg.control.keep_versions), "bench")
    publisher = OffThread(lane.submit)
    times = {"off": [], "on": []}
    version = 1_000_000 if sink is not None else 0  # after whatever the sink holds
    for _ in range(updates):  # interleaved, so drift in machine speed hits both alike
        for mode in ("off", "on"):
            t = time.perf_counter()
            learner.update(s)
            times[mode].append(time.perf_counter() - t)
            if mode == "on":
                publisher.submit(version, policy.export_weights())
                version += 1
    publisher.flush()
    off, on = sorted(times["off"])[updates // 2], sorted(times["on"])[updates // 2]  # medians
    return {
        "update_s_publish_off": off,
        "update_s_publish_on": on,
        "ratio": on / off,
        "version_mb": nbytes / 2**20,
        "publish_s": sum(lane.publish_s) / max(len(lane.publish_s), 1),
    }


def bench_config(overrides: list[str], preset: str | None) -> tuple[RunConfig, str]:
    """The config every bench starts from, and why: the balanced MLP default, or a preset over fewer updates."""
    if preset is None:
        why = "chosen so rollout and actor times per update are about equal on a 2-core CPU machine"
        return load_config(None, [*BALANCED, *overrides]), why
    return load_config(None, [*PRESET_BENCH, *overrides], preset), f"the preset '{preset}' with a shorter run"


def run_bench(
    modes: list[str],
    overrides: list[str],
    out_root: Path = Path("runs"),
    publish_check: bool = True,
    preset: str | None = None,
    repeat: int = 1,
) -> Path:
    """Every mode in `modes`, one after another, `repeat` rounds of them (each row then the median run)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    if repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {repeat}")
    base, why = bench_config(overrides, preset)
    model = base.policy.summary()
    if base.env.obs_mode == "rgb":
        model += f", {base.env.image_size}x{base.env.image_size} RGB"
    out = out_root / time.strftime("bench-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    note = (
        f"dvla bench on {base.env.task}: policy {model}, "
        f"{base.pipeline.num_rollout_workers} rollout worker(s) x {base.env.num_envs} envs, "
        f"{base.pipeline.num_updates} updates per mode, eta={base.pipeline.max_staleness}; {why}."
    )
    if repeat > 1:
        note += f" {repeat} rounds of the modes; each row is a mode's median run, x sync the median of its ratios."
    print(note, flush=True)
    rounds = []
    for k in range(repeat):
        runs = []
        for mode in modes:
            cfg = replace(base, name=mode, pipeline=replace(base.pipeline, mode=mode)).validate()
            t = time.monotonic()
            row = measure(cfg, out / (mode if repeat == 1 else f"{mode}-{k + 1}"))
            row["round"] = k + 1
            runs.append(row)
            print(
                f"  {mode:14s} {row['throughput']:7.0f} env steps/s  rollout {row['rollout_time_s']:.2f}s  "
                f"actor {row['actor_time_s']:.2f}s busy per update  ({time.monotonic() - t:.0f}s)"
                + (f"  round {k + 1} of {repeat}" if repeat > 1 else ""),
                flush=True,
            )
        rounds.append(runs)
    if repeat > 1:  # every run, beside the table's median ones
        with open(out / "bench-runs.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rounds[0][0]))
            w.writeheader()
            w.writerows(r for runs in rounds for r in runs)
    write_outputs(combine(rounds) if repeat > 1 else rounds[0], out, note)
    if publish_check:
        p = measure_publish_overhead(base)
        text = (
            f"\nPublish stall: actor update {p['update_s_publish_off']:.3f}s with no publishing vs "
            f"{p['update_s_publish_on']:.3f}s while each {p['version_mb']:.1f} MiB version streams out on the "
            f"publish lane ({p['publish_s']:.2f}s per publish): ratio {p['ratio']:.3f} (medians).\n"
        )
        with open(out / "bench.md", "a") as f:
            f.write(text)
    print(f"\n{(out / 'bench.md').read_text()}\nwritten: {out}/bench.md, bench.csv, bench.png")
    return out
