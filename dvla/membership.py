"""Joining a run: register with weight_control, learn the data-plane world, heartbeat."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import replace

from dvla.ports import Directives
from dvla.rpc.client import ControlClient, Registration, RpcFailed
from dvla.types import Acks, EnvSpec, RunState, SenderCounts

log = logging.getLogger("dvla.membership")


def default_worker_id(role: str) -> str:
    return os.environ.get("DVLA_WORKER_ID") or f"{role}-{socket.gethostname()}-{os.getpid()}"


def join(
    client: ControlClient,
    role: str,
    worker_id: str,
    *,
    env_spec: EnvSpec | None = None,
    rendezvous_address: str = "",
    num_envs: int = 0,
    num_shards: int = 0,
    timeout_s: float = 300.0,
    stop: threading.Event | None = None,
    worker_key: int = 0,
) -> Registration:
    """Register, then wait until the actor's rendezvous address is known and this worker holds a rank.

    A worker beyond the run's number of rollouts waits on standby, for ever
    (until `stop`): `dvla admin rescale --rollouts N` gives it a slot.
    """
    deadline = time.monotonic() + timeout_s
    delay, said = 0.05, False
    while True:
        reg = client.register(
            role,
            worker_id,
            rendezvous_address=rendezvous_address,
            env_spec=env_spec,
            num_envs=num_envs,
            num_shards=num_shards,
            worker_key=worker_key,
        )
        if reg.rendezvous_address and reg.rank >= 0:
            return reg
        if stop is not None and stop.is_set():
            raise TimeoutError("stopped while waiting to join the run")
        if reg.rank < 0:
            if client.latest().state == RunState.FINISHED:
                raise RunFinished("the run finished while this worker waited on standby")
            if not said:
                log.info(
                    "on standby: the run has all the rollouts it asked for; "
                    "`dvla admin rescale --rollouts N` gives this worker a slot"
                )
                said = True
        elif time.monotonic() > deadline:
            raise TimeoutError(f"no actor registered with weight_control within {timeout_s:.0f}s")
        time.sleep(delay)
        delay = min(delay * 2, 1.0)


class RunFinished(Exception):
    """The run ended before this worker could take part."""


class Heartbeat:
    """A daemon thread reporting `stats()` every period; failures are logged, never fatal.

    It is the Control port of a service: `directives` as of the last reply, `beat()` to report now,
    `acknowledge()` to tell weight_control of something done. The stats are telemetry; what
    weight_control acts on travels as typed Acks beside them. The actor also reports `senders()`:
    each rollout's counters as its latest batch carried them, and `broken()`: the (epoch, rank)
    pairs whose data-plane connection broke, so weight_control evicts those workers at once."""

    def __init__(
        self,
        client: ControlClient,
        worker_id: str,
        stats: Callable[[], dict],
        period_s: float,
        senders: Callable[[], list[SenderCounts]] = list,
        broken: Callable[[], list[tuple[int, int]]] = list,
        lost_after_s: float = 0.0,
        on_lost: Callable[[str], None] | None = None,
        on_rejoin: Callable[[], None] | None = None,
    ):
        """lost_after_s: after this long without one answered beat, or (a rollout) with the actor silent,
        on_lost(why) is called once (0: never). on_rejoin(): called once this worker registered again with
        a weight_control that did not know it (restarted); it must not block (the heartbeats wait)."""
        self.client, self.worker_id, self.stats, self.period_s = client, worker_id, stats, period_s
        self.senders, self.broken = senders, broken
        self.lost_after_s, self.on_lost, self.on_rejoin = lost_after_s, on_lost, on_rejoin
        self._last_ok = time.monotonic()
        self._gave_up = False
        self.stop_event = threading.Event()
        self.directives = Directives()  # from the last reply
        self.acks = Acks()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self.thread.start()
        return self

    @property
    def state(self) -> str:
        return self.directives.state

    @property
    def paused(self) -> bool:
        """The run is paused (Admin.Pause), as of the last beat: start no new episodes."""
        return self.directives.paused

    @property
    def checkpoint_request(self) -> int:
        """Newest Admin.Checkpoint request number (0: none yet); the actor writes one when it grows."""
        return self.directives.checkpoint_request

    def beat(self) -> None:
        """Report now. Thread-safe: reports reach the server in the order their stats were read, so
        an older snapshot never overwrites a newer one."""
        with self._lock:
            self._beat()

    def acknowledge(self, **done) -> None:
        """Record what was done (fields of Acks) and report it at once."""
        with self._lock:
            self.acks = replace(self.acks, **done)
            self._beat()

    def _beat(self) -> None:
        try:
            self._report()
            self._last_ok = time.monotonic()
            gone = self.directives.actor_silent_s
            if self.lost_after_s and gone > self.lost_after_s:
                self._give_up(
                    f"the actor has not been heard from for {gone:.0f} s (control.lost_after_s="
                    f"{self.lost_after_s:g}): giving up. weight_control shows it missing: was it started again?"
                )
        except RpcFailed as e:
            if e.code == "NOT_FOUND" and self.client.can_rejoin and self._rejoin():
                return
            if e.code == "ABORTED":  # a newer process registered under this worker id: this one is replaced
                log.error("%s", e.message)
                self._give_up(f"{e.message}; giving up")
                return
            silent = time.monotonic() - self._last_ok
            log.warning("heartbeat failed (weight_control unanswered for %.0f s): %s", silent, e)
            if self.lost_after_s and silent > self.lost_after_s:
                self._give_up(
                    f"weight_control at {self.client.address} has not answered for {silent:.0f} s "
                    f"(control.lost_after_s={self.lost_after_s:g}): giving up. Last error: {e}"
                )
        except Exception:  # a bug in stats() must not silently end the heartbeats (and the counters)
            log.exception("heartbeat: could not gather stats")

    def _give_up(self, why: str) -> None:
        """on_lost(why), once."""
        if self.on_lost and not self._gave_up:
            self._gave_up = True
            self.on_lost(why)

    def _report(self) -> None:
        self.directives = self.client.heartbeat(self.worker_id, self.stats(), self.acks, self.senders(), self.broken())

    def _rejoin(self) -> bool:
        """weight_control does not know this worker (it was restarted): register again, report; True if done."""
        try:
            self.client.rejoin(self.directives.epoch)
            log.warning("weight_control did not know this worker (it was restarted?): registered again")
            self._report()
            self._last_ok = time.monotonic()
            if self.on_rejoin is not None:
                self.on_rejoin()
            return True
        except RpcFailed as e:
            log.warning("registering again failed: %s", e)
            return False

    def _run(self) -> None:
        while not self.stop_event.wait(self.period_s):
            self.beat()

    def stop(self, left_dataplane: bool = True) -> None:
        """Stop the thread and send one last report, so final counters reach the status API; by default
        it also acknowledges that this worker has left the data plane for good (a leaver becomes LEFT)."""
        self.acks = replace(self.acks, left_dataplane=left_dataplane or self.acks.left_dataplane)
        self.stop_event.set()
        self.thread.join(self.period_s + 5)
        self.beat()
