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
partial   with `trained` names (policy.frozen: part of the model does not train), the first version
          goes out whole and every later one carries only those tensors, naming the whole one
          as its base; rollouts take the rest from the base. Whenever weight_control does not
          hold the base (it was restarted) the version goes out whole again and becomes the base.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from dvla import telemetry
from dvla.ports import WeightSink
from dvla.weights import pack

log = logging.getLogger("dvla.lanes.publish")


# a sink's error codes (ControlError, RpcFailed) that say the store holds this version or a newer one
_ALREADY_THERE = ("ALREADY_EXISTS", "FAILED_PRECONDITION")


class PublishLane:
    def __init__(self, sink: WeightSink, publisher_id: str, trained: frozenset[str] | None = None):
        self.sink, self.publisher_id = sink, publisher_id
        self.trained = trained  # names a partial version carries (None: every version whole)
        self.published: list[int] = []
        self.publish_s: list[float] = []
        self.bytes_sent: list[int] = []
        self._last: tuple[int, dict, bool] | None = None
        self._base: tuple[int, str] | None = None  # (version, sha256) of the whole version partial ones name
        self._said_partial = False
        self._lock = threading.Lock()  # a publish and a republish (from the heartbeat's thread) take turns

    def submit(self, version: int, weights: dict, final: bool = False) -> None:
        with self._lock:
            t = time.monotonic()
            with telemetry.span("publish.version", version=version, tensors=len(weights)) as sp:
                if self.trained is not None and self._base is not None:
                    sent = self._partial(version, weights, final)
                else:
                    sent = self._whole(version, weights, final)
                sp.set_attribute("bytes", sent)
            self.publish_s.append(time.monotonic() - t)
            self.bytes_sent.append(sent)
            self.published.append(version)
            self._last = (version, weights, final)

    def _whole(self, version: int, weights: dict, final: bool) -> int:
        sent = self.sink.publish(version, weights, final=final, publisher_id=self.publisher_id)
        if self.trained is not None:
            self._base = (version, pack(weights)[0].sha256)  # what partial versions will name
        return sent

    def _partial(self, version: int, weights: dict, final: bool) -> int:
        part = {k: v for k, v in weights.items() if k in self.trained}
        try:
            sent = self.sink.publish(version, part, final=final, publisher_id=self.publisher_id, base=self._base)
            if not self._said_partial:
                self._said_partial = True
                log.info("v%d goes out partial, as every version after it (policy.frozen): %.2f MiB of %.2f, "
                         "on whole v%d", version, sent / 2**20, self.bytes_sent[0] / 2**20, self._base[0])  # fmt: skip
            return sent
        except Exception as e:
            if getattr(e, "code", "") != "NOT_FOUND":
                raise
            log.warning("weight_control does not hold base v%d (restarted?): v%d goes out whole", self._base[0],
                        version)  # fmt: skip
            return self._whole(version, weights, final)

    def republish(self) -> int | None:
        """Publish the last version again (weight_control was restarted and holds none); the version
        stored, or None: nothing published yet, or the store holds it or a newer one already. Never raises:
        the next update's version will come anyway."""
        with self._lock:
            if self._last is None:
                return None
            version, weights, final = self._last
            try:
                self._whole(version, weights, final)  # whole: a restarted weight_control holds no base
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
