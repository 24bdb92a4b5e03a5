"""The rollout's weight-receiving lane: new versions land in a shadow copy, swapped in between batches.

consumes  version announcements and bytes from the WeightSource
produces  the inference copy in use, (policy, version), read together by current()
waits for a version to be announced (or, inline, the one admission control needs)
thread    its own ("weight-lane") in swimlane mode; otherwise the sampling thread, inside
          wait_loaded(): the same `_follow` path either way, the wiring decides
owns      the two policy copies; only the lane writes the shadow, and the swap happens
          under a lock in current(), which inference calls between two batches, so no batch
          ever runs a half-loaded version and every action is stamped with the version that
          produced it. The pause a swap costs is recorded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dvla import telemetry
from dvla.policy import Policy
from dvla.ports import VersionEvent, WeightSource

log = logging.getLogger("dvla.lanes.weights")


class WeightLane:
    def __init__(self, source: WeightSource, make_policy: Callable[[], Policy], stop: threading.Event):
        self.source, self.stop = source, stop
        self.active, self.shadow = make_policy(), make_policy()
        self.version = -1  # version of `active`
        self.final = False  # `active` is the actor's last version
        self._pending: tuple[int, bool] | None = None  # (version, final) loaded into `shadow`
        self._loading = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self.fetch_s = 0.0  # fetching + loading into the shadow copy
        self.swap_pauses_s: list[float] = []
        self.versions_used: list[int] = []
        self._thread: threading.Thread | None = None
        self._history = 0  # bumped by rewind(): what is fetched for an older one is thrown away

    @property
    def background(self) -> bool:
        return self._thread is not None

    def start_thread(self) -> WeightLane:
        """Follow every new version on a thread of its own (swimlane), off the sampling path."""
        self._thread = threading.Thread(target=self._run, name="weight-lane", daemon=True)
        self._thread.start()
        return self

    # ------------------------------------------------------------ the lane's one path
    def _newest_held(self) -> int:
        return max(self.version, self._pending[0] if self._pending else -1)

    def _holds(self, min_version: int) -> bool:
        """A version >= min_version (or the final one) is in use or waiting, whole, in the shadow."""
        held = self._pending if (self._pending and not self._loading) else None
        return bool(held and (held[0] >= min_version or held[1])) or self.version >= min_version or self.final

    def _follow(self, min_version: int | None, interrupt: Callable[[], bool] = lambda: False) -> bool:
        """Fetch announced versions into the shadow copy: every newer one when min_version is None (until
        stopped), else the newest once one >= min_version (or the final one) is out, and return True.
        False when stopped or interrupted first."""

        def wanted(ev: VersionEvent) -> bool:
            return ev.version > self._newest_held() and (min_version is None or ev.version >= min_version or ev.final)

        def done() -> bool:
            return min_version is not None and self._holds(min_version)

        ev = self.source.latest()
        if wanted(ev):
            self._fetch_into_shadow()
        if done():
            return True
        history = self._history
        halt = self._halt_on(lambda: interrupt() or self._history != history)  # a rewind restarts the watch
        try:
            for ev in self.source.watch(after_version=self._newest_held(), stop=halt):
                if wanted(ev):
                    self._fetch_into_shadow()
                if done():
                    return True
            return False
        finally:
            halt.set()

    def _halt_on(self, interrupt: Callable[[], bool]) -> threading.Event:
        """An event set once stop or interrupt() holds (polled every 0.1 s), which ends a watch."""
        halt = threading.Event()

        def watchdog() -> None:
            while not halt.wait(0.1):
                if self.stop.is_set() or interrupt():
                    halt.set()

        threading.Thread(target=watchdog, name="weights-watchdog", daemon=True).start()
        return halt

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self._follow(None)
        except BaseException as e:  # surfaced to the sampling lane by wait_loaded()
            if not self.stop.is_set():
                log.exception("weight lane failed")
                with self._cond:
                    self._error = e
                    self._cond.notify_all()

    def _fetch_into_shadow(self) -> None:
        t, history = time.monotonic(), self._history
        try:
            with telemetry.span("weights.fetch") as sp:
                version, final, tensors = self.source.fetch(None)  # newest: skip versions that went by
                sp.set_attribute("version", version)
            with self._cond:
                if version <= self._newest_held() or history != self._history:
                    return
                self._loading = True  # the shadow may hold a pending version: it is no longer swappable
                self._pending = None
            try:
                with telemetry.span("weights.load_shadow", version=version):
                    self.shadow.load_weights(tensors)
            finally:
                with self._cond:
                    self._loading = False
                    if history == self._history:
                        self._pending = (version, final)
                    self._cond.notify_all()
        finally:
            self.fetch_s += time.monotonic() - t

    def rewind(self) -> None:
        """The actor was started afresh from a checkpoint: the versions held belong to a history that is gone.
        Follow the new one from its first version (the caller runs no inference until wait_loaded)."""
        with self._cond:
            self._history += 1
            self.version, self.final, self._pending = -1, False, None
            self._cond.notify_all()

    # ------------------------------------------------------------ sampling / inference lanes
    def current(self) -> tuple[Policy, int]:
        """The policy to run now and its version; swaps in a waiting version first."""
        with self._cond:
            if self._pending is not None and not self._loading:
                t = time.perf_counter()
                self.active, self.shadow = self.shadow, self.active
                self.version, self.final = self._pending
                self._pending = None
                self.swap_pauses_s.append(time.perf_counter() - t)
                self.versions_used.append(self.version)
            return self.active, self.version

    def wait_loaded(
        self, min_version: int, timeout_s: float | None = None, interrupt: Callable[[], bool] = lambda: False
    ) -> bool:
        """Block until a version >= min_version is in use (or the final one); False if stopped, or
        as soon as interrupt() (polled every 0.1-0.2 s) holds: e.g. a rescale asks for a safe point.

        Without a thread of its own the lane follows the versions here, so the caller waits for the
        transfer too.
        """
        if not self.background:
            ok = self._follow(min_version, interrupt)
            self.current()
            return ok and not self.stop.is_set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._holds(min_version):
                if self._error is not None:
                    raise RuntimeError(f"weight lane failed: {self._error}") from self._error
                if self.stop.is_set() or interrupt():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no policy version >= {min_version} within {timeout_s}s")
                self._cond.wait(0.2 if remaining is None else min(0.2, remaining))
        self.current()
        return True

    def swap_pause_ms(self, q: float) -> float:
        """Quantile q of the swap pauses so far, in milliseconds (0 if none)."""
        if not self.swap_pauses_s:
            return 0.0
        xs = sorted(self.swap_pauses_s)
        return 1e3 * xs[min(len(xs) - 1, int(q * len(xs)))]
