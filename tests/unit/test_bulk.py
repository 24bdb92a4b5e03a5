"""The bulk side channel over real sockets: exact bytes, checked, and clear failures."""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from dvla.rpc import bulk
from dvla.weights import transfer_digest


@pytest.fixture
def served():
    data = bytearray(os.urandom(3 << 20) + b"tail")  # not a multiple of anything
    sha = hashlib.sha256(data).hexdigest()
    lookups = []

    def lookup(version: int, sha256: str):
        lookups.append((version, sha256))
        return memoryview(data) if (version, sha256) == (7, sha) else None

    srv = bulk.BulkServer("127.0.0.1", 0, lookup)
    yield srv, data, sha, lookups
    srv.close()


def test_a_version_arrives_whole_and_checked(served):
    srv, data, sha, lookups = served
    out = bytearray(len(data))
    bulk.receive("127.0.0.1", srv.port, 7, sha, memoryview(out), transfer_digest(data))
    assert out == data
    assert lookups == [(7, sha)]
    deadline = time.monotonic() + 5
    while srv.transfers == 0 and time.monotonic() < deadline:  # counted once the server's sendall returns
        time.sleep(0.01)
    assert (srv.bytes_sent, srv.transfers) == (len(data), 1)


def test_a_version_no_longer_held_says_so(served):
    srv, data, sha, _ = served
    out = bytearray(len(data))
    with pytest.raises(bulk.BulkError, match="no longer holds version 8") as e:
        bulk.receive("127.0.0.1", srv.port, 8, sha, memoryview(out), transfer_digest(data))
    assert e.value.gone and not e.value.corrupt
    with pytest.raises(bulk.BulkError) as e:  # same number, other bytes: not the version asked for
        bulk.receive("127.0.0.1", srv.port, 7, "0" * 64, memoryview(out), transfer_digest(data))
    assert e.value.gone


def test_bytes_that_do_not_match_the_digest_are_refused(served):
    srv, data, sha, _ = served
    out = bytearray(len(data))
    with pytest.raises(bulk.BulkError, match="does not match") as e:
        bulk.receive("127.0.0.1", srv.port, 7, sha, memoryview(out), transfer_digest(b"something else"))
    assert e.value.corrupt
    with pytest.raises(bulk.BulkError, match="offers") as e:  # the manifest promised another size
        bulk.receive("127.0.0.1", srv.port, 7, sha, memoryview(bytearray(10)), transfer_digest(data))
    assert e.value.corrupt


def test_a_transfer_cut_short_and_a_closed_port_fail_clearly():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def half_then_hang_up():
        conn, _ = listener.accept()
        with conn:
            asked = b""
            while len(asked) < 41:  # b"G", the version, the sha256: all read, so closing is a clean end
                asked += conn.recv(41 - len(asked))
            conn.sendall(struct.pack(">BQ", 0, 1000) + b"x" * 400)

    t = threading.Thread(target=half_then_hang_up)
    t.start()
    with pytest.raises(bulk.BulkError, match="ended after 400 of 1000 bytes") as e:
        bulk.receive("127.0.0.1", port, 1, "ab" * 32, memoryview(bytearray(1000)), "00")
    assert not e.value.corrupt and not e.value.gone
    t.join()
    listener.close()
    with pytest.raises(bulk.BulkError, match="cannot connect"):
        bulk.receive("127.0.0.1", port, 1, "ab" * 32, memoryview(bytearray(1000)), "00")


def test_many_fetchers_at_once_each_get_their_copy(served):
    srv, data, sha, _ = served
    outs = [bytearray(len(data)) for _ in range(8)]
    errors = []

    def fetch(out):
        try:
            bulk.receive("127.0.0.1", srv.port, 7, sha, memoryview(out), transfer_digest(data))
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=fetch, args=(o,)) for o in outs]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert all(o == data for o in outs)
    deadline = time.monotonic() + 5
    while srv.transfers < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.transfers == 8
