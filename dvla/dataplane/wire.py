"""The data plane's wire format (never pickled): encoding and checking, no I/O.

Per message, from one sender to one receiver:

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

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
