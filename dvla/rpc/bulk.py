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

The actor publishes the same way: WeightControl.OpenPublish (token-protected, like
PublishWeights) checks the header and returns a one-time ticket; the bytes follow on the
bulk port and weight_control answers once the version is stored (sha256 checked).

Protocol (one version per connection, all integers big-endian):
    fetch    client: b"G", 8-byte version, 32-byte sha256 of the version (from its manifest)
             server: 1 status byte (0 ok, 1 not held: dropped meanwhile), 8-byte length, the bytes
    publish  client: b"P", 16-byte ticket
             server: 1 status byte (0 send, else refused), 4-byte length, a message
             client: the bytes (the manifest's total_bytes)
             server: 1 status byte (0 stored, else refused), 4-byte length, a message "CODE: text"
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
_ANSWER = struct.Struct(">BI")
OK, NOT_HELD, REFUSED = 0, 1, 2
FETCH, PUBLISH = b"G", b"P"
TICKET_BYTES = 16


class Incoming:
    """What a publish ticket redeems: the buffer the bytes go into, `accept(end)` as they arrive (checks
    them in), and `finish()` once all are in: '' when stored, else 'CODE: why not'."""

    def __init__(self, buf: bytearray, accept: Callable[[int], None], finish: Callable[[], str]):
        self.buf, self.accept, self.finish = buf, accept, finish


HASH_STEP = 8 << 20  # hash the bytes received so far every 8 MiB, while the sender keeps filling the socket


class BulkError(Exception):
    """A bulk transfer failed: `corrupt` when bytes arrived but do not match, `gone` when the version was
    dropped meanwhile (fetch the newest again), `refused` when weight_control would not store a publish;
    else the channel could not be used (unreachable, cut short)."""

    def __init__(self, message: str, corrupt: bool = False, gone: bool = False, refused: str = ""):
        super().__init__(message)
        self.corrupt, self.gone, self.refused = corrupt, gone, refused  # refused: weight_control's 'CODE: why'


class BulkServer:
    """Serves the versions `lookup(version, sha256_hex)` finds (a buffer that must not change, or None), and
    takes publishes whose ticket `redeem` knows; a thread per connection (sendall and recv_into release the
    GIL, so transfers run beside weight_control's event loop)."""

    def __init__(
        self,
        host: str,
        port: int,
        lookup: Callable[[int, str], memoryview | None],
        redeem: Callable[[bytes], Incoming | str] | None = None,
        max_connections: int = 64,
    ):
        self.sock = socket.create_server((host, port), backlog=128)
        self.port = self.sock.getsockname()[1]
        self._lookup = lookup
        self._redeem = redeem  # publish tickets -> Incoming, or why not
        self._slots = threading.BoundedSemaphore(max_connections)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self.bytes_sent = 0
        self.bytes_received = 0
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
                op = _recv_exactly(conn, 1)
                if op == PUBLISH and self._redeem is not None:
                    self._take(conn)
                    return
                request = _recv_exactly(conn, _REQUEST.size) if op == FETCH else None
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
        except Exception:  # a bug, not a peer: say so, and keep serving the others
            log.exception("bulk port: a transfer failed")
        finally:
            self._slots.release()

    def _take(self, conn: socket.socket) -> None:
        ticket = _recv_exactly(conn, TICKET_BYTES)
        got = self._redeem(ticket) if ticket is not None else "INVALID_ARGUMENT: no ticket"
        if isinstance(got, str):
            _answer(conn, REFUSED, got)
            return
        _answer(conn, OK, "")
        view, n, received, checked = memoryview(got.buf), len(got.buf), 0, 0
        conn.settimeout(300)
        while received < n:
            k = conn.recv_into(view[received:])
            if k == 0:
                return  # the actor went away: the upload is dropped, nothing stored
            received += k
            if received - checked >= HASH_STEP:
                got.accept(received)
                checked = received
        got.accept(received)
        why = got.finish()
        if not why:
            with self._lock:
                self.bytes_received += n  # before the answer: whoever hears it sees the count
        _answer(conn, REFUSED if why else OK, why)

    def close(self) -> None:
        self._closed.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(5)


def _answer(conn: socket.socket, status: int, message: str) -> None:
    text = message.encode()
    conn.sendall(_ANSWER.pack(status, len(text)) + text)


def _read_answer(conn: socket.socket, where: str) -> tuple[int, str]:
    head = _recv_exactly(conn, _ANSWER.size)
    if head is None:
        raise BulkError(f"bulk port {where} closed the connection before answering")
    status, length = _ANSWER.unpack(head)
    text = _recv_exactly(conn, length) if length else b""
    return status, (text or b"").decode("utf-8", "replace")


def send(host: str, port: int, ticket: bytes, buf, timeout_s: float = 300.0) -> None:
    """Publish: redeem `ticket` at host:port and send `buf`. BulkError when the channel cannot be used;
    BulkError(refused=...) carrying weight_control's 'CODE: why' when it does not store the version."""
    where = f"{host}:{port}"
    try:
        conn = socket.create_connection((host, port), timeout=min(5.0, timeout_s))
    except OSError as e:
        raise BulkError(f"cannot connect to the bulk port {where}: {e}") from None
    with conn:
        try:
            conn.settimeout(timeout_s)
            conn.sendall(PUBLISH + ticket)
            status, why = _read_answer(conn, where)
            if status != OK:
                raise BulkError(f"bulk port {where} refused the publish: {why}", refused=why)
            conn.sendall(memoryview(buf))
            status, why = _read_answer(conn, where)
        except TimeoutError:
            raise BulkError(f"publish over the bulk port {where} timed out") from None
        except OSError as e:
            raise BulkError(f"publish over the bulk port {where} failed: {e}") from None
    if status != OK:
        raise BulkError(f"weight_control did not store the version: {why}", refused=why)


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
            conn.sendall(FETCH + _REQUEST.pack(version, bytes.fromhex(sha256)))
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
