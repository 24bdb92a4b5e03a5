"""The weight-receiving lane: new versions land in a shadow copy, swapped in between batches.

    weight_control --watch--> lane thread --fetch v+1--> shadow.load_weights
    inference lane --current()--> swap(active, shadow) if a whole version is waiting

The lane thread only ever writes the shadow copy, and the swap happens under a
lock in `current()`, which the inference lane calls between two batches, so
inference never runs a half-loaded version and every action is stamped with the
version that produced it. The pause the swap costs is recorded.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from dvla import telemetry
from dvla.policy import Policy
from dvla.rpc.client import ControlClient, RpcFailed

log = logging.getLogger("dvla.rollout.weights")


class WeightLane:
    def __init__(self, client: ControlClient, make_policy: Callable[[], Policy], stop: threading.Event,
                 background: bool = True):
        """background=False fetches inline in wait_loaded() instead (the lane on the critical path)."""
        self.client, self.stop, self.background = client, stop, background
        self.active, self.shadow = make_policy(), make_policy()
        self.version = -1  # version of `active`
        self.final = False  # `active` is the actor's last version
        self._pending: tuple[int, bool] | None = None  # (version, final) loaded into `shadow`
        self._loading = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self.fetches = 0
        self.fetch_s = 0.0  # fetching + loading into the shadow copy
        self.swap_pauses_s: list[float] = []
        self.versions_used: list[int] = []
        self._thread = threading.Thread(target=self._run, name="weight-lane", daemon=True)

    def start(self) -> "WeightLane":
        if self.background:
            self._thread.start()
        return self

    # ------------------------------------------------------------ lane thread
    def _newest_held(self) -> int:
        return max(self.version, self._pending[0] if self._pending else -1)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                for ev in self.client.watch(after_version=self._newest_held(), stop=self.stop):
                    if ev.version > self._newest_held():
                        self._fetch_into_shadow()
                    if self.stop.is_set():
                        return
        except BaseException as e:  # surfaced to the sampling lane by wait_loaded()
            if not self.stop.is_set():
                log.exception("weight lane failed")
                with self._cond:
                    self._error = e
                    self._cond.notify_all()

    def _fetch_into_shadow(self) -> None:
        t = time.monotonic()
        try:
            self._fetch_and_load()
        finally:
            self.fetch_s += time.monotonic() - t

    def swap_pause_ms(self, q: float) -> float:
        """Quantile q of the swap pauses so far, in milliseconds (0 if none)."""
        if not self.swap_pauses_s:
            return 0.0
        xs = sorted(self.swap_pauses_s)
        return 1e3 * xs[min(len(xs) - 1, int(q * len(xs)))]

    def _fetch_and_load(self) -> None:
        with telemetry.span("weights.fetch") as sp:
            version, final, tensors = self.client.fetch(None)  # newest: skip versions that went by
            sp.set_attribute("version", version)
        with self._cond:
            if version <= self._newest_held():
                return
            self._loading = True  # the shadow may hold a pending version: it is no longer swappable
            self._pending = None
        try:
            with telemetry.span("weights.load_shadow", version=version):
                self.shadow.load_weights(tensors)
        finally:
            with self._cond:
                self._loading = False
                self._pending = (version, final)
                self.fetches += 1
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

    def wait_loaded(self, min_version: int, timeout_s: float | None = None,
                    interrupt: Callable[[], bool] = lambda: False) -> bool:
        """Block until a version >= min_version is in use (or the final one); False if stopped, or
        as soon as interrupt() (polled every 0.1-0.2 s) holds: e.g. a rescale asks for a safe point.

        Inline mode fetches the newest version here, so the caller waits for the transfer too.
        """
        if not self.background:
            return self._load_inline(min_version, interrupt)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while True:
                if self._error is not None:
                    raise RpcFailed("UNAVAILABLE", f"weight lane failed: {self._error}")
                if self.stop.is_set() or interrupt():
                    return False
                held = self._pending if (self._pending and not self._loading) else None
                if held and (held[0] >= min_version or held[1]):
                    break
                if self.version >= min_version or self.final:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no policy version >= {min_version} within {timeout_s}s")
                self._cond.wait(0.2 if remaining is None else min(0.2, remaining))
        self.current()
        return True

    def _load_inline(self, min_version: int, interrupt: Callable[[], bool]) -> bool:
        ev = self.client.latest()
        if ev.version < min_version and not ev.final:
            halt = threading.Event()  # ends the watch on stop or interrupt()

            def watchdog() -> None:
                while not halt.wait(0.1):
                    if self.stop.is_set() or interrupt():
                        halt.set()
            threading.Thread(target=watchdog, name="weights-wait-watchdog", daemon=True).start()
            try:
                for ev in self.client.watch(after_version=ev.version, stop=halt):
                    if ev.version >= min_version or ev.final:
                        break
                else:
                    return False  # stopped or interrupted
            finally:
                halt.set()
        if ev.version > self.version:
            self._fetch_into_shadow()
            self.current()
        return not self.stop.is_set()
