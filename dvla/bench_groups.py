"""`dvla bench --actors 1,2 --ratios 1:1,2:1,3:1`: actor groups and rollout:actor ratios side by side.

Every layout runs the same mode on the same global batch (the same envs in all, split over the
rollouts) and the same number of updates, so the rows differ only in how many processes share the
work and where they sit: K actor ranks and M = K * R / A rollouts, the node's devices split R:A
between them (pipeline.placement). Writes runs/bench-groups-<time>/ with groups.md, groups.csv and
groups.png.
"""

from __future__ import annotations

import csv
import os
import time
from dataclasses import replace
from pathlib import Path

from dvla.bench import BALANCED, measure
from dvla.config import RunConfig, load_config
from dvla.placement import check_mode
from dvla.placement import ratio as parse_ratio

COLUMNS = [
    ("layout", "layout", "{}"),
    ("throughput", "env steps/s", "{:.0f}"),
    ("step_time_s", "step time (s)", "{:.2f}"),
    ("rollout_time_s", "rollout busy / update (s)", "{:.2f}"),
    ("actor_time_s", "actor busy / update (s)", "{:.2f}"),
    ("busy_sampling", "sampling busy", "{:.2f}"),
    ("busy_training", "training busy", "{:.2f}"),
    ("episodes_dropped", "dropped", "{:.0f}"),
    ("relative", "x first", "{:.2f}"),
]


def layouts(actors: list[int], ratios: list[str], total_envs: int) -> list[tuple[int, str, int]]:
    """(K, ratio, M) for every K and R:A whose M = K * R / A rollouts is whole and splits total_envs."""
    out = []
    for ratio in ratios:
        why = check_mode(ratio)
        if why is not None or ratio in ("colocated", "disaggregated", "auto"):
            raise ValueError(f"bench ratio {ratio!r}: {why or 'give a rollout:actor ratio such as 3:1'}")
    for k in actors:
        if k < 1:
            raise ValueError(f"bench actors: {k} is not a number of actor ranks")
        for ratio in ratios:
            r, a = parse_ratio(ratio)
            if (k * r) % a or k * r < a or total_envs % (k * r // a):
                print(f"  skipping K={k} at {ratio}: {k * r / a:g} rollouts do not split {total_envs} envs")
                continue
            out.append((k, ratio, k * r // a))
    if not out:
        raise ValueError(f"no layout of actors {actors} and ratios {ratios} splits {total_envs} envs")
    return out


def run_group_bench(
    actors: list[int], ratios: list[str], overrides: list[str], out_root: Path = Path("runs"), mode: str = "swimlane"
) -> Path:
    base = load_config(None, [*BALANCED, "env.num_envs=24", "pipeline.num_updates=12", *overrides])
    total = base.env.num_envs * base.pipeline.num_rollout_workers
    plan = layouts(actors, ratios, total)
    out = out_root / time.strftime("bench-groups-%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    cores = len(os.sched_getaffinity(0))
    note = (
        f"dvla bench of actor groups on {base.env.task}: {mode} mode, policy {base.policy.summary()}, "
        f"{total} envs per update split over the rollouts, {base.pipeline.num_updates} updates per layout, "
        f"actor strategy {base.actor.strategy}; {cores} CPU core(s), split by each ratio."
    )
    print(note, flush=True)
    rows = []
    for k, ratio, m in plan:
        cfg = layout_config(base, mode, k, ratio, m, total)
        t = time.monotonic()
        row = measure(cfg, out / cfg.name) | {"layout": f"K={k}, {ratio} (M={m})", "actors": k, "rollouts": m}
        rows.append(row)
        print(f"  {row['layout']:18s} {row['throughput']:7.0f} env steps/s ({time.monotonic() - t:.0f}s)", flush=True)
    write(rows, out, note)
    print(f"\n{(out / 'groups.md').read_text()}\nwritten: {out}/groups.md, groups.csv, groups.png")
    return out


def layout_config(base: RunConfig, mode: str, k: int, ratio: str, m: int, total: int) -> RunConfig:
    name = f"k{k}-{ratio.replace(':', 'to')}"
    p = replace(base.pipeline, mode=mode, num_actors=k, num_rollout_workers=m, placement=ratio)
    return replace(base, name=name, env=replace(base.env, num_envs=total // m), pipeline=p).validate()


def write(rows: list[dict], out: Path, note: str) -> None:
    for r in rows:
        r["relative"] = r["throughput"] / rows[0]["throughput"]
    with open(out / "groups.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| " + " | ".join(t for _, t, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt.format(r[key]) for key, _, fmt in COLUMNS) + " |" for r in rows]
    (out / "groups.md").write_text(f"{note}\n\n" + "\n".join(lines) + "\n")
    plot(rows, out / "groups.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = range(len(rows))
    labels = [r["layout"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), constrained_layout=True)
    colors = ["tab:blue" if r["actors"] == 1 else "tab:orange" for r in rows]
    a.bar(x, [r["throughput"] for r in rows], color=colors)
    a.set_xticks(list(x), labels, rotation=20)
    a.set_ylabel("env steps / s")
    a.set_title("throughput by layout (orange: an actor group)")
    width = 0.35
    b.bar([i - width / 2 for i in x], [r["rollout_time_s"] for r in rows], width, label="rollouts (slowest)")
    b.bar([i + width / 2 for i in x], [r["actor_time_s"] for r in rows], width, label="actors (slowest rank)")
    b.set_xticks(list(x), labels, rotation=20)
    b.set_ylabel("busy seconds per update")
    b.set_title("where the time goes")
    b.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
