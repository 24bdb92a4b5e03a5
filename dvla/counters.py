"""The actor's episode ledger: every episode received is in exactly one place.

    received = queued + in_training + trained + dropped      (at every moment)

Both actor lanes move episodes between places under one lock, so a snapshot
(what the heartbeat reports) always balances.
"""

from __future__ import annotations

import threading


class EpisodeLedger:
    PLACES = ("queued", "in_training", "trained", "dropped")

    def __init__(self):
        self._lock = threading.Lock()
        self.received = 0
        self.queued = self.in_training = self.trained = self.dropped = 0

    def _move(self, n: int, src: str | None, dst: str) -> None:
        if n < 0:
            raise ValueError(f"cannot move {n} episodes")
        with self._lock:
            if src is None:
                self.received += n
            else:
                have = getattr(self, src)
                if have < n:
                    raise AssertionError(f"ledger: moving {n} episodes out of {src}, which holds {have}")
                setattr(self, src, have - n)
            setattr(self, dst, getattr(self, dst) + n)

    def receive(self, n: int) -> None:
        """Counted as queued from arrival, while the receive lane may still wait for room."""
        self._move(n, None, "queued")

    def take(self, n: int) -> None:
        self._move(n, "queued", "in_training")

    def drop(self, n: int, src: str = "in_training") -> None:
        self._move(n, src, "dropped")

    def train(self, n: int) -> None:
        self._move(n, "in_training", "trained")

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"received": self.received, **{p: getattr(self, p) for p in self.PLACES}}

    @staticmethod
    def balanced(s: dict[str, int]) -> bool:
        return s["received"] == sum(s[p] for p in EpisodeLedger.PLACES)
