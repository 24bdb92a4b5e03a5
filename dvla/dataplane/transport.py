"""Trajectory transport over torch.distributed: rollout workers send, the actor receives.

Wire format (never pickled), per message, from one sender to one receiver:

    header   int64[20]   magic, version, kind, B, T, D, A, worker_rank, round
                         (for EPOCH_END: the data-plane epoch it ends),
                         has trace context (1 or 0), payload bytes, I (image
                         bytes per decision, 0 without a camera), trace_id high
                         64 bits, trace_id low 64 bits, span_id, trace_flags
                         (the 4 trace words are 0 without a trace context, and
                         always on END / EPOCH_END; unsigned 64-bit words are
                         stored as their two's-complement int64), then the
                         sender's counters as it sends this batch (worker key,
                         episodes produced, episodes sent, env steps produced;
                         all 0 when it keeps none)
    payload  uint8[n]    only for TRAJECTORIES: every TrajectoryBatch.TENSOR_FIELDS
                         tensor in that order, raw bytes (bool as 1 byte), each
                         padded to 8 bytes so the receiver can view it in place

One payload send instead of twelve keeps per-message latency at two sends. The
counters let weight_control count a rollout's episodes as sent at least as far
as the actor has received them, without a heartbeat before every send. The
trace context is TrajectoryBatch.trace_context: the rollout span that made the
batch, so the actor's spans on it join that trace (dvla.telemetry).

Receiving from whichever sender is ready: NCCL has no any-source receive, so the
receiver keeps one posted header irecv per open source and polls them. Gloo's
irecv never reports completion until someone waits on it, so under gloo a small
daemon thread waits on each posted header and raises a flag.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dvla.types import SenderCounts, TrajectoryBatch

HEADER_LEN = 20
MAGIC = 0x44564C4154524A31  # "DVLATRJ1"
WIRE_VERSION = 4  # 2: images, final_images and chunk_steps; 3: trace context; 4: the sender's counters
KIND_TRAJECTORIES = 1
KIND_END = 2  # this sender will send no more: the run is over
KIND_EPOCH_END = (
    3  # this sender leaves the current data-plane epoch (the world re-forms); header round word = that epoch
)
DEFAULT_MAX_ELEMENTS = 1 << 30  # largest accepted B*T*max(D, A, I): 4 GiB of float32 obs, 1 GiB of images

# Shape (in header letters) and dtype of every field, in wire order.
FIELD_LAYOUT: dict[str, tuple[str, torch.dtype]] = {
    "obs": ("BTD", torch.float32),
    "actions": ("BTA", torch.float32),
    "log_probs": ("BT", torch.float32),
    "values": ("BT", torch.float32),
    "rewards": ("BT", torch.float32),
    "dones": ("BT", torch.bool),
    "versions": ("BT", torch.int64),
    "lengths": ("B", torch.int64),
    "terminated": ("B", torch.bool),
    "success": ("B", torch.bool),
    "final_obs": ("BD", torch.float32),
    "group_ids": ("B", torch.int64),
    "images": ("BTI", torch.uint8),
    "final_images": ("BI", torch.uint8),
    "chunk_steps": ("BT", torch.int64),
}
assert tuple(FIELD_LAYOUT) == TrajectoryBatch.TENSOR_FIELDS, "wire layout out of date with TrajectoryBatch"

_U64 = 1 << 64
TraceContext = tuple[int, int, int]  # (trace_id < 2**128, span_id < 2**64, trace_flags < 256)

_MIN_POLL_S = 50e-6  # first sleep between polls; doubles while idle ...
_MAX_POLL_S = 2e-3  # ... up to this, so an idle receiver costs little CPU


# ------------------------------------------------------------------ process group
def resolve_backend(backend: str) -> str:
    """'auto' -> 'nccl' with CUDA, else 'gloo'."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
    if backend == "nccl" and not (torch.cuda.is_available() and dist.is_nccl_available()):
        raise ValueError("data-plane backend 'nccl' needs CUDA and an NCCL build of torch; use 'gloo'")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"unknown data-plane backend '{backend}'; use 'auto', 'gloo' or 'nccl'")
    return backend


def comm_device() -> torch.device:
    """Where message tensors must live for the current backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# ------------------------------------------------------------------ codec (no I/O)
@dataclass(frozen=True)
class Header:
    kind: int
    B: int
    T: int
    D: int
    A: int
    I: int
    worker_rank: int
    round: int  # the rollout round of a TRAJECTORIES message; the epoch an EPOCH_END ends
    payload_bytes: int
    trace_context: TraceContext | None = None
    sender: SenderCounts | None = None


def _field_shapes(B: int, T: int, D: int, A: int, I: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    sizes = {"B": B, "T": T, "D": D, "A": A, "I": I}
    return {name: (tuple(sizes[c] for c in dims), dtype) for name, (dims, dtype) in FIELD_LAYOUT.items()}


def _padded_nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    nbytes = math.prod(shape) * dtype.itemsize
    return -(-nbytes // 8) * 8


def payload_nbytes(B: int, T: int, D: int, A: int, I: int = 0) -> int:
    return sum(_padded_nbytes(s, dt) for s, dt in _field_shapes(B, T, D, A, I).values())


def _as_int64(word: int) -> int:
    """An unsigned 64-bit word as the int64 with the same bits."""
    return word - _U64 if word >= _U64 >> 1 else word


def _trace_words(ctx: TraceContext | None) -> list[int]:
    """Header words 12..15 for a trace context: trace_id high, trace_id low, span_id, trace_flags."""
    if ctx is None:
        return [0, 0, 0, 0]
    trace_id, span_id, flags = ctx
    if not (0 < trace_id < _U64 * _U64 and 0 < span_id < _U64 and 0 <= flags < 256):
        raise ValueError(
            f"TrajectoryBatch.trace_context {ctx} is not (trace_id in [1, 2**128), "
            "span_id in [1, 2**64), trace_flags in [0, 256))"
        )
    return [_as_int64(trace_id >> 64), _as_int64(trace_id % _U64), _as_int64(span_id), flags]


def _parse_trace(has_trace: int, words: list[int]) -> TraceContext | None:
    if has_trace == 0:
        if any(words):
            raise ValueError("data-plane header has no trace context (word 9 = 0) but sets trace words 12..15")
        return None
    if has_trace != 1:
        raise ValueError(f"data-plane header has trace-context flag {has_trace} (word 9), expected 0 or 1")
    hi, lo, span_id, flags = (w % _U64 for w in words)  # back to unsigned, exactly
    if hi == lo == 0 or span_id == 0 or flags >= 256:
        raise ValueError(
            f"data-plane header has a malformed trace context: trace_id {hi:#x}{lo:016x}, "
            f"span_id {span_id:#x} (both must be nonzero), trace_flags {flags} (must be < 256)"
        )
    return (hi << 64 | lo, span_id, flags)


def _header_tensor(
    kind: int,
    B: int = 0,
    T: int = 0,
    D: int = 0,
    A: int = 0,
    worker_rank: int = 0,
    round_: int = 0,
    payload_bytes: int = 0,
    I: int = 0,
    trace_context: TraceContext | None = None,
    sender: SenderCounts | None = None,
) -> torch.Tensor:
    counts = (
        [0, 0, 0, 0]
        if sender is None
        else [_as_int64(sender.worker_key), sender.episodes_produced, sender.episodes_sent, sender.env_steps_produced]
    )
    return torch.tensor(
        [
            MAGIC,
            WIRE_VERSION,
            kind,
            B,
            T,
            D,
            A,
            worker_rank,
            round_,
            int(trace_context is not None),
            payload_bytes,
            I,
            *_trace_words(trace_context),
            *counts,
        ],
        dtype=torch.int64,
    )


def end_header(worker_rank: int, kind: int = KIND_END, epoch: int = 0) -> torch.Tensor:
    return _header_tensor(kind, worker_rank=worker_rank, round_=epoch)


def encode_batch(batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(header int64[20], payload uint8[n]) for one batch; raises ValueError on a malformed batch."""
    if batch.obs.dim() != 3 or batch.actions.dim() != 3:
        raise ValueError(
            f"TrajectoryBatch.obs and .actions must be [B, T, D] and [B, T, A], "
            f"got {list(batch.obs.shape)} and {list(batch.actions.shape)}"
        )
    (B, T, D), A = batch.obs.shape, batch.actions.shape[2]
    I = batch.images.shape[2] if batch.images.dim() == 3 else -1
    parts = []
    for name, (shape, dtype) in _field_shapes(B, T, D, A, I).items():
        x = getattr(batch, name)
        if x.dtype != dtype or tuple(x.shape) != shape:
            raise ValueError(f"TrajectoryBatch.{name}: expected {dtype} {list(shape)}, got {x.dtype} {list(x.shape)}")
        raw = x.detach().contiguous().reshape(-1).view(torch.uint8)
        pad = _padded_nbytes(shape, dtype) - raw.numel()
        parts += [raw, raw.new_zeros(pad)] if pad else [raw]
    payload = torch.cat(parts)
    header = _header_tensor(
        KIND_TRAJECTORIES,
        B,
        T,
        D,
        A,
        batch.worker_rank,
        batch.round,
        payload.numel(),
        I,
        batch.trace_context,
        batch.sender,
    )
    check_header(header)
    return header, payload


def check_header(header: torch.Tensor, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Header:
    """Parse and validate a received header; ValueError says what is wrong with it."""
    if header.dtype != torch.int64 or tuple(header.shape) != (HEADER_LEN,):
        raise ValueError(f"data-plane header must be int64[{HEADER_LEN}], got {header.dtype} {list(header.shape)}")
    (magic, version, kind, B, T, D, A, worker_rank, round_, has_trace, nbytes, I, *rest) = header.tolist()
    trace_words, (key, produced, sent, steps) = rest[:4], rest[4:]
    if magic != MAGIC:
        raise ValueError(
            f"data-plane header has magic {magic:#x}, expected {MAGIC:#x}: "
            "not a dvla message, or the stream lost its place"
        )
    if version != WIRE_VERSION:
        raise ValueError(f"data-plane wire version {version} is not supported (this side speaks {WIRE_VERSION})")
    trace_context = _parse_trace(has_trace, trace_words)
    if worker_rank < 0 or round_ < 0:
        raise ValueError(f"data-plane header has negative worker_rank {worker_rank} or round {round_}")
    if kind in (KIND_END, KIND_EPOCH_END):
        if (B, T, D, A, I, nbytes) != (0, 0, 0, 0, 0, 0) or trace_context is not None:
            raise ValueError("data-plane END header must carry no sizes, no payload and no trace context")
        return Header(kind, 0, 0, 0, 0, 0, worker_rank, round_, 0)
    if kind != KIND_TRAJECTORIES:
        raise ValueError(f"data-plane header has unknown message kind {kind}")
    if min(B, T, D, A) < 1 or I < 0 or B * T * max(D, A, I) > max_elements:
        raise ValueError(
            f"data-plane header sizes B={B} T={T} D={D} A={A} I={I} are outside "
            f"[1, ...] (I >= 0) with B*T*max(D, A, I) <= {max_elements}"
        )
    expected = payload_nbytes(B, T, D, A, I)
    if nbytes != expected:
        raise ValueError(f"data-plane header announces {nbytes} payload bytes, sizes imply {expected}")
    if min(produced, sent, steps) < 0 or sent > produced:
        raise ValueError(
            f"data-plane header carries counters produced={produced} sent={sent} steps={steps}: "
            "negative, or more sent than produced"
        )
    sender = SenderCounts(key % _U64, produced, sent, steps) if key else None
    return Header(kind, B, T, D, A, I, worker_rank, round_, nbytes, trace_context, sender)


def decode_payload(header: Header, payload: torch.Tensor) -> TrajectoryBatch:
    """Views into `payload` (no copies), one per field."""
    assert payload.dtype == torch.uint8 and payload.numel() == header.payload_bytes
    fields, offset = {}, 0
    for name, (shape, dtype) in _field_shapes(header.B, header.T, header.D, header.A, header.I).items():
        nbytes = math.prod(shape) * dtype.itemsize
        fields[name] = payload[offset : offset + nbytes].view(dtype).view(shape)
        offset += _padded_nbytes(shape, dtype)
    return TrajectoryBatch(
        **fields,
        worker_rank=header.worker_rank,
        round=header.round,
        trace_context=header.trace_context,
        sender=header.sender,
    )


# ------------------------------------------------------------------ send / receive
class TrajectorySender:
    """Sends batches to rank `dst`; each call returns once the data has left."""

    def __init__(self, dst: int = 0):
        self.dst = dst
        self.device = comm_device()
        self.num_sent = 0

    def send(self, batch: TrajectoryBatch) -> None:
        header, payload = encode_batch(batch)
        dist.send(header.to(self.device), dst=self.dst)
        dist.send(payload.to(self.device), dst=self.dst)
        self.num_sent += 1

    def send_end(self, epoch_end: int | None = None) -> None:
        """END: this sender is done for the run; with epoch_end=e, it only leaves data-plane epoch e."""
        kind, epoch = (KIND_END, 0) if epoch_end is None else (KIND_EPOCH_END, epoch_end)
        dist.send(end_header(dist.get_rank(), kind, epoch).to(self.device), dst=self.dst)


class _PostedHeader:
    """One header irecv posted to one source, asked without blocking whether it has arrived."""

    def __init__(self, src: int, device: torch.device, use_waiter_thread: bool):
        self.tensor = torch.empty(HEADER_LEN, dtype=torch.int64, device=device)
        self.work = dist.irecv(self.tensor, src=src)
        self._flag: threading.Event | None = None
        self._error: BaseException | None = None
        if use_waiter_thread:
            self._flag = threading.Event()
            threading.Thread(target=self._wait, name=f"dataplane-header-from-{src}", daemon=True).start()

    def _wait(self) -> None:
        try:
            self.work.wait()  # releases the GIL
        except BaseException as e:  # handed to the receiving thread in arrived()
            self._error = e
        self._flag.set()

    def arrived(self) -> bool:
        if self._flag is None:
            return self.work.is_completed()
        if self._flag.is_set() and self._error is not None:
            raise self._error
        return self._flag.is_set()

    def received(self) -> torch.Tensor:
        """The header, on the CPU; only once arrived()."""
        if self._flag is None:
            self.work.wait()  # NCCL: the copy below must queue behind the receive
        return self.tensor.cpu()


class TrajectoryReceiver:
    """Receives batches from `sources` in arrival order until each has sent END.

    Batches come back on the backend's device (CUDA under NCCL), as views into
    one buffer per message.
    """

    def __init__(self, sources: list[int], max_elements: int = DEFAULT_MAX_ELEMENTS):
        if not sources or len(set(sources)) != len(sources):
            raise ValueError(f"receiver needs distinct source ranks, got {sources}")
        self.max_elements = max_elements
        self.device = comm_device()
        self._use_waiter_threads = dist.get_backend() != "nccl"
        self._posted = {src: self._post(src) for src in sources}
        self._order = deque(sources)  # round robin: a busy source cannot starve the others
        self.num_received = {src: 0 for src in sources}
        self.ended: dict[int, int] = {}  # source -> KIND_END or KIND_EPOCH_END, once it has sent one

    @property
    def open_sources(self) -> list[int]:
        """Sources that have not sent END (nor a header we could not parse)."""
        return sorted(self._posted)

    def run_ended(self) -> bool:
        """Every source sent END (not EPOCH_END): no more will come in this run."""
        return not self._posted and all(k == KIND_END for k in self.ended.values())

    def recv(self, timeout_s: float | None = None) -> tuple[int, TrajectoryBatch | None]:
        """(source rank, batch), or (source rank, None) when that source sent END (or EPOCH_END: see .ended).

        Raises TimeoutError after `timeout_s` without a message, RuntimeError when
        no source is open, ValueError on a malformed header (that source is closed).
        """
        if not self._posted:
            raise RuntimeError("data-plane receiver has no open source: every source sent END")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        sleep_s = _MIN_POLL_S
        while True:
            src = self._ready_source()
            if src is not None:
                return src, self._take(src)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no data-plane message from sources {self.open_sources} in {timeout_s} s")
            time.sleep(sleep_s)
            sleep_s = min(2 * sleep_s, _MAX_POLL_S)

    def _post(self, src: int) -> _PostedHeader:
        return _PostedHeader(src, self.device, self._use_waiter_threads)

    def _ready_source(self) -> int | None:
        for k, src in enumerate(self._order):
            if self._posted[src].arrived():
                self._order.rotate(-(k + 1))
                return src
        return None

    def _close(self, src: int) -> None:
        del self._posted[src]
        self._order.remove(src)

    def _take(self, src: int) -> TrajectoryBatch | None:
        try:
            header = check_header(self._posted[src].received(), self.max_elements)
        except ValueError:
            self._close(src)  # the rest of its stream cannot be parsed
            raise
        if header.kind in (KIND_END, KIND_EPOCH_END):
            self._close(src)
            self.ended[src] = header.kind
            return None
        payload = torch.empty(header.payload_bytes, dtype=torch.uint8, device=self.device)
        dist.recv(payload, src=src)
        # Only now: a header irecv posted earlier would have matched this payload.
        self._posted[src] = self._post(src)
        self.num_received[src] += 1
        return decode_payload(header, payload)
