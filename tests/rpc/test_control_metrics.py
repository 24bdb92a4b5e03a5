"""weight_control's metrics (JSON exporter) against a real server: versions and bytes held, the
latest version, workers alive by role, rejected publishes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from dvla import telemetry
from dvla.config import ControlConfig, TelemetryConfig
from dvla.rpc.client import ControlClient, RpcFailed
from dvla.types import EnvSpec
from dvla.weights import pack
from services.weight_control.app import BackgroundServer

WEIGHTS = {"w": torch.zeros(4)}
SPEC = EnvSpec("PushCube-v1", 35, 4, (-1.0,) * 4, (1.0,) * 4, 50)


def latest_points(trace_dir) -> dict[tuple[str, tuple], float]:
    """(name, sorted attributes) -> value of its newest point."""
    out = {}
    for f in sorted(trace_dir.glob(f"*{telemetry.METRICS_SUFFIX}")):
        for p in sorted(map(json.loads, f.read_text().splitlines()), key=lambda p: p["time_unix_ns"]):
            out[p["name"], tuple(sorted(p["attributes"].items()))] = p["value"]
    return out


def test_control_metrics_follow_the_store_and_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("DVLA_TOKEN", raising=False)
    telemetry.setup(
        TelemetryConfig(exporter="json", json_dir=str(tmp_path), metrics_interval_s=600.0), "weight_control"
    )
    cfg = replace(ControlConfig(), rpc_timeout_s=5.0, keep_versions=2)
    try:
        with BackgroundServer(cfg, num_rollouts=1) as srv:
            c = ControlClient(srv.address, cfg)
            c.wait_healthy(10)
            c.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
            telemetry.flush()
            before = latest_points(tmp_path)
            c.register("rollout", "rollout-0", env_spec=SPEC)
            for version in range(3):
                c.publish(version, WEIGHTS)  # the store keeps the newest 2
            with pytest.raises(RpcFailed):
                c.publish(1, WEIGHTS)  # older than the latest: rejected
            telemetry.flush()
            after = latest_points(tmp_path)
            c.close()
    finally:
        telemetry.shutdown()

    assert before["dvla.control.versions_held", ()] == 0 and before["dvla.control.bytes_held", ()] == 0
    assert ("dvla.control.latest_version", ()) not in before, "no version yet: no point"
    assert before["dvla.control.workers_alive", (("role", "rollout"),)] == 0
    assert after["dvla.control.versions_held", ()] == 2
    assert after["dvla.control.bytes_held", ()] == 2 * pack(WEIGHTS)[0].total_bytes
    assert after["dvla.control.latest_version", ()] == 2
    assert after["dvla.control.workers_alive", (("role", "actor"),)] == 1
    assert after["dvla.control.workers_alive", (("role", "rollout"),)] == 1
    assert after["dvla.control.publishes_rejected", ()] == 1
    assert before["dvla.control.publishes_rejected", ()] == 0
