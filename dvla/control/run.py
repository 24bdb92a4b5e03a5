"""The run as weight_control steers it: its state, pause and resume, checkpoint requests, rescaling, totals.

RunControl owns the version store and the registry and decides what each Admin
request does to them; it answers what the Heartbeat and Status replies report.
The server calls it from one asyncio loop, so nothing here needs a lock. Pure:
no I/O, and the uptime clock is injected.
"""

from __future__ import annotations

from collections.abc import Callable

from dvla.types import Acks, Membership, Role, RunState, SenderCounts

from .errors import InvalidArgument, OutOfOrder
from .registry import Registry, Worker
from .store import VersionStore

MAX_CHECKPOINT_WAIT_S = 86400.0
LEDGER_FORMAT = 1

# Summed over every worker's last report; the actor reports what it received, trained, dropped,
# queued and holds in training, the rollouts what they produced and sent.
_REPORTED = (
    "env_steps_produced",
    "episodes_produced",
    "episodes_sent",
    "episodes_received",
    "episodes_trained",
    "episodes_dropped",
    "episodes_queued",
    "episodes_in_training",
)


class RunControl:
    """The store, the registry and the run-wide directives: paused, and checkpoint requests.

    Checkpoints: Admin.Checkpoint bumps `checkpoint_request`; the actor sees the
    number in its heartbeat reply, writes one checkpoint per new number and
    acknowledges the last one written (Acks.checkpoint_request_done).

    Counting: the actor's heartbeat carries each rollout's counters as the last
    batch it received from that rollout said them (SenderCounts). A rollout's
    episodes count as produced and sent at least that far, so the totals never
    show more received than sent, though rollouts report only every heartbeat.
    """

    def __init__(self, store: VersionStore, registry: Registry, clock: Callable[[], float]):
        self.store = store
        self.registry = registry
        self._clock = clock
        self._started = clock()
        self.paused = False
        self.checkpoint_request = 0  # requests so far; the actor writes one per new number
        self.checkpoint_done = 0  # the last request the actor reported written
        self._senders: dict[int, SenderCounts] = {}  # worker key -> counters the actor last saw
        self._sent_before: dict[int, int] = {}  # worker key -> sent to earlier actor incarnations (the actor says)

    @property
    def state(self) -> RunState:
        latest = self.store.latest
        if latest is not None and latest.final:
            return RunState.FINISHED
        if self.paused:
            return RunState.PAUSED
        return RunState.STARTING if latest is None else RunState.RUNNING

    @property
    def uptime_s(self) -> float:
        return self._clock() - self._started

    def _check_live(self, what: str) -> None:
        if self.state == RunState.FINISHED:
            raise OutOfOrder(f"the run has finished: there is nothing to {what}")

    # ------------------------------------------------------------------ pause and resume
    def set_paused(self, paused: bool) -> bool:
        """Pause or resume the run; True if that changed anything (watchers need to hear of it)."""
        self._check_live("pause or resume")
        if self.paused == paused:
            return False
        self.paused = paused
        return True

    # ------------------------------------------------------------------ checkpoints
    def request_checkpoint(self, timeout_s: float = 0.0) -> int:
        """Ask the actor for a checkpoint; returns the request's number.

        `timeout_s` is how long the caller will wait for it (0: its default); it is
        checked here, after the run's state, so that a refused request changes nothing.
        """
        self._check_live("checkpoint")
        if self.registry.actor() is None:
            raise OutOfOrder("no actor is registered: there is nothing to checkpoint")
        if not 0 <= timeout_s <= MAX_CHECKPOINT_WAIT_S:  # NaN fails too
            raise InvalidArgument(f"timeout_s must be in [0, {MAX_CHECKPOINT_WAIT_S:.0f}] seconds, got {timeout_s}")
        self.checkpoint_request += 1
        return self.checkpoint_request

    def checkpoint_request_for(self, w: Worker) -> int:
        """The checkpoint request a worker's heartbeat reply carries: only the actor writes checkpoints."""
        return self.checkpoint_request if w.role == Role.ACTOR else 0

    def on_heartbeat(
        self,
        worker_id: str,
        stats: dict,
        acks: Acks | None = None,
        senders: list[SenderCounts] = (),
        broken: list[tuple[int, int]] = (),
        worker_key: int = 0,
    ) -> tuple[Worker, bool]:
        """Record a heartbeat; also True if it changed what others wait on: the actor acknowledged a
        checkpoint request it had not before, or reported broken ranks whose workers are evicted now.

        broken: (epoch, rank) pairs whose data-plane connection to the actor broke; worker_key: the reporting
        process's, as registered (Superseded if a newer process took its id)."""
        w = self.registry.heartbeat(worker_id, stats, acks, worker_key)
        if w.role != Role.ACTOR:
            return w, False
        evicted = self.state != RunState.FINISHED and bool(self.registry.evict_broken(list(broken)))
        for c in senders:
            held = self._senders.get(c.worker_key)
            if held is None or c.episodes_sent >= held.episodes_sent:
                self._senders[c.worker_key] = c
            self._sent_before[c.worker_key] = c.episodes_sent_before
        done = w.acks.checkpoint_request_done
        # a weight_control started again numbers its requests on from the actor's (which writes only newer ones)
        self.checkpoint_request = max(self.checkpoint_request, done)
        acked = bool(done) and done != self.checkpoint_done
        self.checkpoint_done = done if acked else self.checkpoint_done
        return w, acked or evicted

    def checkpoint_written(self, n: int) -> bool:
        """Whether the actor has reported checkpoint request `n` (or a later one) written."""
        actor = self.registry.actor()
        return actor is not None and actor.acks.checkpoint_request_done >= n

    def checkpoint_result(self) -> tuple[int, str]:
        """(policy version, path) of the newest checkpoint the actor reported; (-1, "") if none."""
        actor = self.registry.actor()
        acks = actor.acks if actor is not None else Acks()
        return acks.checkpoint_version, acks.checkpoint_path

    # ------------------------------------------------------------------ rescaling
    def rescale(self, num_rollouts: int, worker_id: str = "", num_shards: int = 0) -> tuple[list[str], int]:
        """Admin.Rescale: set the number of rollout workers (0: unchanged) and/or one worker's env shards.

        Returns (workers told to leave, standbys admitted).
        """
        self._check_live("rescale")
        if num_rollouts < 0 or num_shards < 0:
            raise InvalidArgument("num_rollouts and num_shards must be >= 0 (0: unchanged)")
        if bool(worker_id) != bool(num_shards):
            raise InvalidArgument("give worker_id and num_shards together, to change one worker's env shards")
        if not num_rollouts and not num_shards:
            raise InvalidArgument("nothing to rescale: set num_rollouts, or worker_id and num_shards")
        if num_shards:
            self.registry.rescale_shards(worker_id, num_shards)
        return self.registry.rescale(num_rollouts) if num_rollouts else ([], 0)

    # ------------------------------------------------------------------ registering
    def register(self, role, worker_id: str, *args, worker_key: int = 0, **kw) -> Worker:
        """Registry.register; when actor rank 0 is a new process (started afresh from a checkpoint), the
        versions its predecessor published go with it: it publishes its checkpoint's version first."""
        r = self.registry
        before = r.actor_incarnation
        if self.state == RunState.FINISHED and r.is_new_actor_process(worker_id, worker_key):
            raise OutOfOrder("the run has finished: a new actor process has nothing to continue")
        w = r.register(role, worker_id, *args, worker_key=worker_key, **kw)
        if r.actor_incarnation != before:
            self._sent_before = {}  # what went to earlier actors, as the new one will report it
            dropped = self.store.rewind()
            r.events.append(
                f"versions {dropped[0]}..{dropped[-1]} dropped: the new actor continues from its checkpoint"
                if dropped
                else "no version was held: the new actor publishes its checkpoint's first"
            )
        return w

    # ------------------------------------------------------------------ faults
    def actors_missing(self) -> list[tuple[str, float]]:
        """(worker id, seconds silent) of every actor rank that stopped heartbeating while the run goes on."""
        if self.state == RunState.FINISHED:
            return []
        r = self.registry
        return [(w.worker_id, r.seen_ago(w)) for w in r.actors() if not r.alive(w)]

    def actor_silent_s(self) -> float:
        """Seconds actor rank 0 has been silent, once it shows as dead while the run goes on (else 0): rollouts
        give up after control.lost_after_s of it."""
        a, r = self.registry.actor(), self.registry
        if a is None or self.state == RunState.FINISHED or r.alive(a):
            return 0.0
        return r.seen_ago(a)

    def sweep(self) -> list[Worker]:
        """Evict the rollouts that stopped heartbeating (Registry.sweep); those evicted now. Not once the
        run has finished: its rollouts exit by themselves then, and what they sent is all in."""
        return [] if self.state == RunState.FINISHED else self.registry.sweep()

    # ------------------------------------------------------------------ the ledger
    def ledger(self) -> dict:
        """What the totals need that a weight_control started again would not hear from anyone: the gone
        incarnations (Registry.ledger) and what the actors saw of each rollout. Plain data, JSON-ready; the
        service keeps it in a file (control.state_path) and a new weight_control restores it."""
        return {
            "format": LEDGER_FORMAT,
            **self.registry.ledger(),
            "senders": [
                [c.worker_key, c.episodes_produced, c.episodes_sent, c.env_steps_produced]
                for c in self._senders.values()
            ],  # fmt: skip
            "sent_before": [[k, n] for k, n in self._sent_before.items()],
        }

    def restore(self, ledger: dict) -> int:
        """Take back a ledger written by the weight_control this one replaces; returns the incarnations
        restored. ValueError naming what is malformed (nothing is restored then)."""
        if not isinstance(ledger, dict) or ledger.get("format") != LEDGER_FORMAT:
            found = ledger.get("format") if isinstance(ledger, dict) else type(ledger).__name__
            raise ValueError(f"not a ledger of format {LEDGER_FORMAT} (found {found!r})")
        try:
            senders = {int(k): SenderCounts(int(k), int(p), int(n), int(e)) for k, p, n, e in ledger["senders"]}
            sent_before = {int(k): int(n) for k, n in ledger["sent_before"]}
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"ledger senders or sent_before: {type(e).__name__}: {e}") from None
        n = self.registry.restore(ledger)
        self._senders, self._sent_before = senders, sent_before
        return n

    # ------------------------------------------------------------------ counting
    def totals(self) -> dict[str, int]:
        """Sums of the workers' last reports, keyed like admin.proto's Totals.

        Each worker's own numbers are a consistent snapshot; across workers they
        are as fresh as the last heartbeats. Workers are never forgotten, so a
        leaver's counts stay in, and so do an evicted worker's: what it produced
        but no actor received is lost (the actor reports, per rollout, what the
        newest batch it received said was sent). An actor process that died (and
        was started afresh) keeps what it trained and dropped; what was sent to it
        and it did not finish is lost too: per rollout, the new actor reports what
        was sent before its first batch from it (until then, all that was sent).
        produced = trained + dropped + lost + in flight; by place, in flight is
        unsent, on the wire, queued or in training.
        """
        t = {k: 0 for k in _REPORTED}
        retired = {id(w) for w in self.registry.retired_actors()}
        lost_unsent = sent_to_retired = finished_by_retired = 0
        for w in self.registry.incarnations():
            if id(w) in retired:  # its queue and its batch in training died with it
                trained, dropped = int(w.stats.get("episodes_trained", 0)), int(w.stats.get("episodes_dropped", 0))
                t["episodes_trained"] += trained
                t["episodes_dropped"] += dropped
                t["episodes_received"] += trained + dropped
                finished_by_retired += trained + dropped
                continue
            rollout = w.role == Role.ROLLOUT and w.worker_key
            seen = self._senders.get(w.worker_key) if rollout else None
            counts = {k: max(int(w.stats.get(k, 0)), getattr(seen, k, 0)) for k in _REPORTED}
            if w.membership == Membership.EVICTED:
                delivered = seen.episodes_sent if seen is not None else 0
                lost_unsent += counts["episodes_produced"] - delivered
                counts["episodes_sent"] = delivered
            if w.role == Role.ROLLOUT and retired:  # a rollout without a key: all it sent, as far as we know
                sent = counts["episodes_sent"]
                sent_to_retired += min(self._sent_before.get(w.worker_key, sent), sent)
            for k in _REPORTED:
                t[k] += counts[k]
        # Rollouts this weight_control never saw (it was started again, after they died): the actor still
        # reports what each delivered; nothing more will come from them. (Otherwise an unknown key is no one's.)
        known = {w.worker_key for w in self.registry.incarnations() if w.role == Role.ROLLOUT and w.worker_key}
        for key, seen in self._senders.items() if self.registry.took_over else ():
            if key not in known:
                t["episodes_produced"] += seen.episodes_produced
                t["env_steps_produced"] += seen.env_steps_produced
                t["episodes_sent"] += seen.episodes_sent
                lost_unsent += seen.episodes_produced - seen.episodes_sent
                if retired:
                    sent_to_retired += min(self._sent_before.get(key, seen.episodes_sent), seen.episodes_sent)
        lost_with_actor = sent_to_retired - finished_by_retired if retired else 0
        t["episodes_lost"] = lost_unsent + lost_with_actor
        t["episodes_in_flight"] = (
            t["episodes_produced"] - t["episodes_trained"] - t["episodes_dropped"] - t["episodes_lost"]
        )
        t["episodes_unsent"] = t["episodes_produced"] - t["episodes_sent"] - lost_unsent
        t["episodes_on_wire"] = t["episodes_sent"] - t["episodes_received"] - lost_with_actor
        return t
