"""The weight plane's side channel: a version's bytes over a plain TCP socket, at the wire's speed.

gRPC keeps control and integrity: a rollout asks weight_control for a version over gRPC
(WeightControl.OpenFetch) and gets its header (version, manifest with sha256), the
xxh3-128 digest of its bytes and the bulk port. It then connects to the bulk port, names
the version, and reads the bytes straight into its buffer: no protobuf message per
chunk, no copy per message, no HTTP/2 framing. Python gRPC moves bytes at ~0.2-0.3 of a
raw TCP copy; this channel comes close to one (`dvla bench --weights`).

Integrity. weight_control checks the manifest's sha256 when the actor publishes. A
transfer is checked with xxh3-128 (xxhash, ~8 GB/s, against ~1.4 GB/s for sha256, which
alone would halve the channel's speed): it catches corruption and truncation, not a
forger. The bulk channel is as open as FetchWeights (fetches need no token); where the
network is not trusted, configure TLS: the bulk channel is then off and the bytes travel
over the authenticated gRPC stream.

Protocol (one version per connection):
    client -> server   8-byte big-endian version, 32-byte sha256 of the version (from its manifest)
    server -> client   1 status byte (0 ok, 1 not held: evicted meanwhile), 8-byte big-endian length, the bytes
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable

from dvla.weights import transfer_hasher

log = logging.getLogger("dvla.rpc.bulk")

_REQUEST = struct.Struct(">Q32s")
_REPLY = struct.Struct(">BQ")
OK, NOT_HELD = 0, 1
HASH_STEP = 8 << 20  # hash the bytes received so far every 8 MiB, while the sender keeps filling the socket


class BulkError(Exception):
    """A bulk transfer failed: `corrupt` when bytes arrived but do not match, `gone` when the version was
    dropped meanwhile (fetch the newest again); else the channel could not be used (unreachable, cut short)."""

    def __init__(self, message: str, corrupt: bool = False, gone: bool = False):
        super().__init__(message)
        self.corrupt, self.gone = corrupt, gone


class BulkServer:
    """Serves the versions `lookup(version, sha256_hex)` finds (a buffer that must not change, or None); a
    thread per connection (sendall releases the GIL, so transfers run beside weight_control's event loop)."""

    def __init__(self, host: str, port: int, lookup: Callable[[int, str], memoryview | None], max_connections=64):
        self.sock = socket.create_server((host, port), backlog=128)
        self.port = self.sock.getsockname()[1]
        self._lookup = lookup
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.transfers = 0
        self._thread = threading.Thread(target=self._accept_forever, name="bulk-accept", daemon=True)
        self._thread.start()

    def _accept_forever(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(timeout=5):
                conn.close()  # too many at once: the client falls back to gRPC
                continue
            threading.Thread(target=self._serve, args=(conn,), name="bulk-send", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(30)
                request = _recv_exactly(conn, _REQUEST.size)
                if request is None:
                    return
                version, sha = _REQUEST.unpack(request)
                data = self._lookup(version, sha.hex())
                if data is None:
                    conn.sendall(_REPLY.pack(NOT_HELD, 0))
                    return
                conn.settimeout(None)
                conn.sendall(_REPLY.pack(OK, len(data)))
                conn.sendall(data)
                with self._lock:
                    self.bytes_sent += len(data)
                    self.transfers += 1
        except OSError as e:
            log.debug("bulk transfer cut short: %s", e)
        finally:
            self._slots.release()

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


def _recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def receive(
    host: str, port: int, version: int, sha256: str, into: memoryview, expected_digest: str, timeout_s: float = 300.0
) -> None:
    """Ask host:port for `version` (whose manifest has `sha256`) and read exactly len(into) bytes into `into`,
    checking them against expected_digest while they arrive. BulkError when the channel cannot be used or
    the bytes are wrong."""
    n = len(into)
    deadline = time.monotonic() + timeout_s
    try:
        conn = socket.create_connection((host, port), timeout=min(5.0, timeout_s))
    except OSError as e:
        raise BulkError(f"cannot connect to the bulk port {host}:{port}: {e}") from None
    with conn:
        try:
            conn.sendall(_REQUEST.pack(version, bytes.fromhex(sha256)))
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            head = _recv_exactly(conn, _REPLY.size)
            if head is None:
                raise BulkError(f"bulk port {host}:{port} closed the connection before answering")
            status, length = _REPLY.unpack(head)
            if status != OK:
                raise BulkError(f"bulk port {host}:{port} no longer holds version {version}", gone=True)
            if length != n:
                raise BulkError(f"bulk port {host}:{port} offers {length} bytes, the manifest says {n}", corrupt=True)
            h, got, hashed = transfer_hasher(), 0, 0
            while got < n:
                k = conn.recv_into(into[got:])
                if k == 0:
                    raise BulkError(f"bulk transfer from {host}:{port} ended after {got} of {n} bytes")
                got += k
                if got - hashed >= HASH_STEP:
                    h.update(into[hashed:got])
                    hashed = got
                if time.monotonic() > deadline:
                    raise BulkError(f"bulk transfer from {host}:{port} took over {timeout_s:.0f}s")
            h.update(into[hashed:got])
        except TimeoutError:
            raise BulkError(f"bulk transfer from {host}:{port} timed out") from None
        except OSError as e:
            raise BulkError(f"bulk transfer from {host}:{port} failed: {e}") from None
    got_digest = h.hexdigest()
    if got_digest != expected_digest:
        raise BulkError(
            f"bulk transfer from {host}:{port}: xxh3-128 {got_digest[:12]}… does not match {expected_digest[:12]}…",
            corrupt=True,
        )
