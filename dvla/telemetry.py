"""OpenTelemetry set-up: spans for each lane's unit of work, metrics for each service.

Exporters, by TelemetryConfig.exporter: 'none' (nothing installed, every function
here a no-op), 'console', 'otlp' (an OTLP/gRPC collector at
telemetry.otlp_endpoint, e.g. Jaeger), or 'json': spans, one JSON object per
line, appended to <json_dir>/<service>-<pid>.jsonl (which `dvla trace` turns into
a swimlane chart), metric data points to <json_dir>/<service>-<pid>.metrics.jsonl.
Span names are '<lane>.<unit>' so a trace viewer groups them by lane.

One trace per rollout round: a trace context (trace_id, span_id, trace_flags)
travels with each TrajectoryBatch over the data plane, and the actor opens its
spans on the batch as children of it (span(..., parent=ctx)) or links them
(span(..., links=[ctx, ...])).

Metrics are observed, not pushed: observe_worker() and observe() register
callbacks that the periodic reader calls every telemetry.metrics_interval_s.
Register them after setup(); before it (or with 'none') they are ignored.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from dvla.config import TelemetryConfig
from dvla.telemetry_export import METRICS_SUFFIX as METRICS_SUFFIX  # re-exported: the file layout is ours
from dvla.telemetry_export import exporters

log = logging.getLogger("dvla.telemetry")

TraceContext = tuple[int, int, int]  # (trace_id 128-bit, span_id 64-bit, trace_flags): a span, across processes

_tracer: trace.Tracer = trace.get_tracer("dvla")
_provider: TracerProvider | None = None
_meter_provider: MeterProvider | None = None
_meter: metrics.Meter | None = None
# Registrations, written under _lock. The reader's thread reads them without it (a dict copy is atomic
# under the GIL): it calls our callbacks while holding the SDK's lock that registering an instrument takes.
_lock = threading.Lock()
_workers: dict[tuple[str, str], _StatsSource] = {}  # (role, worker_id) -> its stats()
_gauges: dict[str, Callable] = {}  # name -> callback of observe()
_collections = 0  # collections so far; a worker's stats() runs once per collection


class _Reader(PeriodicExportingMetricReader):
    """Counts collections, so each worker's stats() is called once per collection, not once per instrument,
    and all of a worker's points in one export come from the same snapshot."""

    def collect(self, timeout_millis: float = 10_000) -> None:
        global _collections
        _collections += 1
        super().collect(timeout_millis=timeout_millis)


# ------------------------------------------------------------------ life cycle
def setup(cfg: TelemetryConfig, service: str) -> None:
    """Install the tracer and meter providers for this process (once; shutdown() undoes it)."""
    global _tracer, _provider, _meter_provider, _meter
    if cfg.exporter == "none" or (cfg.exporter == "json" and not cfg.json_dir) or _provider is not None:
        return
    resource = Resource.create({"service.name": f"dvla.{service}"})
    span_exporter, metric_exporter = exporters(cfg, service)
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter, max_queue_size=1 << 16, schedule_delay_millis=1000))
    reader = _Reader(metric_exporter, export_interval_millis=cfg.metrics_interval_s * 1000)
    _provider, _tracer = provider, provider.get_tracer("dvla")
    _meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    _meter = _meter_provider.get_meter("dvla")


def flush(timeout_s: float = 10.0) -> None:
    """Export every finished span and collect and export every metric now."""
    for p in (_provider, _meter_provider):
        if p is not None:
            p.force_flush(int(timeout_s * 1000))


def shutdown() -> None:
    """Flush and close the exporters (call before the process exits) and forget every registration,
    so setup() may run again (tests)."""
    global _tracer, _provider, _meter_provider, _meter
    meter_provider, provider = _meter_provider, _provider
    _meter = None
    try:
        if meter_provider is not None:
            meter_provider.shutdown()  # a last collection: the callbacks must still be registered
    except Exception:  # e.g. an unreachable collector: nothing to do about it while exiting
        log.warning("metrics did not shut down cleanly", exc_info=True)
    if provider is not None:
        provider.shutdown()
    with _lock:
        _workers.clear()
        _gauges.clear()
    _tracer, _provider, _meter_provider = trace.get_tracer("dvla"), None, None


# ------------------------------------------------------------------ spans
def _remote(ctx: TraceContext) -> trace.SpanContext:
    trace_id, span_id, flags = ctx
    return trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))


def _span_args(parent: TraceContext | None, links: Iterable[TraceContext | None], attributes: dict) -> dict:
    args = {"attributes": {k: v for k, v in attributes.items() if v is not None}}
    if parent is not None:
        args["context"] = trace.set_span_in_context(trace.NonRecordingSpan(_remote(parent)))
    args["links"] = [trace.Link(_remote(c)) for c in links if c is not None]
    return args


@contextmanager
def span(
    name: str, parent: TraceContext | None = None, links: Iterable[TraceContext | None] = (), **attributes
) -> Iterator[trace.Span]:
    """A span around the block, current inside it. With `parent` (a context from another process) it is
    that span's child, else the current span's; each context in `links` (None skipped) becomes a Link."""
    with _tracer.start_as_current_span(name, **_span_args(parent, links, attributes)) as s:
        yield s


def start_span(
    name: str, parent: TraceContext | None = None, links: Iterable[TraceContext | None] = (), **attributes
) -> trace.Span:
    """A span that outlives a block (not made current): call .end() on it when its work is done."""
    return _tracer.start_span(name, **_span_args(parent, links, attributes))


def context_of(s: trace.Span) -> TraceContext | None:
    """(trace_id, span_id, trace_flags) of a span this process started; None when tracing is off."""
    ctx = s.get_span_context()
    if not ctx.is_valid or ctx.is_remote:
        return None
    return (ctx.trace_id, ctx.span_id, int(ctx.trace_flags))


def current_context() -> TraceContext | None:
    """The current span's context, None if there is no recording span."""
    s = trace.get_current_span()
    return context_of(s) if s.is_recording() else None


# ------------------------------------------------------------------ metrics
@dataclass(frozen=True)
class WorkerInstrument:
    """One instrument fed by a worker's stats dict: a point per (stats key, extra attributes)."""

    name: str
    unit: str
    description: str
    points: tuple[tuple[str, Mapping[str, str]], ...]
    counter: bool = False  # a cumulative count (observable counter), else a gauge
    per: str = ""  # divide each value by this stats key (no points while it is <= 0)


def _each(attr: str, names: Sequence[str], key: str) -> tuple[tuple[str, Mapping[str, str]], ...]:
    """One point per name: stats key key.format(name), attributes {attr: name}."""
    return tuple((key.format(n), {attr: n}) for n in names)


# Keys are WorkerStats fields (protos/dvla/proto/v1/common.proto); every point also has role and worker.
WORKER_INSTRUMENTS: tuple[WorkerInstrument, ...] = (
    WorkerInstrument("dvla.throughput", "{env_step}/s", "env steps per second", (("env_steps_per_s", {}),)),
    WorkerInstrument(
        "dvla.staleness.mean",
        "{version}",
        "mean policy-version lag of the steps in the last update",
        (("staleness_mean", {}),),
    ),
    WorkerInstrument(
        "dvla.staleness.max",
        "{version}",
        "largest policy-version lag of the steps in the last update",
        (("staleness_max", {}),),
    ),
    WorkerInstrument(
        "dvla.queue.depth",
        "{item}",
        "items waiting in a bounded queue",
        _each("queue", ("episodes_queued", "batches_queued", "inference_queue"), "{}"),
    ),
    WorkerInstrument(
        "dvla.lane.busy_fraction",
        "1",
        "share of the loop's time spent in each lane",
        _each("lane", ("busy", "wait", "send", "weights"), "{}_s"),
        per="loop_s",
    ),
    WorkerInstrument(
        "dvla.episodes",
        "{episode}",
        "episodes, by what happened to them",
        _each("kind", ("produced", "sent", "received", "trained", "dropped"), "episodes_{}"),
        counter=True,
    ),
    WorkerInstrument(
        "dvla.env_steps",
        "{env_step}",
        "env steps produced and trained",
        _each("kind", ("produced", "trained"), "env_steps_{}"),
        counter=True,
    ),
    WorkerInstrument("dvla.policy.version", "{version}", "policy version in use", (("policy_version", {}),)),
    WorkerInstrument("dvla.envs", "{env}", "parallel environments", (("num_envs", {}),)),
    WorkerInstrument("dvla.updates", "{update}", "optimizer updates", (("updates", {}),), counter=True),
)


class _StatsSource:
    def __init__(self, label: str, stats: Callable[[], dict]):
        self.label, self.stats = label, stats
        self._seen, self._snapshot = -1, {}

    def snapshot(self) -> dict:
        """stats(), called once per collection; {} (and a log line) when it raises."""
        if self._seen != _collections:
            self._seen = _collections
            try:
                self._snapshot = dict(self.stats())
            except Exception:
                log.warning("stats() of %s raised; its metrics are skipped in this export", self.label, exc_info=True)
                self._snapshot = {}
        return self._snapshot


def _number(x) -> float | int | None:
    return x if isinstance(x, (int, float)) else None


def _worker_points(inst: WorkerInstrument) -> list[metrics.Observation]:
    out = []
    for (role, worker_id), source in list(_workers.items()):
        stats = source.snapshot()
        scale = 1.0
        if inst.per:
            per = _number(stats.get(inst.per))
            if per is None or per <= 0:
                continue
            scale = 1.0 / per
        for key, attrs in inst.points:
            value = _number(stats.get(key))
            if value is not None:
                out.append(
                    metrics.Observation(
                        value * scale if inst.per else value, {"role": role, "worker": worker_id, **attrs}
                    )
                )
    return out


def _register(name: str, counter: bool, unit: str, description: str, points: Callable[[], list]) -> None:
    create = _meter.create_observable_counter if counter else _meter.create_observable_gauge
    create(name, callbacks=[lambda options: points()], unit=unit, description=description)


def observe_worker(role: str, worker_id: str, stats: Callable[[], dict]) -> None:
    """Export this worker's heartbeat stats (WorkerStats fields; missing keys are not observed) as the
    WORKER_INSTRUMENTS, with attributes role and worker. Registering the same (role, worker_id) again
    replaces its stats()."""
    if _meter is None:
        return
    with _lock:
        first = not _workers
        _workers[(role, worker_id)] = _StatsSource(f"{role} {worker_id}", stats)
        if first:  # the instruments serve every worker of this process
            for inst in WORKER_INSTRUMENTS:
                _register(inst.name, inst.counter, inst.unit, inst.description, lambda inst=inst: _worker_points(inst))


def _gauge_points(name: str) -> list[metrics.Observation]:
    callback = _gauges.get(name)
    try:
        value = callback() if callback is not None else None
        if value is None:
            return []
        if isinstance(value, (int, float)):
            return [metrics.Observation(value)]
        return [metrics.Observation(v, dict(attrs)) for v, attrs in value]
    except Exception:
        log.warning("metric callback of %s raised; skipped in this export", name, exc_info=True)
        return []


def observe(
    name: str,
    callback: Callable[[], float | int | list[tuple[float, dict]] | None],
    unit: str = "",
    description: str = "",
    counter: bool = False,
) -> None:
    """One observable instrument: callback() returns a value, [(value, attributes), ...] or None (no point).
    counter=True for a cumulative count. Registering a name again replaces its callback."""
    if _meter is None:
        return
    with _lock:
        first = name not in _gauges
        _gauges[name] = callback
        if first:
            _register(name, counter, unit, description, lambda: _gauge_points(name))
