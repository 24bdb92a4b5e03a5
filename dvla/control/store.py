"""Versioned weight store: the newest policy versions in host memory.

An upload is staged in its own buffer and becomes visible only when it is
complete and its sha256 matches, so a bad or interrupted publish never touches
what is already served. Versions only go forward, until the actor is started
afresh from a checkpoint: then every stored version is dropped (`rewind`) and the
new actor publishes its checkpoint's version first. A partial version (only the
tensors that train) names the full version it builds on; the newest full version is
held for as long as it is the base, even once older than the newest `keep`. No I/O
here; the clock is injected.
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
    base: Base | None = None  # a partial version: the full version holding the tensors it leaves out

    @property
    def partial(self) -> bool:
        return self.base is not None


@dataclass(frozen=True)
class Base:
    """The full version a partial one builds on: its number and its manifest's sha256."""

    version: int
    sha256: str


@dataclass
class Upload:
    """One publish in progress; bytes must arrive in order."""

    version: int
    manifest: Manifest
    final: bool
    publisher_id: str
    buf: bytearray
    base: Base | None = None
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

    def accept(self, end: int) -> None:
        """Bytes [received, end) were written into buf in place (by a socket, with no copy): check them in."""
        if not self.received <= end <= len(self.buf):
            raise InvalidArgument(f"version {self.version}: bytes up to {end} of {len(self.buf)} cannot follow "
                                  f"{self.received}")  # fmt: skip
        view = memoryview(self.buf)[self.received : end]
        self._hash.update(view)
        self._fast.update(view)
        self.received = end


class VersionStore:
    def __init__(self, keep: int, max_version_bytes: int, clock_ns: Callable[[], int]):
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.keep = keep
        self.max_version_bytes = max_version_bytes
        self._clock_ns = clock_ns
        self._versions: OrderedDict[int, StoredVersion] = OrderedDict()
        self._base: StoredVersion | None = None  # the newest full version: held while partial ones build on it
        self.publishes_rejected = 0

    # ------------------------------------------------------------ reading
    @property
    def latest(self) -> StoredVersion | None:
        return next(reversed(self._versions.values())) if self._versions else None

    def get(self, version: int) -> StoredVersion:
        v = self._versions.get(version)
        if v is None and self._base is not None and self._base.version == version:
            v = self._base
        if v is None:
            held = [x.version for x in self.held()] or "none"
            raise NotFound(f"version {version} is not held (held: {held})")
        return v

    def versions(self) -> list[StoredVersion]:
        """The newest `keep` versions."""
        return list(self._versions.values())

    def held(self) -> list[StoredVersion]:
        """Every version held: the newest `keep`, and the full version partial ones build on, if older."""
        base = self._base
        older = [base] if base is not None and base.version not in self._versions else []
        return older + list(self._versions.values())

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

    def begin(
        self, version: int, manifest: Manifest, final: bool = False, publisher_id: str = "", base: Base | None = None
    ) -> Upload:
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
            self._check_base(version, base)
        except Exception:
            self.publishes_rejected += 1
            raise
        return Upload(version, manifest, final, publisher_id, bytearray(manifest.total_bytes), base)

    def _check_base(self, version: int, base: Base | None) -> None:
        if base is None:
            return
        held = self._base
        if held is None or held.version != base.version or held.manifest.sha256 != base.sha256:
            have = "none" if held is None else f"v{held.version} ({held.manifest.sha256[:12]}…)"
            raise NotFound(
                f"version {version} is partial on full version {base.version} ({base.sha256[:12]}…), which is not "
                f"held (the full version held: {have}); publish a full version"
            )

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
            self._check_base(up.version, up.base)
        except Exception:
            self.publishes_rejected += 1
            raise
        stored = StoredVersion(
            up.version, up.manifest, up.buf, up.final, self._clock_ns(), up.publisher_id, up._fast.hexdigest(), up.base
        )
        self._versions[up.version] = stored
        if up.base is None:
            self._base = stored
        while len(self._versions) > self.keep:
            self._versions.popitem(last=False)
        return stored

    def rewind(self) -> list[int]:
        """Drop every stored version (the actor that made them is gone); the versions dropped."""
        dropped = [v.version for v in self.held()]
        self._versions.clear()
        self._base = None
        return dropped

    def reject(self) -> None:
        """Count a publish that failed before begin() (e.g. a malformed first message)."""
        self.publishes_rejected += 1
