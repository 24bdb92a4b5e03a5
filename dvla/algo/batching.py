"""Dynamic batching of inference requests (RL-VLA3, eq. 1). Pure: the caller passes the time.

Requests (one per env shard whose observations are ready) wait until either the
batch holds max_batch observations or the oldest request has waited timeout_s;
then the whole waiting set runs as one inference batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable


class DynamicBatcher:
    def __init__(self, max_batch: int, timeout_s: float):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if timeout_s < 0:
            raise ValueError(f"timeout_s must be >= 0, got {timeout_s}")
        self.max_batch, self.timeout_s = max_batch, timeout_s
        self._waiting: OrderedDict[Hashable, tuple[int, float]] = OrderedDict()  # key -> (size, arrival)
        self.size = 0
        self.fired_full = 0
        self.fired_timeout = 0

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, key: Hashable, size: int, now: float) -> None:
        if key in self._waiting:
            raise ValueError(f"request {key!r} is already waiting")
        self._waiting[key] = (size, now)
        self.size += size

    def oldest_wait(self, now: float) -> float:
        return now - next(iter(self._waiting.values()))[1] if self._waiting else 0.0

    def ready(self, now: float) -> bool:
        return bool(self._waiting) and (self.size >= self.max_batch or self.oldest_wait(now) >= self.timeout_s)

    def time_left(self, now: float) -> float | None:
        """Seconds until the oldest request times out (0 if ready); None when nothing waits."""
        if not self._waiting:
            return None
        if self.size >= self.max_batch:
            return 0.0
        return max(0.0, self.timeout_s - self.oldest_wait(now))

    def take(self, now: float) -> list[Hashable]:
        """Every waiting request, oldest first; counts why the batch fired."""
        if self.size >= self.max_batch:
            self.fired_full += 1
        else:
            self.fired_timeout += 1
        keys = list(self._waiting)
        self._waiting.clear()
        self.size = 0
        return keys
