"""Where telemetry goes: OpenTelemetry exporters by TelemetryConfig.exporter, and our JSON-lines files.

'json' appends one JSON object per line: spans to <json_dir>/<service>-<pid>.jsonl,
metric data points to <json_dir>/<service>-<pid>.metrics.jsonl (dvla/tracechart.py
and the tests read them back).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from dvla.config import TelemetryConfig

METRICS_SUFFIX = ".metrics.jsonl"  # metric files; span files are every other *.jsonl in json_dir


class _JsonLinesFile:
    """An append-only JSON-lines file that exporter threads write whole batches to."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._f = open(self.path, "a", buffering=1 << 16)

    def write(self, records: Iterable[dict]) -> bool:
        """False once closed."""
        lines = [json.dumps(r) + "\n" for r in records]
        with self._lock:
            if self._f.closed:
                return False
            self._f.writelines(lines)
            self._f.flush()
        return True

    def close(self) -> None:
        with self._lock:
            self._f.close()


class JsonLinesExporter(SpanExporter):
    """Appends spans as JSON lines: name, service, lane, start/end (unix ns), ids, parent, links, attributes."""

    def __init__(self, path: Path, service: str):
        self.file, self.service = _JsonLinesFile(path), service

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = self.file.write(
            {
                "name": s.name,
                "service": self.service,
                "lane": s.name.split(".")[0],
                "start_ns": s.start_time,
                "end_ns": s.end_time,
                "pid": os.getpid(),
                "trace_id": f"{s.get_span_context().trace_id:032x}",
                "span_id": f"{s.get_span_context().span_id:016x}",
                "parent_span_id": f"{s.parent.span_id:016x}" if s.parent is not None else None,
                "links": [
                    {"trace_id": f"{link.context.trace_id:032x}", "span_id": f"{link.context.span_id:016x}"}
                    for link in s.links
                ],
                "attributes": dict(s.attributes or {}),
            }
            for s in spans
        )
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.file.close()


class JsonLinesMetricExporter(MetricExporter):
    """Appends one JSON line per data point: name, service, unit, attributes, value, time_unix_ns."""

    def __init__(self, path: Path, service: str):
        super().__init__()
        self.file, self.service = _JsonLinesFile(path), service

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs) -> MetricExportResult:
        ok = self.file.write(
            {
                "name": m.name,
                "service": self.service,
                "unit": m.unit,
                "attributes": dict(p.attributes or {}),
                "value": p.value if hasattr(p, "value") else p.sum,  # histograms: their sum
                "time_unix_ns": p.time_unix_nano,
            }
            for rm in metrics_data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in m.data.data_points
        )
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs) -> None:
        self.file.close()


def exporters(cfg: TelemetryConfig, service: str) -> tuple[SpanExporter, MetricExporter]:
    if cfg.exporter == "console":
        return ConsoleSpanExporter(), ConsoleMetricExporter()
    if cfg.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return (
            OTLPSpanExporter(endpoint=cfg.otlp_endpoint, insecure=True),
            OTLPMetricExporter(endpoint=cfg.otlp_endpoint, insecure=True),
        )
    stem = Path(cfg.json_dir) / f"{service}-{os.getpid()}"
    return JsonLinesExporter(stem.with_name(stem.name + ".jsonl"), service), JsonLinesMetricExporter(
        stem.with_name(stem.name + METRICS_SUFFIX), service
    )
