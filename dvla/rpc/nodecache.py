"""Node-local replication of weight versions: one fetch per node, however many rollouts it runs.

D-VLA's local topology replication, for the weight plane: the first rollout on a node to
want a version fetches it from weight_control and leaves its bytes in a shared-memory
folder (/dev/shm); every other rollout on the node maps that file and checks it
against the version's transfer digest instead of fetching again. So a version crosses
the network (and weight_control's sockets) once per node.

- One writer per version: an exclusive flock on `<file>.lock` (released by the kernel
  if its holder dies). The writer returns its bytes to its own caller at once and leaves
  the copy on a thread, written to a temporary name and renamed into place when whole,
  so a reader never sees a half-written file; then it lets the waiting readers in.
- Every reader checks the bytes it maps (xxh3-128, dvla.weights.transfer_digest): a
  corrupt or truncated file is removed and the version fetched again.
- Files are named by version and sha256, so a file can only ever hold the bytes its
  name promises, across weight_control restarts and actor rewinds alike.
- The newest `keep` versions stay; older files are removed by whoever writes a new one.
  A reader that still maps a removed file keeps its pages until it lets go.
- The writer keeps the bytes it fetched (in its own buffer); readers map the file
  copy-on-write (MAP_PRIVATE): the tensors viewing it can be written without touching
  the shared copy, and reading it costs no copy.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import mmap
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from dvla.weights import transfer_digest

Buffer = mmap.mmap | bytearray

log = logging.getLogger("dvla.rpc.nodecache")

DEFAULT_ROOT = Path("/dev/shm/dvla-weights")


def resolve_root(setting: str, address: str) -> Path | None:
    """The folder for weight_control at `address`: '' none; 'auto' under /dev/shm where it exists, when
    weight_control runs on another host (on this one, fetching from it is a local copy already, which a
    node copy would only add to: `dvla bench --weights`); else under the folder given."""
    if not setting:
        return None
    if setting == "auto":
        if not Path("/dev/shm").is_dir() or not os.access("/dev/shm", os.W_OK) or on_this_host(address):
            return None
        base = DEFAULT_ROOT
    else:
        base = Path(setting)
    return base / re.sub(r"[^A-Za-z0-9_.-]", "_", address)


def on_this_host(address: str) -> bool:
    """Whether 'host:port' names this machine (a loopback address, or one of this host name's)."""
    host = address.rpartition(":")[0].strip("[]") or address
    try:
        theirs = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # not resolvable now: treat as remote (the cache is then on, which is harmless)
    if any(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in theirs):
        return True
    try:
        ours = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        return False
    return bool(theirs & ours)


class NodeCache:
    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = root, keep
        self.hits = 0  # versions read from the node's copy
        self.fills = 0  # versions this process fetched and left for the others
        self.bad = 0  # files found corrupt and replaced
        self._written: list[Path] = []
        self._writing: threading.Thread | None = None
        self.off = False  # set when a copy cannot be left (shared memory full): fetch privately from then on

    def _path(self, version: int, sha256: str) -> Path:
        return self.root / f"v{version:08d}-{sha256[:32]}.bin"

    def get(self, version: int, sha256: str, nbytes: int, digest: str, fetch: Callable[[], Buffer]) -> Buffer:
        """The version's bytes (nbytes > 0): the node's copy, mapped, if a checked one is there; else what
        fetch() returns (from weight_control, checked on arrival), which is then left for the others."""
        if self.off:
            return fetch()
        path = self._path(version, sha256)
        m = self._read(path, nbytes, digest)
        if m is not None:
            return m
        self.root.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_name(path.name + ".lock"), "a+b")  # noqa: SIM115 (closed by whoever ends the write)
        handed_over = False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one writer; the others wait here, then read its file
            m = self._read(path, nbytes, digest)
            if m is not None:
                return m
            m = fetch()
            # This process has its bytes: it goes on while a thread leaves the copy and then lets the others in.
            self._writing = threading.Thread(target=self._write_and_unlock, args=(path, m, lock), name="node-cache")
            self._writing.start()
            handed_over = True
            return m
        finally:
            if not handed_over:
                lock.close()  # closing the file releases the flock

    def _write_and_unlock(self, path: Path, buf: Buffer, lock) -> None:
        try:
            self._write(path, buf)
        finally:
            lock.close()
        self._prune(path)

    def flush(self) -> None:
        """Wait for the copy being left for the others (tests, and close)."""
        if self._writing is not None:
            self._writing.join()

    def _read(self, path: Path, nbytes: int, digest: str) -> mmap.mmap | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            size = os.fstat(fd).st_size
            m = _private_map(fd, size) if size == nbytes else None
        finally:
            os.close(fd)
        if m is None or transfer_digest(m) != digest:
            self.bad += 1
            log.warning("node copy %s is corrupt (%d bytes, expected %d, or a wrong digest): fetching again",
                        path, size, nbytes)  # fmt: skip
            if m is not None:
                m.close()
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return m

    def _write(self, path: Path, buf: Buffer) -> None:
        """Leave a copy for the other rollouts: written whole under a temporary name, then renamed into place
        (os.write: on a VM, a third of the cost of filling a fresh shared mapping page by page)."""
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb", buffering=0) as f:
                view, off = memoryview(buf), 0
                while off < len(view):
                    off += f.write(view[off:])
            os.rename(tmp, path)
        except OSError as e:  # shared memory full: the fetched bytes are still good for this process
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass  # not a file we could have written
            log.warning("cannot leave version bytes in the node cache %s (%s): this rollout fetches privately "
                        "from now on (control.node_cache)", self.root, e)  # fmt: skip
            self.off = True
            return
        self.fills += 1
        self._written.append(path)

    def _prune(self, newest: Path) -> None:
        """Keep the newest `keep` versions (by time written: after an actor rewind versions start again)."""
        try:
            files = sorted(self.root.glob("v*.bin"), key=lambda p: p.stat().st_mtime_ns)
        except OSError:  # a file went away meanwhile: prune next time
            return
        for p in files[: max(0, len(files) - self.keep)]:
            if p != newest:
                if p in self._written:
                    self._written.remove(p)
                p.unlink(missing_ok=True)
                p.with_name(p.name + ".lock").unlink(missing_ok=True)
        now = time.time()
        for p in self.root.glob("*.tmp"):  # left by a writer that died mid-write
            try:
                if now - p.stat().st_mtime > 600:
                    p.unlink(missing_ok=True)
            except OSError:
                pass

    def close(self) -> None:
        """Remove the files this process wrote (a rollout on the node that still wants one fetches it again),
        and the folder once empty: shared memory is RAM, and nothing should outlive the run in it."""
        self.flush()
        for p in self._written:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".lock").unlink(missing_ok=True)
        self._written.clear()
        try:
            self.root.rmdir()
        except OSError:
            pass  # not empty: another process's files, or gone


def _private_map(fd: int, nbytes: int) -> mmap.mmap:
    """Copy-on-write: reading costs no copy, writing (which nobody should) stays in this process."""
    return mmap.mmap(fd, nbytes, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
