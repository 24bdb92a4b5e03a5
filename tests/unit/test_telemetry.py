"""dvla.telemetry with the real OpenTelemetry SDK and the JSON exporters: worker metrics, one-off
gauges, span parents and links across a (simulated) process boundary, and 'none' doing nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dvla import telemetry
from dvla.config import TelemetryConfig
from dvla.tracechart import load_spans

STATS = {
    "env_steps_per_s": 512.0,
    "busy_s": 3.0,
    "wait_s": 1.0,
    "send_s": 0.5,
    "weights_s": 0.25,
    "loop_s": 5.0,
    "episodes_produced": 48,
    "episodes_sent": 40,
    "episodes_received": 39,
    "episodes_trained": 30,
    "episodes_dropped": 2,
    "episodes_queued": 7,
    "batches_queued": 3,
    "inference_queue": 5,
    "staleness_mean": 0.5,
    "staleness_max": 2,
    "policy_version": 9,
    "num_envs": 16,
    "env_steps_produced": 4800,
    "env_steps_trained": 3000,
    "updates": 4,
}


@pytest.fixture
def traces(tmp_path):
    """telemetry exporting JSON to tmp_path; the periodic reader is slow, so only flush() exports."""
    telemetry.setup(TelemetryConfig(exporter="json", json_dir=str(tmp_path), metrics_interval_s=600.0), "svc")
    yield tmp_path
    telemetry.shutdown()


def points(trace_dir: Path, name: str, **attributes) -> list[dict]:
    """Data points of metric `name` whose attributes include `attributes`, oldest first."""
    out = []
    for f in trace_dir.glob(f"*{telemetry.METRICS_SUFFIX}"):
        for line in f.read_text().splitlines():
            p = json.loads(line)
            if p["name"] == name and attributes.items() <= p["attributes"].items():
                out.append(p)
    return sorted(out, key=lambda p: p["time_unix_ns"])


def latest(trace_dir: Path, name: str, **attributes) -> float:
    found = points(trace_dir, name, **attributes)
    assert found, f"no point of {name} with {attributes}"
    return found[-1]["value"]


# ------------------------------------------------------------------ metrics
def test_worker_stats_become_the_instruments(traces):
    telemetry.observe_worker("rollout", "r0", lambda: dict(STATS))
    telemetry.flush()
    w = {"role": "rollout", "worker": "r0"}
    assert latest(traces, "dvla.throughput", **w) == 512.0
    assert latest(traces, "dvla.staleness.mean", **w) == 0.5
    assert latest(traces, "dvla.staleness.max", **w) == 2
    for queue in ("episodes_queued", "batches_queued", "inference_queue"):
        assert latest(traces, "dvla.queue.depth", queue=queue, **w) == STATS[queue]
    for kind in ("produced", "sent", "received", "trained", "dropped"):
        assert latest(traces, "dvla.episodes", kind=kind, **w) == STATS[f"episodes_{kind}"]
    for kind in ("produced", "trained"):
        assert latest(traces, "dvla.env_steps", kind=kind, **w) == STATS[f"env_steps_{kind}"]
    assert latest(traces, "dvla.policy.version", **w) == 9
    assert latest(traces, "dvla.envs", **w) == 16
    assert latest(traces, "dvla.updates", **w) == 4
    assert points(traces, "dvla.throughput")[-1]["unit"] == "{env_step}/s"
    assert points(traces, "dvla.throughput")[-1]["service"] == "svc"


def test_busy_fraction_is_lane_seconds_over_loop_seconds(traces):
    telemetry.observe_worker("actor", "a0", lambda: dict(STATS))
    telemetry.observe_worker("rollout", "idle", lambda: {"busy_s": 1.0, "loop_s": 0.0, "num_envs": 4})
    telemetry.flush()
    for lane in ("busy", "wait", "send", "weights"):
        assert latest(traces, "dvla.lane.busy_fraction", worker="a0", lane=lane) == pytest.approx(
            STATS[f"{lane}_s"] / STATS["loop_s"]
        )
    assert not points(traces, "dvla.lane.busy_fraction", worker="idle"), "loop_s <= 0 must give no fraction"
    assert latest(traces, "dvla.envs", worker="idle") == 4
    assert not points(traces, "dvla.throughput", worker="idle"), "a missing key must not be observed"


def test_stats_are_read_again_at_every_export(traces):
    stats = dict(STATS)
    telemetry.observe_worker("rollout", "r0", lambda: stats)
    telemetry.flush()
    stats["policy_version"] = 10
    telemetry.flush()
    assert [p["value"] for p in points(traces, "dvla.policy.version")] == [9, 10]


def test_a_raising_stats_callback_does_not_stop_the_export(traces):
    calls = {"n": 0}

    def flaky() -> dict:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("heartbeat stats not ready")
        return {"num_envs": 8}

    telemetry.observe_worker("rollout", "flaky", flaky)
    telemetry.observe_worker("rollout", "good", lambda: {"num_envs": 16})
    telemetry.observe("dvla.broken", lambda: 1 / 0)
    telemetry.flush()
    assert latest(traces, "dvla.envs", worker="good") == 16
    assert not points(traces, "dvla.envs", worker="flaky")
    telemetry.flush()
    assert latest(traces, "dvla.envs", worker="flaky") == 8
    assert calls["n"] == 2, "stats() runs once per export, not once per instrument"
    assert not points(traces, "dvla.broken")


def test_observe_takes_a_value_a_list_of_points_or_none(traces):
    held = {"versions": 3}
    telemetry.observe("dvla.test.held", lambda: held["versions"], unit="{version}")
    telemetry.observe("dvla.test.alive", lambda: [(1, {"role": "actor"}), (2, {"role": "rollout"})])
    telemetry.observe("dvla.test.latest", lambda: None)
    telemetry.observe("dvla.test.rejected", lambda: 5, counter=True)
    telemetry.flush()
    assert latest(traces, "dvla.test.held") == 3 and points(traces, "dvla.test.held")[0]["unit"] == "{version}"
    assert latest(traces, "dvla.test.alive", role="actor") == 1
    assert latest(traces, "dvla.test.alive", role="rollout") == 2
    assert not points(traces, "dvla.test.latest")
    assert latest(traces, "dvla.test.rejected") == 5
    telemetry.observe("dvla.test.held", lambda: 4)  # the same name again: the new callback wins
    telemetry.flush()
    assert latest(traces, "dvla.test.held") == 4


def test_the_periodic_reader_exports_every_interval(tmp_path):
    telemetry.setup(TelemetryConfig(exporter="json", json_dir=str(tmp_path), metrics_interval_s=0.05), "svc")
    try:
        telemetry.observe_worker("actor", "a0", lambda: {"updates": 2})
        deadline = time.monotonic() + 10
        while len(points(tmp_path, "dvla.updates")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(points(tmp_path, "dvla.updates")) >= 2
    finally:
        telemetry.shutdown()


def test_shutdown_exports_a_last_time_and_forgets_registrations(tmp_path):
    telemetry.setup(TelemetryConfig(exporter="json", json_dir=str(tmp_path), metrics_interval_s=600.0), "svc")
    telemetry.observe_worker("actor", "a0", lambda: {"updates": 7})
    telemetry.shutdown()
    assert latest(tmp_path, "dvla.updates") == 7
    telemetry.observe_worker("actor", "a0", lambda: {"updates": 8})  # after shutdown: ignored
    assert telemetry.current_context() is None


# ------------------------------------------------------------------ spans
def test_span_parent_and_links_round_trip_through_the_json_exporter(traces):
    telemetry.observe_worker("rollout", "r0", lambda: dict(STATS))  # a metric file beside the span file
    round_span = telemetry.start_span("sampling.round", shard=0)
    sent = telemetry.context_of(round_span)  # what a TrajectoryBatch carries over the data plane
    with telemetry.span("sampling.send") as send:
        assert telemetry.current_context() == telemetry.context_of(send)
    round_span.end()
    remote = ((1 << 127) | 0xABC, (1 << 63) | 0x5, 1)  # top bits set: from another process's int64 header
    with telemetry.span("receive.enqueue", parent=sent):
        pass
    with telemetry.span("training.micro_batch", parent=remote) as micro:
        assert telemetry.current_context()[0] == remote[0]
        with telemetry.span("training.backward"):
            pass
    with telemetry.span("training.optimizer_step", links=[sent, None, remote]):
        pass
    telemetry.flush()

    spans = load_spans(traces)
    assert spans and all("start_ns" in s for s in spans), "metric files must not be read as spans"
    by_name = {s["name"]: s for s in spans}
    rnd = by_name["sampling.round"]
    assert rnd["parent_span_id"] is None and rnd["attributes"] == {"shard": 0}
    assert (int(rnd["trace_id"], 16), int(rnd["span_id"], 16)) == sent[:2]
    enq = by_name["receive.enqueue"]
    assert enq["trace_id"] == rnd["trace_id"] and enq["parent_span_id"] == rnd["span_id"]
    mb = by_name["training.micro_batch"]
    assert mb["trace_id"] == f"{remote[0]:032x}" and mb["parent_span_id"] == f"{remote[1]:016x}"
    assert by_name["training.backward"]["parent_span_id"] == mb["span_id"]
    assert telemetry.context_of(micro)[:2] == (remote[0], int(mb["span_id"], 16))
    step = by_name["training.optimizer_step"]
    assert step["links"] == [
        {"trace_id": rnd["trace_id"], "span_id": rnd["span_id"]},
        {"trace_id": f"{remote[0]:032x}", "span_id": f"{remote[1]:016x}"},
    ]
    assert step["parent_span_id"] is None and step["trace_id"] not in (rnd["trace_id"], mb["trace_id"])


def test_none_installs_nothing_and_every_function_is_a_no_op(tmp_path):
    telemetry.setup(TelemetryConfig(exporter="none", json_dir=str(tmp_path), metrics_interval_s=0.05), "svc")
    try:
        called = []
        telemetry.observe_worker("rollout", "r0", lambda: called.append(1) or dict(STATS))
        telemetry.observe("dvla.x", lambda: called.append(1) or 1)
        s = telemetry.start_span("sampling.round")
        assert telemetry.context_of(s) is None
        s.end()
        with telemetry.span("receive.enqueue", parent=(1 << 100, 7, 1), links=[(5, 6, 1)], worker=1):
            assert telemetry.current_context() is None
        telemetry.flush()
        time.sleep(0.15)
        assert called == [] and list(tmp_path.iterdir()) == []
    finally:
        telemetry.shutdown()
