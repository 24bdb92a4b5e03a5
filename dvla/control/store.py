"""Versioned weight store: the newest policy versions in host memory.

An upload is staged in its own buffer and becomes visible only when it is
complete and its sha256 matches, so a bad or interrupted publish never touches
what is already served. Versions only go forward, until the actor is started
afresh from a checkpoint: then every stored version is dropped (`rewind`) and the
new actor publishes its checkpoint's version first. No I/O here; the clock is
injected.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from dvla.weights import Manifest, transfer_hasher

from .errors import AlreadyExists, DataLoss, InvalidArgument, NotFound, OutOfOrder, TooLarge


@dataclass(frozen=True)
class StoredVersion:
    version: int
    manifest: Manifest
    data: bytearray  # owned by this entry; never written after commit
    final: bool
    published_unix_ns: int
    publisher_id: str = ""
    transfer_digest: str = ""  # xxh3-128 of data (dvla.weights.transfer_digest), for side-channel fetches


@dataclass
class Upload:
    """One publish in progress; bytes must arrive in order."""

    version: int
    manifest: Manifest
    final: bool
    publisher_id: str
    buf: bytearray
    received: int = 0
    _hash: hashlib._Hash = field(default_factory=hashlib.sha256)
    _fast: object = field(default_factory=transfer_hasher)

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.received:
            raise InvalidArgument(
                f"version {self.version}: chunk at offset {offset}, expected {self.received} "
                "(chunks must arrive in order)"
            )
        end = offset + len(data)
        if end > len(self.buf):
            raise InvalidArgument(
                f"version {self.version}: chunk ends at byte {end}, past the manifest's total_bytes {len(self.buf)}"
            )
        self.buf[offset:end] = data
        self._hash.update(data)
        self._fast.update(data)
        self.received = end


class VersionStore:
    def __init__(self, keep: int, max_version_bytes: int, clock_ns: Callable[[], int]):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.keep = keep
        self.max_version_bytes = max_version_bytes
        self._clock_ns = clock_ns
        self._versions: OrderedDict[int, StoredVersion] = OrderedDict()
        self.publishes_rejected = 0

    # ------------------------------------------------------------ reading
    @property
    def latest(self) -> StoredVersion | None:
        return next(reversed(self._versions.values())) if self._versions else None

    def get(self, version: int) -> StoredVersion:
        try:
            return self._versions[version]
        except KeyError:
            held = list(self._versions) or "none"
            raise NotFound(f"version {version} is not held (held: {held})") from None

    def versions(self) -> list[StoredVersion]:
        return list(self._versions.values())

    # ------------------------------------------------------------ writing
    def _check_order(self, version: int) -> None:
        latest = self.latest
        if latest is None:
            return
        if version == latest.version:
            raise AlreadyExists(f"version {version} was already published")
        if version < latest.version:
            raise OutOfOrder(
                f"version {version} is older than the latest version {latest.version}; versions only go forward"
            )
        if latest.final:
            raise OutOfOrder(f"version {latest.version} was marked final; no version may follow it")

    def begin(self, version: int, manifest: Manifest, final: bool = False, publisher_id: str = "") -> Upload:
        try:
            if version < 0:
                raise InvalidArgument(f"version {version} is negative")
            if manifest.total_bytes > self.max_version_bytes:
                raise TooLarge(
                    f"version {version} has {manifest.total_bytes} bytes, over the limit of {self.max_version_bytes}"
                )
            try:
                manifest.validate()
            except ValueError as e:
                raise InvalidArgument(f"version {version}: bad manifest: {e}") from None
            self._check_order(version)
        except Exception:
            self.publishes_rejected += 1
            raise
        return Upload(version, manifest, final, publisher_id, bytearray(manifest.total_bytes))

    def commit(self, up: Upload) -> StoredVersion:
        try:
            if up.received != up.manifest.total_bytes:
                raise DataLoss(
                    f"version {up.version}: stream ended after {up.received} of {up.manifest.total_bytes} bytes"
                )
            digest = up._hash.hexdigest()
            if digest != up.manifest.sha256:
                raise DataLoss(
                    f"version {up.version}: sha256 of received bytes {digest[:16]}… "
                    f"does not match the manifest's {up.manifest.sha256[:16]}…"
                )
            self._check_order(up.version)  # another publish may have landed meanwhile
        except Exception:
            self.publishes_rejected += 1
            raise
        stored = StoredVersion(
            up.version, up.manifest, up.buf, up.final, self._clock_ns(), up.publisher_id, up._fast.hexdigest()
        )
        self._versions[up.version] = stored
        while len(self._versions) > self.keep:
            self._versions.popitem(last=False)
        return stored

    def rewind(self) -> list[int]:
        """Drop every stored version (the actor that made them is gone); the versions dropped."""
        dropped = list(self._versions)
        self._versions.clear()
        return dropped

    def reject(self) -> None:
        """Count a publish that failed before begin() (e.g. a malformed first message)."""
        self.publishes_rejected += 1
