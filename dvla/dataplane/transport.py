"""Trajectory transport over torch.distributed: rollout workers send, the actor receives.

The bytes on the wire are dvla/dataplane/wire.py's.

Receiving from whichever sender is ready: NCCL has no any-source receive, so the
receiver keeps one posted header irecv per open source and polls them. Gloo's
irecv never reports completion until someone waits on it, so under gloo a small
daemon thread waits on each posted header and raises a flag.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from datetime import timedelta

import torch
import torch.distributed as dist

from dvla.dataplane.wire import (
    DEFAULT_MAX_ELEMENTS,
    HEADER_LEN,
    KIND_END,
    KIND_EPOCH_END,
    check_header,
    decode_payload,
    encode_batch,
    end_header,
)
from dvla.ports import SinkLost, SourceLost
from dvla.types import TrajectoryBatch

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


class Link:
    """One data-plane epoch's process group: point-to-point messages between its ranks.

    A group of its own, not torch.distributed's default group: an actor's default group is its
    actor group (FSDP/DDP), which lives for the whole run while data-plane epochs come and go.
    """

    def __init__(
        self,
        backend: str,
        store: dist.Store,
        rank: int,
        size: int,
        timeout: timedelta,
        connect: timedelta | None = None,
    ):
        """timeout: for each send and receive; connect (gloo): for every rank to connect to every other,
        so a rank that died after the epoch's barrier costs the others this long, not `timeout`.
        Raises torch.distributed.DistError (or RuntimeError) when the ranks could not all connect."""
        self.backend, self.rank, self.size, self.timeout = backend, rank, size, timeout
        self.waiters: list[threading.Thread] = []  # threads waiting on posted receives (gloo)
        if backend == "nccl":  # NCCL connects lazily, at the first message: `timeout` bounds both
            self.device = torch.device("cuda", torch.cuda.current_device())
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.group = dist.ProcessGroupNCCL(store, rank, size, options)
        else:  # gloo's group timeout bounds connecting; each operation below is waited on with `timeout`
            self.device = torch.device("cpu")
            self.group = dist.ProcessGroupGloo(store, rank, size, connect or timeout)

    def send(self, t: torch.Tensor, dst: int) -> None:
        self.group.send([t], dst, 0).wait(self.timeout)

    def irecv(self, t: torch.Tensor, src: int) -> dist.Work:
        """A posted receive: wait on it with .wait(link.timeout)."""
        return self.group.recv([t], src, 0)

    def recv(self, t: torch.Tensor, src: int) -> None:
        self.group.recv([t], src, 0).wait(self.timeout)

    def close(self) -> None:
        """Tear the group down; receives still posted on it end (with an error their waiters ignore), and
        their waiter threads are joined: a process that exits while one is inside gloo aborts."""
        group, self.group = self.group, None
        if group is not None:
            group.shutdown() if self.backend == "nccl" else group.abort()
        for t in self.waiters:
            t.join(timeout=5.0)
        self.waiters = []


# ------------------------------------------------------------------ send / receive
class TrajectorySender:
    """Sends batches to rank `dst` of `link`; each call returns once the data has left."""

    def __init__(self, link: Link, dst: int = 0):
        self.link, self.dst = link, dst
        self.device = link.device
        self.num_sent = 0

    def send(self, batch: TrajectoryBatch) -> None:
        """SinkLost when the connection to the actor broke (the batch may not have arrived)."""
        header, payload = encode_batch(batch)
        self._send(header)
        self._send(payload)
        self.num_sent += 1

    def send_end(self, epoch_end: int | None = None) -> None:
        """END: this sender is done for the run; with epoch_end=e, it only leaves data-plane epoch e."""
        kind, epoch = (KIND_END, 0) if epoch_end is None else (KIND_EPOCH_END, epoch_end)
        self._send(end_header(self.link.rank, kind, epoch))

    def _send(self, t: torch.Tensor) -> None:
        try:
            self.link.send(t.to(self.device), self.dst)
        except RuntimeError as e:  # gloo: "Connection reset by peer", "Broken pipe" (the actor's process died)
            raise SinkLost(f"data-plane rank {self.dst} (the actor) is lost: {e}") from e


class _PostedHeader:
    """One header irecv posted to one source, asked without blocking whether it has arrived."""

    def __init__(self, link: Link, src: int, use_waiter_thread: bool):
        self.tensor = torch.empty(HEADER_LEN, dtype=torch.int64, device=link.device)
        self.work, self.timeout = link.irecv(self.tensor, src), link.timeout
        self._flag: threading.Event | None = None
        self._error: BaseException | None = None
        if use_waiter_thread:
            self._flag = threading.Event()
            waiter = threading.Thread(target=self._wait, name=f"dataplane-header-from-{src}", daemon=True)
            waiter.start()
            link.waiters = [t for t in link.waiters if t.is_alive()] + [waiter]

    def _wait(self) -> None:
        try:
            self.work.wait(self.timeout)  # releases the GIL
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
            self.work.wait(self.timeout)  # NCCL: the copy below must queue behind the receive
        return self.tensor.cpu()


class TrajectoryReceiver:
    """Receives batches from `sources` (ranks of `link`) in arrival order until each has sent END.

    Batches come back on the backend's device (CUDA under NCCL), as views into
    one buffer per message.
    """

    def __init__(self, link: Link, sources: list[int], max_elements: int = DEFAULT_MAX_ELEMENTS):
        if not sources or len(set(sources)) != len(sources):
            raise ValueError(f"receiver needs distinct source ranks, got {sources}")
        self.link, self.max_elements = link, max_elements
        self.device = link.device
        self._use_waiter_threads = link.backend != "nccl"
        self._posted = {src: self._post(src) for src in sources}
        self._order = deque(sources)  # round robin: a busy source cannot starve the others
        self.num_received = {src: 0 for src in sources}
        self.ended: dict[int, int] = {}  # source -> KIND_END or KIND_EPOCH_END, once it has sent one
        self.lost: set[int] = set()  # sources whose connection broke, or that were dropped

    @property
    def open_sources(self) -> list[int]:
        """Sources that have not sent END (nor a header we could not parse)."""
        return sorted(self._posted)

    def run_ended(self) -> bool:
        """The sources that ended sent END (not EPOCH_END), and none is open: no more will come in this run.
        Not when every source was lost: the run goes on in a new epoch."""
        return not self._posted and bool(self.ended) and all(k == KIND_END for k in self.ended.values())

    def drop(self, src: int) -> None:
        """Receive nothing more from `src` (its worker was evicted). A receive still posted to it ends when
        the link closes."""
        if src in self._posted:
            self._close(src)
        self.lost.add(src)

    def recv(self, timeout_s: float | None = None) -> tuple[int, TrajectoryBatch | None]:
        """(source rank, batch), or (source rank, None) when that source sent END (or EPOCH_END: see .ended).

        Raises TimeoutError after `timeout_s` without a message, RuntimeError when
        no source is open, ValueError on a malformed header, SourceLost when a
        source's connection broke (either way that source is closed; the others stay open).
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
        return _PostedHeader(self.link, src, self._use_waiter_threads)

    def _ready_source(self) -> int | None:
        for k, src in enumerate(self._order):
            try:
                arrived = self._posted[src].arrived()
            except RuntimeError as e:  # gloo: "Connection closed by peer" (its process died) and kin
                self._lose(src, e)
            if arrived:
                self._order.rotate(-(k + 1))
                return src
        return None

    def _lose(self, src: int, cause: BaseException) -> None:
        self.drop(src)
        raise SourceLost(src, cause) from cause

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
        try:
            self.link.recv(payload, src)
        except RuntimeError as e:  # it died between header and payload: the batch never arrived
            self._lose(src, e)
        # Only now: a header irecv posted earlier would have matched this payload.
        self._posted[src] = self._post(src)
        self.num_received[src] += 1
        return decode_payload(header, payload)
