"""Run outputs: metrics as JSON lines, and the plot people look at."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

SUPERSEDED = "superseded.jsonl"  # beside metrics.jsonl: records of updates an actor started again redid


class MetricsLog:
    """Appends one JSON object per line and flushes, so a crash loses nothing written.

    With `tensorboard_dir`, every numeric field also goes to TensorBoard event
    files there (tensorboardX: event files without TensorFlow), against the
    record's `step_key` (env steps by default), for `tensorboard --logdir`.
    """

    def __init__(
        self,
        path: Path,
        tensorboard_dir: Path | None = None,
        step_key: str = "env_steps",
        after_update: int | None = None,
    ):
        """after_update: the run goes on from this update (an actor started from a checkpoint): records of
        later ones, which it trains again, move to superseded.jsonl beside the file, so each update has one
        record here. (TensorBoard's event files keep both: they cannot be rewritten.)"""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.superseded = 0
        if after_update is not None:
            self.superseded = rewind_metrics(self.path, after_update)
        self._f = open(self.path, "a", buffering=1)
        self.step_key = step_key
        self._tb = None
        if tensorboard_dir is not None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(tensorboard_dir), flush_secs=5)

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()
        if self._tb is not None:
            step = int(record.get(self.step_key) or 0)
            for k, v in clean.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None and k != self.step_key:
                    self._tb.add_scalar(k, v, global_step=step)
            self._tb.flush()

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    """Every complete line; a half-written last line (a live run) is skipped."""
    out = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def rewind_metrics(path: Path, after_update: int) -> int:
    """Move the records of updates after `after_update` from `path` to superseded.jsonl beside it (appended:
    nothing is lost), atomically; the number moved."""
    path = Path(path)
    if not path.exists():
        return 0
    keep, later = [], []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the half-written last line of a process that died writing it
            continue
        (later if record.get("update", 0) > after_update else keep).append(line)
    if not later:
        return 0
    with open(path.with_name(SUPERSEDED), "a") as f:
        f.write("".join(f"{line}\n" for line in later))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in keep))
    os.replace(tmp, path)
    return len(later)


def _rolling_mean(y: list, window: int) -> list:
    out = []
    for i in range(len(y)):
        vals = [v for v in y[max(0, i - window + 1) : i + 1] if v is not None]
        out.append(sum(vals) / len(vals) if vals else None)
    return out


def plot_metrics(metrics_path: Path, png_path: Path, title: str = "") -> Path:
    """Success rate, mean episode return and episode length against env steps, side by side.

    Episodes end on success, so a policy that succeeds sooner collects less
    return per episode: the length panel shows why return can fall while
    success rises."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_metrics(metrics_path) if "env_steps" in r]
    x = [r["env_steps"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), constrained_layout=True)
    panels = (
        (axes[0], "success_rate", "success rate"),
        (axes[1], "return_mean", "mean episode return"),
        (axes[2], "episode_length", "mean episode length (steps)"),
    )
    for ax, key, label in panels:
        y = [r.get(key) for r in rows]
        ax.plot(x, y, color="tab:blue", alpha=0.35, linewidth=1, label="per update")
        ax.plot(x, _rolling_mean(y, max(1, len(y) // 15)), color="tab:blue", linewidth=2, label="rolling mean")
        ax.set_xlabel("env steps")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(-0.02, 1.02)
    axes[1].legend(loc="lower right", fontsize=8)
    if title:
        fig.suptitle(title)
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path


def plot_placement(run_dir: Path, png_path: Path | None = None) -> Path | None:
    """The measured placement's timeline (pipeline.placement=auto): env steps/s per update, each stretch
    shaded by the placement in force, each decision marked with its placement. None without decisions."""
    decisions = read_metrics(run_dir / "placement.jsonl")
    rows = read_metrics(run_dir / "metrics.jsonl")
    if not decisions or not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png_path = png_path or run_dir / "placement.png"
    updates = [r["update"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4), layout="constrained")
    ax.plot(updates, [r["env_steps_per_s"] for r in rows], color="black", lw=1, label="env steps/s (run so far)")
    rate = [rows[0]["env_steps_per_s"]] + [
        (b["env_steps"] - a["env_steps"]) / max(b["wall_s"] - a["wall_s"], 1e-9) for a, b in zip(rows, rows[1:])
    ]
    ax.plot(updates, rate, color="gray", lw=0.8, alpha=0.7, label="env steps/s (this update)")
    switches = [d for d in decisions if d.get("switch", True)]
    names = list(dict.fromkeys(d["placement"] for d in switches))
    colors = {n: plt.cm.tab10(i % 10) for i, n in enumerate(names)}
    last = updates[-1]
    for d, nxt in zip(switches, switches[1:] + [None]):
        end = nxt["update"] if nxt else last
        ax.axvspan(d["update"], end, color=colors[d["placement"]], alpha=0.18, lw=0)
    for n in names:
        ax.axvspan(
            0, 0, color=colors[n], alpha=0.3, label=f"{n}: {next(d['detail'] for d in switches if d['placement'] == n)}"
        )
    for d in decisions:
        if d["reason"].startswith("chose"):
            ax.axvline(d["update"], color=colors.get(d["placement"], "black"), ls="--", lw=1)
            ax.annotate(f"chose {d['placement']}", (d["update"], ax.get_ylim()[1] * 0.95), fontsize=7, rotation=90,
                        va="top", ha="right")  # fmt: skip
    ax.set_xlabel("update")
    ax.set_ylabel("env steps / s")
    ax.set_title("placement=auto: each placement measured, the fastest kept (placement.jsonl)")
    ax.legend(fontsize=7, loc="lower right")
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
