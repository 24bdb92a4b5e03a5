"""`dvla bench --scaling [--workers 1,2,3,4]`: dvla measured with 1 to 4 rollouts here, the scaling model
(dvla/scaling.py) calibrated on the smallest run and checked against the others, then its predictions
for 8 to 256 rollouts and 1 to 8 actor ranks.

Every run is swimlane mode, one actor rank, `pipeline.placement=disaggregated` (the actor on a core of
its own, the rollouts sharing the others: the model's layout, where actor ranks have their own
devices) and the same envs per rollout, so the global batch grows with the rollouts. That is what
adding rollouts means at scale (each update trains one round of every env, README: rescale) and
what the model's grid varies; splitting a fixed number of envs over more rollouts would instead
shrink each round, a question of placement rather than of scale.

Calibration (the run with the fewest rollouts): a round's time from its `sampling.round` spans,
env steps per round and the actor's seconds per env step from metrics.jsonl, the weight plane from
the `publish.version`, `weights.fetch` and `weights.load_shadow` spans (so the runs export spans as
JSON whatever the overrides say), the data plane's bytes from the wire layout of a round, and the
gradient bytes from the policy's trainable parameters (one env is built here for the env's sizes).
The other runs are predicted from that alone (proportional core sharing, actor time in proportion
to the batch). Then two numbers are fitted on all runs, reported beside the predictions, and used
for the grid: how much rollouts' work a core does where more rollouts than cores share it (share
efficiency), and the actor's time per update as a fixed part plus a part per env step of the batch
(least squares over the runs' batch sizes). Writes runs/bench-scaling-<time>/ with scaling.md,
scaling.csv and scaling.png.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
import time
from collections import defaultdict
from dataclasses import fields, replace
from pathlib import Path

from dvla.bench import bench_config, measure
from dvla.config import RunConfig
from dvla.metrics import read_metrics
from dvla.placement import plan
from dvla.scaling import Calibration, Cluster, Prediction, assumptions, grid, simulate
from dvla.tracechart import load_spans

SPANS = ["telemetry.exporter=json", "telemetry.json_dir="]  # the calibration reads each run's spans
GRID_UPDATES = 40  # updates the grid simulates: past the start-up, for the steady throughput


def run_scaling_bench(
    workers: list[int], overrides: list[str], out_root: Path = Path("runs"), preset: str | None = None
) -> Path:
    workers = sorted(set(workers))
    if not workers or workers[0] < 1:
        raise ValueError(f"bench workers must be numbers of rollouts >= 1, got {workers}")
    base, _ = bench_config([*overrides, *SPANS], preset)
    base = replace(base, pipeline=replace(base.pipeline, mode="swimlane", placement="disaggregated", num_actors=1))
    cores = sorted(os.sched_getaffinity(0))
    rollout_cores = len(plan("disaggregated", 1, 1, cores, 0).rollouts[0].cores or cores)
    out = out_root / time.strftime("bench-scaling-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    note = (
        f"dvla bench --scaling on {base.env.task}: policy {base.policy.summary()}, swimlane, 1 actor rank, "
        f"{base.env.num_envs} envs per rollout, {base.pipeline.num_updates} updates per run, "
        f"eta={base.pipeline.max_staleness}; {len(cores)} CPU core(s): the actor on its own, the rollouts "
        f"on {rollout_cores}."
    )
    print(note, flush=True)
    runs = []
    for m in workers:
        cfg = replace(base, name=f"workers-{m}", pipeline=replace(base.pipeline, num_rollout_workers=m)).validate()
        print(f"  {m} rollout(s): running ...", flush=True)
        t = time.monotonic()
        row = measure(cfg, out / cfg.name)
        row |= observed(out / cfg.name, row["updates"]) | {"workers": m}
        runs.append(row)
        print(f"  {m} rollout(s): {row['throughput']:.0f} env steps/s ({row['steady_throughput']:.0f} in the second "
              f"half), round {row['round_s']:.2f} s, actor {row['train_s']:.2f} s per update, delivery "
              f"{row['delivery_mean_s']:.3f} s ({time.monotonic() - t:.0f} s)", flush=True)  # fmt: skip
    print("  calibrating on the first run, then simulating ...", flush=True)
    cal = calibrate(runs[0], base, rollout_cores)
    eta = base.pipeline.max_staleness_in_force
    local = [predict_local(cal, rollout_cores, r["workers"], eta, r["updates"]) for r in runs]
    fixed_s, per_step_s = fit_actor(runs)
    fitted = replace(cal, share_efficiency=share_efficiency(cal, rollout_cores, runs), actor_fixed_s=fixed_s,
                     actor_s_per_env_step=per_step_s).validate()  # fmt: skip
    counts = range(1, workers[-1] + 1)
    line = [predict_local(cal, rollout_cores, m, eta, runs[0]["updates"]) for m in counts]
    line_fitted = [predict_local(fitted, rollout_cores, m, eta, runs[0]["updates"]) for m in counts]
    local_fitted = [predict_local(fitted, rollout_cores, r["workers"], eta, r["updates"]) for r in runs]
    cluster = Cluster()
    t = time.perf_counter()
    cached = grid(fitted, cluster, max_staleness=eta, num_updates=GRID_UPDATES)
    direct = grid(fitted, replace(cluster, node_cache=False), max_staleness=eta, num_updates=GRID_UPDATES)
    print(f"  the grid: {len(cached) + len(direct)} configurations in {time.perf_counter() - t:.2f} s", flush=True)
    text = report(note, cal, fitted, cluster, runs, local, rollout_cores, cached, direct, local_fitted)
    (out / "scaling.md").write_text(text)
    write_csv(out / "scaling.csv", runs, local, cached + direct)
    plot(out / "scaling.png", runs, line, cached, direct, line_fitted)
    print(f"\n{text}\nwritten: {out}/scaling.md, scaling.csv, scaling.png")
    return out


# ------------------------------------------------------------------ what a run measured
def observed(run_dir: Path, updates: int) -> dict:
    """Stage and weight-plane times from a run's spans and metrics (medians, robust to the start-up)."""
    by_name: dict[str, list[dict]] = defaultdict(list)
    for s in load_spans(run_dir / "traces"):
        by_name[s["name"]].append(s)
    missing = [n for n in ("sampling.round", "publish.version", "weights.fetch", "weights.load_shadow")
               if not by_name[n]]  # fmt: skip
    if missing:
        raise RuntimeError(f"{run_dir}: no {', '.join(missing)} spans in traces/ (telemetry.exporter=json?)")
    rows = read_metrics(run_dir / "metrics.jsonl")
    publish = {int(s["attributes"]["version"]): s for s in by_name["publish.version"]}
    later = [v for v in publish if v >= 1] or list(publish)  # v0 is whole, later ones may be partial
    loaded: dict[int, dict[int, int]] = defaultdict(dict)  # version -> rollout pid -> end (ns)
    for s in by_name["weights.load_shadow"]:
        loaded[int(s["attributes"]["version"])][s["pid"]] = s["end_ns"]
    first_fetch: dict[int, int] = {}
    for s in by_name["weights.fetch"]:
        v = int(s["attributes"].get("version", -1))
        first_fetch[v] = min(first_fetch.get(v, s["start_ns"]), s["start_ns"])
    rollouts = {s["pid"] for s in by_name["weights.load_shadow"]}
    # delivery: handed to the publish lane -> the last rollout holds it, for every version all of them loaded
    delivery = [(max(loaded[v].values()) - publish[v]["start_ns"]) / 1e9
                for v in range(1, updates) if v in publish and len(loaded[v]) == len(rollouts)]  # fmt: skip
    announce = [max(0, first_fetch[v] - publish[v]["end_ns"]) / 1e9 for v in later if v in first_fetch]
    half = len(rows) // 2
    steady = rows[-1]["env_steps"] / rows[-1]["wall_s"]
    if half:
        steady = (rows[-1]["env_steps"] - rows[half - 1]["env_steps"]) / (rows[-1]["wall_s"] - rows[half - 1]["wall_s"])
    return {
        "round_s": _median_s(by_name["sampling.round"]),
        "train_s": statistics.median(r["time/train_s"] for r in rows),
        "env_steps_per_update": rows[-1]["env_steps"] / len(rows),
        "steady_throughput": steady,
        "publish_s": _median_s([publish[v] for v in later]),
        "version_bytes": statistics.median(publish[v]["attributes"].get("bytes", 0) for v in later),
        "fetch_s": _median_s(by_name["weights.fetch"]),
        "load_s": _median_s(by_name["weights.load_shadow"]),
        "announce_s": statistics.median(announce) if announce else 0.0,
        "delivery_mean_s": sum(delivery) / len(delivery) if delivery else math.nan,
        "delivery_max_s": max(delivery) if delivery else math.nan,
    }


def _median_s(spans: list[dict]) -> float:
    return statistics.median(s["end_ns"] - s["start_ns"] for s in spans) / 1e9


def wire_sizes(cfg: RunConfig) -> tuple[int, int]:
    """(data-plane bytes of one rollout's round, trainable parameter bytes in float32): one env and the
    policy built here for their sizes."""
    from dvla.dataplane.wire import payload_nbytes
    from dvla.envs.maniskill import make_env_batch
    from dvla.policy import build_policy

    envs = make_env_batch(replace(cfg.env, num_envs=1))
    spec = envs.spec
    envs.close()
    policy = build_policy(cfg.policy, spec)
    p = cfg.pipeline
    shards = p.num_shards if p.sharded and p.num_shards > 0 else 1  # each shard sends its own rounds
    decisions = -(-spec.max_episode_steps // policy.chunk_size)  # padded to the longest episode
    per_shard = payload_nbytes(cfg.env.num_envs // shards, decisions, spec.obs_dim, policy.sample_dim, spec.image_size)
    grad_bytes = sum(4 * t.numel() for t in policy.parameters() if t.requires_grad)
    return shards * per_shard, grad_bytes


# ------------------------------------------------------------------ the model on what was measured
def calibrate(run: dict, cfg: RunConfig, rollout_cores: int) -> Calibration:
    """The model's inputs from the run with the fewest rollouts (its round scaled back to a core of its
    own if its rollouts shared one: proportionally)."""
    m = run["workers"]
    steps_per_round = run["env_steps_per_update"] / m
    round_bytes, grad_bytes = wire_sizes(cfg)
    return Calibration(
        round_s=run["round_s"] / max(1.0, m / rollout_cores),
        env_steps_per_round=steps_per_round,
        actor_s_per_env_step=run["train_s"] / run["env_steps_per_update"],
        optimizer_steps_per_update=cfg.algo.update_epochs * cfg.algo.num_minibatches,
        version_bytes=run["version_bytes"],
        grad_bytes=grad_bytes,
        trajectory_bytes_per_step=round_bytes / steps_per_round,
        publish_s=run["publish_s"],
        fetch_s=run["fetch_s"],
        load_s=run["load_s"],
        announce_s=run["announce_s"],
    ).validate()


def local_cluster(cal: Calibration, rollout_cores: int, workers: int) -> Cluster:
    """This machine as the model sees it: one node, the rollouts on their cores, every link the loopback
    at the speed one fetch measured, no node cache (control.node_cache=auto is off on one host)."""
    link = cal.version_bytes / cal.fetch_s
    return Cluster(cores_per_node=rollout_cores, rollouts_per_node=workers, nic_bytes_per_s=link,
                   server_egress_bytes_per_s=link, node_cache=False, allreduce_bytes_per_s=link)  # fmt: skip


def predict_local(cal: Calibration, rollout_cores: int, workers: int, eta: int, updates: int) -> Prediction:
    return simulate(cal, local_cluster(cal, rollout_cores, workers), workers, 1, eta, updates)


def share_efficiency(cal: Calibration, rollout_cores: int, runs: list[dict]) -> float:
    """Rollouts' work a crowded core does: a round's time with w rollouts on c < w cores under proportional
    sharing (round_s x w / c) over the time measured; the mean over the runs that crowd their cores (1.0:
    none does)."""
    ratios = [cal.round_s * r["workers"] / rollout_cores / r["round_s"] for r in runs if r["workers"] > rollout_cores]
    return sum(ratios) / len(ratios) if ratios else 1.0


def fit_actor(runs: list[dict]) -> tuple[float, float]:
    """(seconds per update whatever the batch, seconds per env step of it): least squares of the runs'
    median train time over their batch sizes; through the origin where the batches do not differ or the
    fit says a negative fixed part."""
    xs, ys = [r["env_steps_per_update"] for r in runs], [r["train_s"] for r in runs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx > 0:
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
        if slope > 0 and my - slope * mx >= 0:
            return my - slope * mx, slope
    return 0.0, sum(ys) / sum(xs)


# ------------------------------------------------------------------ outputs
def _err(predicted: float, measured: float) -> str:
    if not measured or math.isnan(measured):
        return "-"
    return f"{100 * (predicted - measured) / measured:+.0f}%"


def report(
    note: str,
    cal: Calibration,
    fitted: Calibration,
    cluster: Cluster,
    runs: list[dict],
    local: list[Prediction],
    rollout_cores: int,
    cached: list[Prediction],
    direct: list[Prediction],
    local_fitted: list[Prediction],
) -> str:
    lines = [f"# dvla bench --scaling\n\n{note}\n", f"## Calibration (the {runs[0]['workers']}-rollout run)\n"]
    lines += [f"- {f.name}: {getattr(cal, f.name):.6g}" for f in fields(cal)]
    lines += [
        "\n## Measured here vs predicted (calibrated on the first run; proportional core sharing)\n",
        "| rollouts | env steps/s measured | predicted | error | second half measured | predicted | error | "
        "round s measured | predicted | actor s/update measured | predicted | delivery s measured | predicted | "
        "staleness measured | predicted | bound |",
        "|" + "---|" * 16,
    ]
    for r, p in zip(runs, local):
        lines.append(
            f"| {r['workers']} | {r['throughput']:.0f} | {p.throughput:.0f} | {_err(p.throughput, r['throughput'])} "
            f"| {r['steady_throughput']:.0f} | {p.steady_throughput:.0f} | "
            f"{_err(p.steady_throughput, r['steady_throughput'])} | {r['round_s']:.2f} | {p.round_s:.2f} | "
            f"{r['train_s']:.2f} | {p.actor_s:.2f} | {r['delivery_mean_s']:.3f} | {p.delivery_mean_s:.3f} | "
            f"{r['staleness_mean']:.2f} | {p.staleness_mean:.2f} | {p.bound.value} |"
        )
    lines.append(
        f"\nFitted on all {len(runs)} run(s), for the grid: share efficiency {fitted.share_efficiency:.2f} (rollouts' "
        f"work a crowded core does, from the runs with more rollouts than the {rollout_cores} rollout core(s)); "
        f"actor time per update {fitted.actor_fixed_s:.3f} s + {fitted.actor_s_per_env_step * 1e3:.3f} ms per env "
        f"step of the batch (least squares over the runs' batches).\n"
    )
    lines += [
        "With the fitted numbers (fitted on these runs, so this checks the model's form, not its prediction):\n",
        "| rollouts | env steps/s measured | predicted | error | round s measured | predicted |",
        "|" + "---|" * 6,
    ]
    lines += [
        f"| {r['workers']} | {r['throughput']:.0f} | {p.throughput:.0f} | {_err(p.throughput, r['throughput'])} | "
        f"{r['round_s']:.2f} | {p.round_s:.2f} |"
        for r, p in zip(runs, local_fitted)
    ]
    lines.append("")
    lines += ["## Predicted at scale\n", "Assumptions:\n"] + [f"- {a}" for a in assumptions(fitted, cluster)]
    lines += [
        f"- swimlane, eta={cached[0].max_staleness}, {GRID_UPDATES} updates simulated; env steps/s over the second "
        "half; delivery over versions 1..U-1; 'x K=1' is against one actor rank with as many rollouts\n",
        "| rollouts | actors | env steps/s | x K=1 | bound | round s | actor s/update | delivery s, node cache "
        "(mean / max) | delivery s, no cache (mean / max) | staleness mean |",
        "|" + "---|" * 10,
    ]
    one = {p.workers: p.steady_throughput for p in cached if p.actors == 1}
    for p, q in zip(cached, direct):
        lines.append(
            f"| {p.workers} | {p.actors} | {p.steady_throughput:.0f} | {p.steady_throughput / one[p.workers]:.2f} "
            f"| {p.bound.value} | {p.round_s:.2f} | {p.actor_s:.2f} | {p.delivery_mean_s:.3f} / "
            f"{p.delivery_max_s:.3f} | {q.delivery_mean_s:.3f} / {q.delivery_max_s:.3f} | {p.staleness_mean:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_csv(path: Path, runs: list[dict], local: list[Prediction], predicted: list[Prediction]) -> None:
    """One row per measured run (kind 'measured', with the model's 'predicted_*' beside it), then one per
    grid configuration (kind 'grid')."""
    rows = [{"kind": "measured", **r} | {f"predicted_{k}": v for k, v in p.as_row().items()}
            for r, p in zip(runs, local)]  # fmt: skip
    rows += [{"kind": "grid", **p.as_row()} for p in predicted]
    names = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names, restval="")
        w.writeheader()
        w.writerows(rows)


def plot(
    path: Path,
    runs: list[dict],
    line: list[Prediction],
    cached: list[Prediction],
    direct: list[Prediction],
    line_fitted: list[Prediction],
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.4), constrained_layout=True)
    xs = [p.workers for p in line]
    a.plot(xs, [p.throughput for p in line], color="tab:blue", label="model: whole run")
    a.plot(xs, [p.steady_throughput for p in line], color="tab:orange", label="model: second half")
    a.plot(xs, [p.throughput for p in line_fitted], "--", color="tab:blue", label="model, share fitted: whole run")
    a.scatter([r["workers"] for r in runs], [r["throughput"] for r in runs], color="tab:blue", zorder=3,
              label="measured: whole run")  # fmt: skip
    a.scatter([r["workers"] for r in runs], [r["steady_throughput"] for r in runs], color="tab:orange",
              marker="s", zorder=3, label="measured: second half")  # fmt: skip
    a.set_xticks(xs)
    a.set_ylim(bottom=0)
    a.set_xlabel("rollouts (this machine)")
    a.set_ylabel("env steps / s")
    a.set_title("measured vs the model")
    a.legend(fontsize=8)
    for k in sorted({p.actors for p in cached}):
        ps = [p for p in cached if p.actors == k]
        b.plot([p.workers for p in ps], [p.steady_throughput for p in ps], marker="o", label=f"{k} actor rank(s)")
    _loglog(b, "env steps / s (predicted)", "throughput at scale (node cache on)")
    for ps, label, style in ((cached, "node cache", "-"), (direct, "no node cache", "--")):
        ones = [p for p in ps if p.actors == 1]
        c.plot([p.workers for p in ones], [p.delivery_mean_s for p in ones], style, marker="o", label=label)
    _loglog(c, "seconds, publish -> last rollout holds it", "weight delivery (1 actor rank, mean over versions)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loglog(ax, ylabel: str, title: str) -> None:
    """An axis of predictions over rollouts 8..256: both scales logarithmic."""
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("rollouts")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
