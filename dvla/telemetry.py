"""OpenTelemetry set-up: one tracer per service, spans for each lane's unit of work.

Exporters, by TelemetryConfig.exporter: 'none', 'console', 'otlp' (an OTLP/gRPC
collector at telemetry.otlp_endpoint, e.g. Jaeger), or 'json' (one JSON object
per span, appended to <telemetry.json_dir>/<service>.jsonl, which `dvla trace`
turns into a swimlane chart). Span names are '<lane>.<unit>' so a trace viewer
groups them by lane.
"""
from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter, SpanExportResult

from dvla.config import TelemetryConfig

_tracer: trace.Tracer = trace.get_tracer("dvla")
_provider: TracerProvider | None = None


class JsonLinesExporter(SpanExporter):
    """Appends spans as JSON lines: name, service, lane, start/end (unix ns), attributes."""

    def __init__(self, path: Path, service: str):
        self.path, self.service = Path(path), service
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._f = open(self.path, "a", buffering=1 << 16)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            for s in spans:
                ctx = s.get_span_context()
                self._f.write(json.dumps({
                    "name": s.name, "service": self.service, "lane": s.name.split(".")[0],
                    "start_ns": s.start_time, "end_ns": s.end_time, "pid": os.getpid(),
                    "trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                    "attributes": dict(s.attributes or {}),
                }) + "\n")
            self._f.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._f.close()


def setup(cfg: TelemetryConfig, service: str) -> None:
    """Install the tracer provider for this process (once)."""
    global _tracer, _provider
    if cfg.exporter == "none" or (cfg.exporter == "json" and not cfg.json_dir) or _provider is not None:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"dvla.{service}"}))
    if cfg.exporter == "console":
        exporter: SpanExporter = ConsoleSpanExporter()
    elif cfg.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, insecure=True)
    else:
        exporter = JsonLinesExporter(Path(cfg.json_dir) / f"{service}-{os.getpid()}.jsonl", service)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=1 << 16, schedule_delay_millis=1000))
    _provider = provider
    _tracer = provider.get_tracer("dvla")


def shutdown() -> None:
    """Flush and close the exporter (call before the process exits)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None


@contextmanager
def span(name: str, **attributes) -> Iterator[trace.Span]:
    with _tracer.start_as_current_span(name, attributes={k: v for k, v in attributes.items() if v is not None}) as s:
        yield s
