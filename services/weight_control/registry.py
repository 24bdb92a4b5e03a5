"""Who is in the run: ranks for the data plane, liveness, reported counters.

The actor is rank 0 and hosts the data-plane rendezvous; rollouts take ranks
1..N in order of registration. A worker registering again with its worker_id
(a restart) keeps its rank. No I/O; the clock is injected.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from dvla.types import EnvSpec

from .errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied, TooLarge

ACTOR, ROLLOUT = "actor", "rollout"
DEAD_AFTER_BEATS = 5


@dataclass
class Worker:
    worker_id: str
    role: str
    rank: int
    address: str
    last_seen: float
    env_spec: EnvSpec | None = None
    stats: dict = field(default_factory=dict)


class Registry:
    def __init__(self, num_rollouts: int, heartbeat_s: float, clock: Callable[[], float] = time.monotonic):
        if num_rollouts < 1:
            raise ValueError("num_rollouts must be >= 1")
        self.num_rollouts = num_rollouts
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._workers: dict[str, Worker] = {}
        self.rendezvous_address = ""
        self.epoch = 0

    @property
    def world_size(self) -> int:
        return self.num_rollouts + 1

    def check_publisher(self, worker_id: str) -> None:
        """PermissionDenied unless `worker_id` is the worker registered as actor: only it may publish."""
        w = self._workers.get(worker_id) if worker_id else None
        if w is None or w.role != ACTOR:
            who = f"'{worker_id}'" if worker_id else "a publish without publisher_id"
            raise PermissionDenied(f"{who} may not publish weights: only the worker registered as actor may")

    def register(self, role: str, worker_id: str, address: str = "", rendezvous_address: str = "",
                 env_spec: EnvSpec | None = None) -> Worker:
        if not worker_id:
            raise InvalidArgument("worker_id is empty")
        if role not in (ACTOR, ROLLOUT):
            raise InvalidArgument(f"role must be actor or rollout, got '{role}'")
        now = self._clock()
        known = self._workers.get(worker_id)
        if known is not None:
            if known.role != role:
                raise AlreadyExists(f"worker '{worker_id}' is registered as {known.role}, not {role}")
            known.last_seen, known.address = now, address or known.address
            known.env_spec = env_spec or known.env_spec
            if role == ACTOR and rendezvous_address:
                self.rendezvous_address = rendezvous_address
            return known
        if role == ACTOR:
            if any(w.role == ACTOR for w in self._workers.values()):
                raise AlreadyExists("an actor is already registered")
            if not rendezvous_address:
                raise InvalidArgument("the actor must give its data-plane rendezvous_address")
            self.rendezvous_address = rendezvous_address
            rank = 0
        else:
            if env_spec is None:
                raise InvalidArgument("a rollout must give its env_spec")
            taken = {w.rank for w in self._workers.values() if w.role == ROLLOUT}
            free = [r for r in range(1, self.num_rollouts + 1) if r not in taken]
            if not free:
                raise TooLarge(f"the world is full: {self.num_rollouts} rollout(s) already registered")
            rank = free[0]
        w = Worker(worker_id, role, rank, address, now, env_spec)
        self._workers[worker_id] = w
        return w

    def heartbeat(self, worker_id: str, stats: dict) -> Worker:
        w = self._workers.get(worker_id)
        if w is None:
            raise NotFound(f"worker '{worker_id}' is not registered")
        w.last_seen = self._clock()
        w.stats = stats
        return w

    def alive(self, w: Worker) -> bool:
        return self._clock() - w.last_seen < DEAD_AFTER_BEATS * self.heartbeat_s

    def seen_ago(self, w: Worker) -> float:
        return self._clock() - w.last_seen

    @property
    def complete(self) -> bool:
        return bool(self.rendezvous_address) and len(self._workers) == self.world_size

    def workers(self) -> list[Worker]:
        return sorted(self._workers.values(), key=lambda w: w.rank)

    def env_spec(self) -> EnvSpec | None:
        """The rollouts' common env spec; ValueError if they disagree."""
        specs = {w.env_spec for w in self._workers.values() if w.role == ROLLOUT and w.env_spec}
        if len(specs) > 1:
            raise InvalidArgument(f"rollouts report different env specs: {specs}")
        return next(iter(specs), None)
