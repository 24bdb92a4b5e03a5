"""Swimlane chart of a run's spans (telemetry exporter 'json'): one row per
(process, lane), a bar per span, over a window of the run, so one picture
shows where the four lanes overlap and where they wait."""

from __future__ import annotations

import json
from pathlib import Path

from dvla.telemetry import METRICS_SUFFIX

LANE_COLORS = {
    "sampling": "tab:green",
    "inference": "tab:olive",
    "weights": "tab:purple",
    "receive": "tab:gray",
    "training": "tab:blue",
    "publish": "tab:red",
}


def load_spans(trace_dir: Path) -> list[dict]:
    """Every span in trace_dir's span files (*.jsonl, but not the metric files beside them)."""
    spans = []
    for f in sorted(f for f in Path(trace_dir).glob("*.jsonl") if not f.name.endswith(METRICS_SUFFIX)):
        for line in f.read_text().splitlines():
            try:
                spans.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a killed process
    return spans


def plot_trace(trace_dir: Path, png: Path, window_s: float = 8.0) -> Path | None:
    """Draw `window_s` seconds from the middle of the run; None if there are no spans."""
    spans = load_spans(trace_dir)
    if not spans:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = min(s["start_ns"] for s in spans)
    t1 = max(s["end_ns"] for s in spans)
    mid = (t0 + t1) / 2
    lo, hi = mid - window_s / 2 * 1e9, mid + window_s / 2 * 1e9
    rows = sorted({(s["service"], s["lane"]) for s in spans})
    fig, ax = plt.subplots(figsize=(13, 0.45 * len(rows) + 1.5), constrained_layout=True)
    for i, row in enumerate(rows):
        bars = [
            ((s["start_ns"] - lo) / 1e9, max((s["end_ns"] - s["start_ns"]) / 1e9, 1e-4))
            for s in spans
            if (s["service"], s["lane"]) == row and s["end_ns"] >= lo and s["start_ns"] <= hi
        ]
        ax.broken_barh(bars, (i - 0.4, 0.8), color=LANE_COLORS.get(row[1], "tab:cyan"))
    ax.set_yticks(range(len(rows)), [f"{svc} / {lane}" for svc, lane in rows])
    ax.set_xlim(0, window_s)
    ax.set_xlabel(f"seconds ({window_s:.0f} s from the middle of the run)")
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("lanes over time (one bar per span)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png
