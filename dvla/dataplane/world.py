"""Re-forming the data plane: one rendezvous store per actor process, one process group per epoch.

The actor (rank 0) hosts a TCPStore at its rendezvous address for as long as it
lives (an actor started afresh hosts a new one, and the others follow it to its
address). Epoch e forms a fresh process group of its own (a Link, never
torch.distributed's default group, which an actor group holds) under the store
prefix 'e<e>/': every rank arrives at a barrier and the last to arrive sets
'go'. A rank that learns the epoch is obsolete before 'go' (a newer epoch
started, the run ended, it is stopping) cancels the barrier for everyone with a
compare-and-set, so nobody is left waiting for a rank that will never come.
Whichever of 'go' and 'abort' is set first decides for all ranks.

After 'go' every rank connects to every other within `connect_timeout_s`. A rank
that dies in between (killed while connecting) fails that for the others; they
meet again at a fresh barrier ('e<e>/retry<n>/'), which the dead rank never
reaches: once weight_control evicts it, the newer epoch cancels the barrier as
above. So a rank lost at the worst moment costs the others connect_timeout_s,
not the operation timeout. Ranks that meet but cannot connect CONNECT_TRIES
times in a row (an address they cannot reach) fail with a message saying so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

import torch.distributed as dist

from dvla.dataplane.transport import Link, TrajectoryReceiver, TrajectorySender, resolve_backend
from dvla.net import split_address
from dvla.types import World

_GO, _ABORT = b"go", b"abort"
CONNECT_TRIES = 3
log = logging.getLogger("dvla.dataplane")


class DataPlane:
    """This process's membership of the data plane across epochs (the Plane port, over torch.distributed).

    With NCCL, set this process's CUDA device (torch.cuda.set_device) first: messages travel on it.
    """

    def __init__(
        self,
        rendezvous: str,
        is_host: bool,
        backend: str = "auto",
        timeout_s: float = 600.0,
        connect_now: bool = True,
        connect_timeout_s: float = 30.0,
        store_wait_s: float = 60.0,
    ):
        """connect_now=False (a rollout): connect to the store when forming the first epoch, where a store that
        is gone (its actor died) cancels that epoch instead of failing here. timeout_s: each message;
        connect_timeout_s: the ranks of an epoch connecting to each other (see the module's text); store_wait_s:
        at most this long to reach the store now (connect_now), raising torch.distributed.DistError after."""
        self.backend = resolve_backend(backend)
        self.timeout = timedelta(seconds=timeout_s)
        self.connect_timeout = timedelta(seconds=min(connect_timeout_s, timeout_s))
        self.is_host, self.address = is_host, rendezvous
        split_address(rendezvous, "data-plane rendezvous")  # a bad address fails now, whenever we connect
        self.store = self._connect(rendezvous, store_wait_s) if connect_now or is_host else None
        self.store_lost = False  # the connection to the store broke (its host died)
        self.epoch = -1  # the epoch whose group this process is in; -1: none
        self.link: Link | None = None  # that epoch's group

    def _connect(self, rendezvous: str, max_wait_s: float = 60.0) -> dist.TCPStore:
        host, port = split_address(rendezvous, "data-plane rendezvous")
        # The host's store lives as long as its process; clients connect once per host. A worker only learns
        # the address once the actor (which starts the store first) has registered, so connecting is quick,
        # and a short deadline lets a late joiner notice that the run has ended (or the actor died) instead
        # of waiting.
        store_timeout = timedelta(seconds=min(self.timeout.total_seconds(), max_wait_s))
        return dist.TCPStore(host, port, is_master=self.is_host, wait_for_workers=False, timeout=store_timeout)

    def form(self, world: World, abort: Callable[[], bool] = lambda: False, poll_s: float = 0.02) -> bool:
        """Join epoch `world.epoch` as `world.rank` of `world.size`. False if the epoch was cancelled (by
        abort() here or on another rank, or its actor's store went away); True once the group is formed. A
        world with another rendezvous address (the actor was started afresh) is formed around that store."""
        epoch, rank, world_size = world.epoch, world.rank, world.size
        if self.link is not None:
            raise RuntimeError(f"leave data-plane epoch {self.epoch} before forming epoch {epoch}")
        if not 0 <= rank < world_size:
            raise ValueError(f"data-plane rank {rank} is outside [0, {world_size})")
        try:
            address = world.rendezvous or self.address
            if not self.is_host and (self.store is None or self.store_lost or address != self.address):
                self.store, self.address, self.store_lost = None, address, False
                self.store = self._connect(address, max_wait_s=10.0)
            return self._rendezvous(epoch, rank, world_size, abort, poll_s)
        except dist.DistError:  # the store's host (the actor) died: this epoch will not form
            if self.is_host:
                raise
            self.store_lost = True  # a later epoch connects again (its actor started afresh)
            return False

    def _rendezvous(self, epoch: int, rank: int, world_size: int, abort: Callable[[], bool], poll_s: float) -> bool:
        error: Exception | None = None
        for attempt in range(CONNECT_TRIES):
            prefix = f"e{epoch}/" if attempt == 0 else f"e{epoch}/retry{attempt}/"
            if not self._barrier(prefix, world_size, abort, poll_s):
                return False
            try:
                pg = dist.PrefixStore(f"{prefix}pg/", self.store)
                self.link = Link(self.backend, pg, rank, world_size, self.timeout, self.connect_timeout)
            except (dist.DistError, RuntimeError) as e:  # a rank died after the barrier, or is unreachable
                error = e
                log.warning(
                    "data-plane epoch %d: rank %d could not connect to all %d ranks within %.0f s (try %d of %d); "
                    "meeting the others again: %s",
                    epoch, rank, world_size, self.connect_timeout.total_seconds(), attempt + 1, CONNECT_TRIES,
                    str(e).splitlines()[0],
                )  # fmt: skip
                continue
            self.epoch = epoch
            return True
        raise RuntimeError(
            f"data-plane epoch {epoch}: its {world_size} ranks met {CONNECT_TRIES} times but could not connect to "
            f"each other within dataplane.connect_timeout_s={self.connect_timeout.total_seconds():g} s: can every "
            f"worker reach the others' addresses (dataplane.host)? Last error: {error}"
        )

    def _barrier(self, prefix: str, world_size: int, abort: Callable[[], bool], poll_s: float) -> bool:
        """Every rank arrives under `prefix`; False if the barrier was cancelled (here or on another rank)."""
        go = f"{prefix}go"
        if self.store.add(f"{prefix}arrived", 1) == world_size:
            self.store.compare_set(go, "", _GO.decode())
        while True:
            if self.store.check([go]):
                return self.store.get(go) == _GO
            if abort():
                # 'go' may have won the race: then everyone else is connecting now, so must we
                return self.store.compare_set(go, "", _ABORT.decode()) == _GO
            time.sleep(poll_s)

    def leave(self) -> None:
        """Tear down this epoch's group (the store stays for the next one)."""
        if self.link is not None:
            self.link.close()
            self.link = None
        self.epoch = -1

    def _formed(self) -> Link:
        if self.link is None:
            raise RuntimeError("form a data-plane epoch first")
        return self.link

    def sink(self, dst: int = 0) -> TrajectorySender:
        """Sends to data-plane rank `dst` (this rollout's home actor)."""
        return TrajectorySender(self._formed(), dst)

    def source(self, ranks: list[int]) -> TrajectoryReceiver:
        return TrajectoryReceiver(self._formed(), ranks)

    def close(self) -> None:
        self.leave()
        self.store = None
