"""Named tensors <-> one flat byte buffer plus a manifest. Pure: no I/O.

A policy version travels and rests as a single contiguous buffer (so the control
plane can checksum, chunk and serve it without knowing about torch) and a
manifest that says where each tensor lives in it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import xxhash

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
ALIGN = 64  # tensors start on cache-line boundaries so views are aligned for any dtype


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class Manifest:
    tensors: tuple[TensorEntry, ...]
    total_bytes: int
    sha256: str

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent entry."""
        if self.total_bytes < 0:
            raise ValueError(f"manifest total_bytes {self.total_bytes} is negative")
        seen = set()
        for t in self.tensors:
            if not t.name:
                raise ValueError("manifest has a tensor with an empty name")
            if t.name in seen:
                raise ValueError(f"manifest names tensor '{t.name}' twice")
            seen.add(t.name)
            if t.dtype not in DTYPES:
                raise ValueError(f"tensor '{t.name}': unknown dtype '{t.dtype}'")
            if any(d < 0 for d in t.shape):
                raise ValueError(f"tensor '{t.name}': negative dimension in shape {t.shape}")
            numel = 1
            for d in t.shape:
                numel *= d
            itemsize = torch.empty((), dtype=DTYPES[t.dtype]).element_size()
            if t.nbytes != numel * itemsize:
                raise ValueError(f"tensor '{t.name}': nbytes {t.nbytes} != {numel} elements x {itemsize} bytes")
            if t.offset < 0 or t.offset + t.nbytes > self.total_bytes:
                raise ValueError(
                    f"tensor '{t.name}': bytes [{t.offset}, {t.offset + t.nbytes}) lie outside the "
                    f"{self.total_bytes}-byte buffer"
                )
        # no two tensors may share a byte: one write into the buffer would change another tensor
        spans = sorted((t.offset, t.offset + t.nbytes, t.name) for t in self.tensors if t.nbytes)
        for (_, end, a), (start, end_b, b) in zip(spans, spans[1:]):
            if start < end:
                raise ValueError(f"tensors '{a}' and '{b}' overlap in the buffer (bytes [{start}, {min(end, end_b)}))")
        if len(self.sha256) != 64:
            raise ValueError(f"manifest sha256 '{self.sha256}' is not a 64-digit hex digest")


def transfer_digest(buf) -> str:
    """xxh3-128 hex digest of a version's bytes, what a transfer is checked against: ~6x faster than sha256,
    so checking it costs a small fraction of moving the bytes. It catches corruption and truncation, not a
    forger: the manifest's sha256 (checked when the actor publishes) is the version's identity."""
    return xxhash.xxh3_128_hexdigest(buf)


def transfer_hasher() -> xxhash.xxh3_128:
    """The incremental form of transfer_digest."""
    return xxhash.xxh3_128()


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def pack(tensors: dict[str, torch.Tensor]) -> tuple[Manifest, bytearray]:
    """Copy named tensors into one buffer; returns its manifest and the buffer."""
    entries, offset = [], 0
    for name, t in tensors.items():
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor '{name}': dtype {t.dtype} cannot travel")
        nbytes = t.numel() * t.element_size()
        entries.append(TensorEntry(name, DTYPE_NAMES[t.dtype], tuple(t.shape), offset, nbytes))
        offset = _aligned(offset + nbytes)
    buf = bytearray(offset)
    for e, t in zip(entries, tensors.values()):
        if e.nbytes:
            dst = torch.frombuffer(buf, dtype=torch.uint8, count=e.nbytes, offset=e.offset)
            dst.copy_(t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8))
    return Manifest(tuple(entries), len(buf), hashlib.sha256(buf).hexdigest()), buf


def unpack(manifest: Manifest, buf: bytes | bytearray | memoryview, verify: bool = True) -> dict[str, torch.Tensor]:
    """Tensors viewing (not copying) `buf`; checks the manifest and, if asked, the sha256."""
    manifest.validate()
    if len(buf) != manifest.total_bytes:
        raise ValueError(f"buffer holds {len(buf)} bytes, manifest says {manifest.total_bytes}")
    if verify:
        digest = hashlib.sha256(buf).hexdigest()
        if digest != manifest.sha256:
            raise ValueError(f"sha256 mismatch: buffer {digest[:12]}…, manifest {manifest.sha256[:12]}…")
    if isinstance(buf, bytes):  # torch.frombuffer wants a writable buffer to avoid a warning
        buf = bytearray(buf)
    out = {}
    for e in manifest.tensors:
        dtype = DTYPES[e.dtype]
        if e.nbytes == 0:
            out[e.name] = torch.empty(e.shape, dtype=dtype)
            continue
        raw = torch.frombuffer(buf, dtype=torch.uint8, count=e.nbytes, offset=e.offset)
        out[e.name] = raw.view(dtype).reshape(e.shape)
    return out
