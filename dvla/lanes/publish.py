"""The actor's publish lane: each new policy version to the weight sink.

consumes  (version, weights) after every update
produces  that version in weight_control's store (WeightSink.publish)
waits for the sink to take the bytes
thread    the caller's (lockstep modes), or its own in swimlane mode: `OffThread` runs
          the same `PublishLane.submit` there, so the next update trains while a version
          streams out; if versions queue up only the newest is sent (none is needed twice)
owns      the publish timings, and the last version published: a restarted weight_control
          holds no version, so `republish()` gives it that one again (one host copy of the
          weights kept for it) and a rollout that joins then need not wait for the next update
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dvla import telemetry
from dvla.ports import WeightSink

log = logging.getLogger("dvla.lanes.publish")


# a sink's error codes (ControlError, RpcFailed) that say the store holds this version or a newer one
_ALREADY_THERE = ("ALREADY_EXISTS", "FAILED_PRECONDITION")


class PublishLane:
    def __init__(self, sink: WeightSink, publisher_id: str):
        self.sink, self.publisher_id = sink, publisher_id
        self.published: list[int] = []
        self.publish_s: list[float] = []
        self._last: tuple[int, dict, bool] | None = None
        self._lock = threading.Lock()  # a publish and a republish (from the heartbeat's thread) take turns

    def submit(self, version: int, weights: dict, final: bool = False) -> None:
        with self._lock:
            t = time.monotonic()
            with telemetry.span("publish.version", version=version, tensors=len(weights)):
                self.sink.publish(version, weights, final=final, publisher_id=self.publisher_id)
            self.publish_s.append(time.monotonic() - t)
            self.published.append(version)
            self._last = (version, weights, final)

    def republish(self) -> int | None:
        """Publish the last version again (weight_control was restarted and holds none); the version
        stored, or None: nothing published yet, or the store holds it or a newer one already. Never raises:
        the next update's version will come anyway."""
        with self._lock:
            if self._last is None:
                return None
            version, weights, final = self._last
            try:
                self.sink.publish(version, weights, final=final, publisher_id=self.publisher_id)
            except Exception as e:
                if getattr(e, "code", "") not in _ALREADY_THERE:
                    log.warning("could not publish v%d again: %s", version, e)
                return None
            log.warning("published v%d again: weight_control was restarted and held no version", version)
            return version

    def republish_in_background(self) -> None:
        """republish() on a thread of its own: the caller (the heartbeat) does not wait for the bytes."""
        threading.Thread(target=self.republish, name="republish", daemon=True).start()

    def flush(self, timeout_s: float = 300.0) -> None:
        """Nothing waits: every submit has returned once published."""


class OffThread:
    """Runs `submit(version, payload, final)` on its own thread, newest first: a submission replaces one
    still waiting (versions only go forward). The caller never waits for the work, only for room."""

    def __init__(self, submit: Callable[..., None], name: str = "publish-lane"):
        self._submit = submit
        self._slot: tuple[int, dict, bool] | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._final_sent = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def submit(self, version: int, weights: dict, final: bool = False) -> None:
        self._raise_if_failed()
        with self._cond:
            if self._final_sent or (self._slot is not None and self._slot[2]):
                raise AssertionError("a version was submitted after the final one")
            self._slot = (version, weights, final)
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._slot is not None or self._closed)
                if self._slot is None:
                    return
                version, weights, final = self._slot
                self._slot = None
                self._final_sent = self._final_sent or final
            try:
                self._submit(version, weights, final)
            except BaseException as e:
                log.exception("%s failed", self.thread.name)
                self.error = e
                return

    def flush(self, timeout_s: float = 300.0) -> None:
        """Wait until everything submitted is done, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            raise TimeoutError(f"{self.thread.name} did not finish within {timeout_s:.0f} s")
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"{self.thread.name} failed: {self.error}") from self.error
