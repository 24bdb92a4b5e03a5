"""MetricsLog: JSON lines, and the same scalars in TensorBoard event files."""

from __future__ import annotations

import struct

from tensorboardX.proto import event_pb2

from dvla.metrics import SUPERSEDED, MetricsLog, read_metrics


def read_events(directory) -> list:
    """Every Event in the TFRecord files of a folder (length, crc, data, crc per record)."""
    events = []
    for path in sorted(directory.glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos + 12 <= len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            data = raw[pos + 12 : pos + 12 + length]
            pos += 12 + length + 4
            e = event_pb2.Event()
            e.ParseFromString(data)
            events.append(e)
    return events


def test_records_go_to_jsonl_and_tensorboard(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard_dir=tmp_path / "tb")
    log.write({"version": 1, "env_steps": 800, "return_mean": 2.5, "success_rate": 0.0, "versions_used": [0]})
    log.write({"version": 2, "env_steps": 1600, "return_mean": 3.0, "success_rate": 0.25, "loss/kl": float("nan")})
    log.close()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["version"] for r in rows] == [1, 2] and rows[1]["loss/kl"] is None
    scalars = {}
    for e in read_events(tmp_path / "tb"):
        for v in e.summary.value:
            scalars.setdefault(v.tag, []).append((e.step, round(v.simple_value, 4)))
    assert scalars["return_mean"] == [(800, 2.5), (1600, 3.0)]
    assert scalars["success_rate"] == [(800, 0.0), (1600, 0.25)]
    assert "versions_used" not in scalars and "loss/kl" not in scalars and "env_steps" not in scalars


def test_an_actor_started_from_a_checkpoint_moves_the_records_it_redoes_aside_and_loses_none(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for u in range(1, 8):
        log.write({"update": u, "version": u})
    log.close()
    with open(path, "a") as f:
        f.write('{"update": 8, "vers')  # the dead actor's half-written last line
    log = MetricsLog(path, after_update=5)  # started again from the checkpoint of update 5
    assert log.superseded == 2
    log.write({"update": 6, "version": 6})
    log.close()
    assert [r["update"] for r in read_metrics(path)] == [1, 2, 3, 4, 5, 6]
    assert [r["update"] for r in read_metrics(tmp_path / SUPERSEDED)] == [6, 7]
    assert MetricsLog(tmp_path / "fresh" / "metrics.jsonl", after_update=0).superseded == 0  # no file yet
    log = MetricsLog(path, after_update=0)  # started again with no checkpoint: every update is redone
    log.close()
    assert read_metrics(path) == [] and len(read_metrics(tmp_path / SUPERSEDED)) == 8
