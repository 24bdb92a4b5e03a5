"""The run's machinery as config sections: the control plane, the data plane, telemetry, checkpoints.

Field docstrings are help text (`dvla run --help-config`), as in sections.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from dvla.config.check import check as _check


@dataclass(frozen=True)
class ActorConfig:
    strategy: str = "fsdp"
    """How pipeline.num_actors > 1 ranks share the policy: 'fsdp' (FSDP2: parameters, gradients and
    optimizer state sharded over the ranks) or 'ddp' (each rank holds it all; gradients averaged)."""
    param_dtype: str = "bfloat16"
    """fsdp on CUDA: dtype parameters are gathered and computed in (mixed precision). Ignored on CPU."""
    reduce_dtype: str = "float32"
    """fsdp on CUDA: dtype gradients are reduced in. Ignored on CPU."""

    def validate(self) -> None:
        _check(self.strategy in ("fsdp", "ddp"), "actor.strategy", f"unknown '{self.strategy}'; choose fsdp or ddp")
        for name in ("param_dtype", "reduce_dtype"):
            v = getattr(self, name)
            _check(v in ("float32", "bfloat16", "float16"), f"actor.{name}", f"unknown '{v}'")


@dataclass(frozen=True)
class ControlConfig:
    host: str = "127.0.0.1"
    """Address weight_control listens on."""
    port: int = 50551
    """Port of weight_control (0 = any free port, launcher only)."""
    keep_versions: int = 4
    """Newest policy versions kept in host memory."""
    chunk_bytes: int = 1 << 20
    """Bytes per weight chunk on the wire (gRPC)."""
    bulk_port: int = 0
    """weight_control: TCP port of the bulk side channel that carries weight bytes at the wire's speed, on
    control.host (0 = any free port, told to clients in each fetch; -1 = off: bytes travel over gRPC). Off
    under TLS. Clients fall back to gRPC when they cannot reach it; a cluster opens it beside control.port."""
    node_cache: str = "auto"
    """Rollouts: a folder in shared memory where the first rollout on a node to fetch a version leaves its
    bytes for the others, which read and check them instead of fetching again ('auto' = /dev/shm/dvla-weights
    where /dev/shm exists; '' = off)."""
    max_message_bytes: int = 8 << 20
    """gRPC message size limit; larger messages are refused."""
    max_version_bytes: int = 4 << 30
    """Largest accepted policy version."""
    rpc_timeout_s: float = 30.0
    """Deadline of unary RPCs."""
    transfer_timeout_s: float = 300.0
    """Deadline of a whole weight publish or fetch."""
    heartbeat_s: float = 2.0
    """Worker heartbeat period; a worker silent for 5 periods is marked dead."""
    lost_after_s: float = 120.0
    """A worker that cannot reach weight_control this long exits (code 3) saying so, instead of waiting for
    ever; gRPC retries and reconnects meanwhile. A rollout does the same once the actor has been gone
    (silent, or unreachable on the data plane) this long (0 = wait for ever)."""
    evict_after_s: float = 0.0
    """A rollout silent this long is evicted: the data plane re-forms without it, and what it had not
    delivered counts as lost (0 = 10 heartbeat periods: it shows as dead after 5)."""
    state_path: str = ""
    """weight_control keeps its ledger here (a JSON file, rewritten as it changes): the incarnations that
    are gone (a dead actor's, evicted rollouts') with their last counters. One started again reads it, so
    the totals stay true across its restart. `dvla run` sets <run dir>/control-state.json ('' = none)."""
    token: str = ""
    """Shared secret the Admin RPCs and PublishWeights require ('' = none). The environment variable
    DVLA_TOKEN wins over this field; prefer it, since this field is redacted from saved configs."""
    tls_cert: str = ""
    """weight_control: PEM certificate chain; with tls_key, the server speaks TLS only ('' = plaintext)."""
    tls_key: str = ""
    """weight_control: PEM private key of tls_cert."""
    tls_ca: str = ""
    """Clients: PEM CA to verify weight_control's certificate (set it to connect over TLS). Server: the CA
    client certificates must be signed by, when tls_client_auth is on."""
    tls_client_auth: bool = False
    """weight_control: require client certificates signed by tls_ca (mutual TLS)."""
    tls_client_cert: str = ""
    """Clients, for mutual TLS: PEM certificate chain."""
    tls_client_key: str = ""
    """Clients, for mutual TLS: PEM private key of tls_client_cert."""
    tls_server_name: str = ""
    """Clients: the name to verify weight_control's certificate for, when it differs from the address."""

    def validate(self) -> None:
        _check(bool(self.tls_cert) == bool(self.tls_key), "control.tls_cert", "set tls_cert and tls_key together")
        _check(
            bool(self.tls_client_cert) == bool(self.tls_client_key),
            "control.tls_client_cert",
            "set tls_client_cert and tls_client_key together",
        )
        _check(
            not self.tls_client_auth or bool(self.tls_ca),
            "control.tls_client_auth",
            "mutual TLS needs control.tls_ca (the CA client certificates are checked against)",
        )
        _check(0 <= self.port < 65536, "control.port", "must be in [0, 65535]")
        _check(-1 <= self.bulk_port < 65536, "control.bulk_port", "must be -1 (off), 0 (any free port) or a port")
        _check(self.keep_versions >= 2, "control.keep_versions", "must be >= 2 (one serving, one arriving)")
        _check(
            0 < self.chunk_bytes < self.max_message_bytes,
            "control.chunk_bytes",
            "must be > 0 and below control.max_message_bytes",
        )
        _check(self.rpc_timeout_s > 0 and self.transfer_timeout_s > 0, "control.rpc_timeout_s", "deadlines must be > 0")
        _check(self.lost_after_s >= 0, "control.lost_after_s", f"must be >= 0 (0: never), got {self.lost_after_s}")
        _check(
            self.evict_after_s == 0 or self.evict_after_s >= 2 * self.heartbeat_s,
            "control.evict_after_s",
            f"must be 0 (10 heartbeats) or at least two heartbeat periods ({2 * self.heartbeat_s:g} s), "
            f"got {self.evict_after_s}",
        )


@dataclass(frozen=True)
class DataPlaneConfig:
    backend: str = "auto"
    """torch.distributed backend: 'auto' (nccl with CUDA, else gloo), 'gloo' or 'nccl'."""
    host: str = "127.0.0.1"
    """Address the actor advertises for the data-plane rendezvous."""
    port: int = 0
    """Rendezvous port (0 = any free port)."""
    timeout_s: float = 600.0
    """torch.distributed operation timeout."""
    connect_timeout_s: float = 30.0
    """How long the ranks of a new data-plane epoch (gloo) take at most to connect to each other. A rank that
    died meanwhile costs the others this long (then they meet again, and go on once it is evicted)."""

    def validate(self) -> None:
        _check(self.backend in ("auto", "gloo", "nccl"), "dataplane.backend", f"unknown '{self.backend}'")
        _check(self.timeout_s > 0, "dataplane.timeout_s", f"must be > 0, got {self.timeout_s}")
        _check(self.connect_timeout_s > 0, "dataplane.connect_timeout_s", f"must be > 0, got {self.connect_timeout_s}")
        _check(0 <= self.port < 65536, "dataplane.port", "must be in [0, 65535]")


@dataclass(frozen=True)
class TelemetryConfig:
    exporter: str = "json"
    """OpenTelemetry spans: 'none', 'console', 'otlp' (to otlp_endpoint) or 'json' (files in json_dir)."""
    otlp_endpoint: str = "localhost:4317"
    """OTLP/gRPC collector (Jaeger, an OpenTelemetry collector) for exporter 'otlp'."""
    json_dir: str = ""
    """Folder for exporter 'json' (dvla run sets <run folder>/traces; empty = no spans)."""
    metrics_interval_s: float = 5.0
    """OpenTelemetry metrics (throughput, staleness, queue depths, lane busy fractions) are exported through
    the same exporter every this many seconds."""

    def validate(self) -> None:
        _check(
            self.exporter in ("none", "console", "otlp", "json"),
            "telemetry.exporter",
            f"unknown '{self.exporter}'; choose none, console, otlp or json",
        )
        _check(self.metrics_interval_s > 0, "telemetry.metrics_interval_s", "must be > 0")


@dataclass(frozen=True)
class CheckpointConfig:
    every_updates: int = 50
    """The actor writes a checkpoint every this many updates (0 = only at the end and on request:
    `dvla admin checkpoint`)."""
    keep: int = 3
    """Newest checkpoints kept in <run folder>/checkpoints/ (older ones are deleted)."""

    def validate(self) -> None:
        _check(self.every_updates >= 0, "checkpoint.every_updates", "must be >= 0")
        _check(self.keep >= 1, "checkpoint.keep", "must be >= 1")
