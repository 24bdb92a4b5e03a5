"""Who is in the run: the data-plane world by epoch, liveness, reported counters.

The actors are ranks 0..K-1 in order of registration (K = num_actors, an actor
group); actor rank 0 hosts the data-plane rendezvous. Rollouts that hold a
slot are *members*, with ranks K..K+N-1 in order of admission; the rest wait on
*standby*. Each member sends to its home actor (World.home), so every actor
trains on the rounds of its own rollouts: its share of a global batch. The
first world (epoch 0) forms once every one of the `target_rollouts` slots is
filled. After that every change of the member set
(Admin.Rescale, a standby admitted) starts a new epoch: members reach a safe
point, leave the old torch.distributed group, and rendezvous again. On a
rescale, leavers are the highest ranks, so the ranks of those who stay never
change. A worker
registering again with its worker_id (a restart) keeps its place.

A rollout silent for `evict_after_s` (killed, hung, its node gone) is evicted:
it leaves the world at once, the members after it move down a rank, and a new
epoch forms without it (a standby, or the worker itself restarted, fills the
slot). Each epoch's members are remembered for a while, so the actor can be told
which ranks of the epoch it is still in will send nothing more (`lost`).
Workers are never forgotten: a leaver's or an evicted worker's counters stay in
the totals, and one that registers again starts a new incarnation beside the old
(`incarnations`).

An actor rank taken over by a new process (registering under its worker_id
with a new worker_key: the old one died and was started again from a
checkpoint) is a new incarnation too: the world re-forms at a new epoch, around
the new rendezvous store when it is rank 0, and `actor_incarnation` counts
those, so that rollouts know the versions were rewound. No I/O; the clock is
injected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from dvla.types import Acks, EnvSpec, Membership, Role

from .errors import AlreadyExists, InvalidArgument, NotFound, OutOfOrder, PermissionDenied, Superseded

DEAD_AFTER_BEATS = 5
EPOCHS_REMEMBERED = 16  # members of the newest epochs, for the ranks lost in each
_ORDER = (Membership.MEMBER, Membership.LEAVING, Membership.STANDBY, Membership.LEFT, Membership.EVICTED)  # shown so
_LIVE = (Membership.MEMBER, Membership.STANDBY, Membership.LEAVING)  # a rollout that may still be running
REJOIN_WITHIN_S = 30.0  # a rollout live in a restored ledger and not registered again by then is evicted
MAX_ROLLOUTS = 1024
MAX_SHARDS = 64


@dataclass
class Worker:
    worker_id: str
    role: Role
    rank: int  # -1 unless a member (actors: 0..K-1)
    address: str
    last_seen: float
    env_spec: EnvSpec | None = None
    stats: dict = field(default_factory=dict)  # telemetry only: shown, summed, never acted on
    acks: Acks = field(default_factory=Acks)
    membership: Membership = Membership.MEMBER
    num_envs: int = 0  # rollout: envs at registration
    num_shards: int = 0  # rollout: env shard processes at registration (0: envs in-process, fixed)
    shards_target: int = 0  # rollout: shards to run now (Admin.Rescale)
    worker_key: int = 0  # the process's own number (a rollout's trajectory headers carry it; 0: none)

    @property
    def active_envs(self) -> int:
        """Envs that take part in each round: the shards to run times envs per shard."""
        if self.num_shards <= 0:
            return self.num_envs
        return self.num_envs // self.num_shards * self.shards_target


class Registry:
    def __init__(
        self,
        num_rollouts: int,
        heartbeat_s: float,
        clock: Callable[[], float],
        num_actors: int = 1,
        evict_after_s: float = 0.0,
    ):
        """evict_after_s: a rollout silent this long is evicted (0: twice the time it takes to show as dead)."""
        if num_rollouts < 1 or not 1 <= num_actors <= num_rollouts:
            raise ValueError(f"need num_rollouts >= num_actors >= 1, got {num_rollouts} and {num_actors}")
        self.evict_after_s = evict_after_s or 2 * DEAD_AFTER_BEATS * heartbeat_s
        self._retired: list[Worker] = []  # earlier incarnations of workers that registered again
        self._pending: dict[str, Worker] = {}  # live in a restored ledger, not registered again yet
        self._worlds: dict[int, list[Worker]] = {}  # epoch -> its rollout members, by rank
        self.events: list[str] = []  # what it did on its own, for the service's log (drain_events)
        self.target_rollouts, self.num_actors = num_rollouts, num_actors
        self._actors: list[str] = []  # actor worker ids; actor rank = index
        self.heartbeat_s = heartbeat_s
        self._clock = clock
        self._workers: dict[str, Worker] = {}
        self._members: list[str] = []  # rollout worker ids; rank = num_actors + index
        self._initial = True  # epoch 0 until its slots are filled: a fixed world of K + target_rollouts
        self.rendezvous_address = ""
        self.epoch = 0
        self.actor_incarnation = 0  # times actor rank 0 was replaced by a new process
        self.took_over = False  # workers registered again from a run under way (weight_control started again)

    # ------------------------------------------------------------------ the world
    @property
    def rejoin_within_s(self) -> float:
        """How long a worker live in a restored ledger has to register again before it counts as gone: its
        client retries at least every 5 s, so a live one is back well within this."""
        return max(self.evict_after_s, REJOIN_WITHIN_S)

    @property
    def world_size(self) -> int:
        return self.num_actors + (self.target_rollouts if self._initial else len(self._members))

    @property
    def episodes_per_update(self) -> int:
        """One round of every member's active envs (0 while the first world is still filling)."""
        if self._initial:
            return 0
        return sum(self._workers[m].active_envs for m in self._members)

    def episodes_for(self, w: Worker) -> int:
        """What a worker's heartbeat says about the global batch: for an actor rank, its share (one round
        of the members homed to it); for others, the whole (0 while the first world is still filling)."""
        if self._initial or w.role != Role.ACTOR or w.rank < 0:
            return self.episodes_per_update
        k = self.num_actors
        return sum(self._workers[m].active_envs for i, m in enumerate(self._members) if i % k == w.rank)

    def _bump(self) -> None:
        self.epoch += 1
        self._remember()

    def _remember(self) -> None:
        """Note the current epoch's members (the world that forms under this epoch number)."""
        self._worlds[self.epoch] = [self._workers[m] for m in self._members]
        for e in [e for e in self._worlds if e <= self.epoch - EPOCHS_REMEMBERED]:
            del self._worlds[e]

    def lost(self) -> list[tuple[int, int]]:
        """(epoch, rank) of every remembered epoch's members that were evicted: nothing more comes from them."""
        k = self.num_actors
        return [
            (e, k + i)
            for e, ws in sorted(self._worlds.items())
            for i, w in enumerate(ws)
            if w.membership == Membership.EVICTED
        ]

    def _admit(self, w: Worker) -> None:
        self._members.append(w.worker_id)
        w.membership, w.rank = Membership.MEMBER, self.num_actors + len(self._members) - 1
        if self._initial:
            if len(self._members) == self.target_rollouts:
                self._initial = False  # the world that forms is the one everyone waited for: no new epoch
            self._remember()
        else:
            self._bump()

    def _admit_standbys(self) -> int:
        admitted = 0
        for w in sorted(self.standbys(), key=lambda w: w.last_seen):
            if len(self._members) >= self.target_rollouts:
                break
            self._admit(w)
            admitted += 1
        return admitted

    def rescale(self, num_rollouts: int) -> tuple[list[str], int]:
        """Set the number of rollout workers: (workers told to leave, standbys admitted).

        Leavers are the highest ranks. Joiners are admitted from standby now, or
        when they register; each admission or removal starts a new epoch.
        """
        if not self.num_actors <= num_rollouts <= MAX_ROLLOUTS:
            raise InvalidArgument(
                f"num_rollouts must be in [{self.num_actors}, {MAX_ROLLOUTS}] (at least one per actor rank), "
                f"got {num_rollouts}"
            )
        old_world = self.world_size
        self.target_rollouts = num_rollouts
        leaving = self._members[num_rollouts:]
        for wid in leaving:
            w = self._workers[wid]
            w.membership, w.rank = Membership.LEAVING, -1
        del self._members[num_rollouts:]
        if self._initial and len(self._members) == num_rollouts:
            self._initial = False
        bumped = bool(leaving) or (self.world_size != old_world)
        admitted = self._admit_standbys()
        if bumped and not admitted:
            self._bump()  # ranks waiting in the old world's rendezvous must re-form with the new size
        self._remember()
        return leaving, admitted

    def rescale_shards(self, worker_id: str, num_shards: int) -> Worker:
        w = self._workers.get(worker_id)
        if w is None or w.role != Role.ROLLOUT:
            raise NotFound(f"no rollout worker '{worker_id}' is registered")
        if w.membership not in (Membership.MEMBER, Membership.STANDBY):
            raise OutOfOrder(f"rollout worker '{worker_id}' is {w.membership}")
        if w.num_shards <= 0:
            raise OutOfOrder(
                f"rollout worker '{worker_id}' steps its envs in-process; env shards exist from "
                "pipeline.mode=rollout_async on"
            )
        if not 1 <= num_shards <= MAX_SHARDS:
            raise InvalidArgument(f"num_shards must be in [1, {MAX_SHARDS}], got {num_shards}")
        w.shards_target = num_shards
        return w

    # ------------------------------------------------------------------ workers
    def check_publisher(self, worker_id: str) -> None:
        """PermissionDenied unless `worker_id` is actor rank 0: only it publishes (one version, one whole policy)."""
        w = self._workers.get(worker_id) if worker_id else None
        if w is None or w.role != Role.ACTOR or w.rank != 0:
            who = f"'{worker_id}'" if worker_id else "a publish without publisher_id"
            raise PermissionDenied(f"{who} may not publish weights: only the worker registered as actor rank 0 may")

    def register(
        self,
        role: Role | str,
        worker_id: str,
        address: str = "",
        rendezvous_address: str = "",
        env_spec: EnvSpec | None = None,
        num_envs: int = 0,
        num_shards: int = 0,
        worker_key: int = 0,
        next_epoch: int = 0,
    ) -> Worker:
        """next_epoch: a worker registering again after weight_control was restarted names the epoch after
        the one it is in; the world re-forms there (this registry numbers on from the newest it hears of)."""
        if not worker_id:
            raise InvalidArgument("worker_id is empty")
        try:
            role = Role(role)
        except ValueError:
            raise InvalidArgument(f"role must be actor or rollout, got '{role}'") from None
        if num_envs < 0 or not 0 <= num_shards <= MAX_SHARDS or (num_shards and num_envs % num_shards):
            raise InvalidArgument(
                f"num_envs={num_envs} and num_shards={num_shards}: need num_shards in "
                f"[0, {MAX_SHARDS}] dividing num_envs"
            )
        if next_epoch:
            self.took_over = True  # a run already under way: this weight_control was started again
        if next_epoch > self.epoch:
            self.epoch = next_epoch
            self._remember()
            self.events.append(f"'{worker_id}' registered again from data-plane epoch {next_epoch - 1}: "
                               f"the world re-forms at epoch {next_epoch}")  # fmt: skip
        actor_replaced = self._take_pending(worker_id, worker_key)
        now = self._clock()
        known = self._workers.get(worker_id)
        if (
            known is not None
            and known.role == Role.ROLLOUT == role
            and known.membership in _LIVE
            and _another_process(known, worker_key)
        ):
            self._evict(known, "a new process registered under its id: the old one is gone")
        if known is not None and known.membership in (Membership.LEFT, Membership.EVICTED):
            self._retired.append(known)  # a new incarnation: the old one's counters stay in the totals
            known = None
        if known is not None and known.role == Role.ACTOR == role and _another_process(known, worker_key):
            return self._restart_actor(known, address, rendezvous_address, env_spec, worker_key)
        if known is not None:
            if known.role != role:
                raise AlreadyExists(f"worker '{worker_id}' is registered as {known.role}, not {role}")
            known.last_seen, known.address = now, address or known.address
            known.env_spec = env_spec or known.env_spec
            known.worker_key = worker_key or known.worker_key
            if role == Role.ACTOR and known.rank == 0 and rendezvous_address:
                self.rendezvous_address = rendezvous_address
            return known
        if role == Role.ACTOR:
            if len(self._actors) >= self.num_actors:
                raise AlreadyExists(f"the run's {self.num_actors} actor rank(s) are all registered")
            if not self._actors and not rendezvous_address:
                raise InvalidArgument("actor rank 0 must give its data-plane rendezvous_address")
            if not self._actors:
                self.rendezvous_address = rendezvous_address
            w = Worker(worker_id, role, len(self._actors), address, now, env_spec, worker_key=worker_key)
            self._actors.append(worker_id)
            self._workers[worker_id] = w
            if actor_replaced:  # rollouts that registered again first wait in the dead one's epoch: move on
                self._bump()
                self.events.append(f"data-plane epoch {self.epoch} forms around actor rank {w.rank}'s new process")
            return w
        if env_spec is None:
            raise InvalidArgument("a rollout must give its env_spec")
        w = Worker(
            worker_id,
            role,
            -1,
            address,
            now,
            env_spec,
            membership=Membership.STANDBY,
            num_envs=num_envs,
            num_shards=num_shards,
            shards_target=num_shards,
            worker_key=worker_key,
        )
        self._workers[worker_id] = w
        if len(self._members) < self.target_rollouts:
            self._admit(w)
        return w

    def _restart_actor(
        self, old: Worker, address: str, rendezvous_address: str, env_spec: EnvSpec | None, worker_key: int
    ) -> Worker:
        """A new process took actor rank `old.rank` (the old one died): a new incarnation in its place. The
        data plane re-forms at a new epoch (rank 0: around its new rendezvous store); the old incarnation's
        counters stay in the totals (`retired_actors`)."""
        if old.rank == 0 and not rendezvous_address:
            raise InvalidArgument("actor rank 0 must give its data-plane rendezvous_address")
        old.membership = Membership.LEFT
        self._retired.append(old)
        w = Worker(old.worker_id, Role.ACTOR, old.rank, address, self._clock(), env_spec, worker_key=worker_key)
        self._workers[w.worker_id] = w
        if w.rank == 0:
            self.rendezvous_address = rendezvous_address
            self.actor_incarnation += 1
        self._bump()
        self.events.append(
            f"actor rank {w.rank} ('{w.worker_id}') started afresh (incarnation {self.actor_incarnation}): "
            f"data-plane epoch {self.epoch} forms around it"
        )
        return w

    def retired_actors(self) -> list[Worker]:
        """Earlier incarnations of actor ranks: their processes are gone, with whatever they held."""
        return [w for w in self._retired if w.role == Role.ACTOR]

    def heartbeat(self, worker_id: str, stats: dict, acks: Acks | None = None, worker_key: int = 0) -> Worker:
        """Record a worker's report. NotFound for an id never registered (weight_control was restarted: it
        registers again); Superseded for a process that a newer one registered under the same id replaced
        (it must not overwrite the newer one's counters)."""
        w = self._workers.get(worker_id)
        if w is None:
            raise NotFound(f"worker '{worker_id}' is not registered")
        if _another_process(w, worker_key):
            raise Superseded(
                f"worker '{worker_id}' was registered again by another process (worker key {w.worker_key}, "
                f"this one's is {worker_key}): this process is out of the run"
            )
        w.last_seen = self._clock()
        w.stats = stats
        w.acks = acks or Acks()
        if w.membership == Membership.LEAVING and w.acks.left_dataplane:
            w.membership = Membership.LEFT  # it has left the data plane for good
        return w

    def sweep(self) -> list[Worker]:
        """Evict every rollout silent for evict_after_s; the workers evicted now.

        A member's slot empties at once: the members after it move down a rank, a
        standby (if any) is admitted, and a new epoch forms without it.
        """
        now, evicted = self._clock(), []
        for w in [w for w in self._pending.values() if w.role == Role.ROLLOUT]:
            if now - w.last_seen >= self.rejoin_within_s:  # in the restored ledger, and never registered again
                del self._pending[w.worker_id]
                w.membership = Membership.EVICTED
                self._workers[w.worker_id] = w
                self.events.append(f"evicted rollout '{w.worker_id}' (known from the ledger, it did not register "
                                   f"again within {self.rejoin_within_s:g} s)")  # fmt: skip
        for w in list(self._workers.values()):
            if w.role == Role.ROLLOUT and w.membership in _LIVE and now - w.last_seen >= self.evict_after_s:
                self._evict(w, f"no heartbeat for {now - w.last_seen:.1f} s")
                evicted.append(w)
        return evicted

    def evict_broken(self, broken: list[tuple[int, int]]) -> list[Worker]:
        """Evict the workers of (epoch, rank) pairs whose connection to the actor broke; the workers evicted now.

        Only the worker that held the rank in that epoch, and only while it is still live: a later
        incarnation under the same id (a new process) is another worker, and a pair repeated by the
        next heartbeats finds its worker already evicted.
        """
        evicted = []
        for epoch, rank in broken:
            members = self._worlds.get(epoch, [])
            i = rank - self.num_actors
            w = members[i] if 0 <= i < len(members) else None
            if w is None or w.membership not in _LIVE or self._workers.get(w.worker_id) is not w:
                continue
            self._evict(w, f"the actor's connection to its rank {rank} of data-plane epoch {epoch} broke")
            evicted.append(w)
        return evicted

    def _evict(self, w: Worker, why: str) -> None:
        was_member = w.membership == Membership.MEMBER
        w.membership, w.rank = Membership.EVICTED, -1
        if was_member:
            self._members.remove(w.worker_id)
            for i, m in enumerate(self._members):
                self._workers[m].rank = self.num_actors + i
            self._bump()  # a fresh rendezvous: the dead worker may have arrived at the old one
            if not self._initial:
                self._admit_standbys()
        self.events.append(f"evicted rollout '{w.worker_id}' ({why}); data-plane epoch {self.epoch} forms without it")

    def drain_events(self) -> list[str]:
        """What the registry did on its own since last asked (evictions), for the service's log."""
        events, self.events = self.events, []
        return events

    def alive(self, w: Worker) -> bool:
        return self._clock() - w.last_seen < DEAD_AFTER_BEATS * self.heartbeat_s

    def seen_ago(self, w: Worker) -> float:
        return self._clock() - w.last_seen

    @property
    def complete(self) -> bool:
        """Every actor rank and every member of the current world are registered."""
        actors = len(self._actors)
        return (
            bool(self.rendezvous_address)
            and actors == self.num_actors
            and actors + len(self._members) == self.world_size
        )

    def find(self, worker_id: str) -> Worker | None:
        """The newest incarnation of `worker_id`, if it ever registered."""
        return self._workers.get(worker_id)

    def is_new_actor_process(self, worker_id: str, worker_key: int) -> bool:
        """Registering `worker_id` with `worker_key` would start a new incarnation of an actor rank."""
        known = self.find(worker_id)
        return known is not None and known.role == Role.ACTOR and _another_process(known, worker_key)

    def workers(self) -> list[Worker]:
        return sorted(self._workers.values(), key=lambda w: (_ORDER.index(w.membership), w.rank, w.worker_id))

    def actor(self) -> Worker | None:
        """Actor rank 0 (it publishes and answers for checkpoints); None until it registers."""
        return self._workers[self._actors[0]] if self._actors else None

    def actors(self) -> list[Worker]:
        """The actor ranks registered, by rank."""
        return [self._workers[a] for a in self._actors]

    def incarnations(self) -> list[Worker]:
        """Every worker, and the earlier incarnations of those that registered again (for the totals)."""
        return self.workers() + self._retired + list(self._pending.values())

    # ------------------------------------------------------------------ the ledger
    def ledger(self) -> dict:
        """What a weight_control started again needs and could not hear from anyone: every incarnation with its
        last report (the gone ones: left, evicted, replaced; the live ones in case they die before they
        register again), and how often actor rank 0 was replaced. Plain data (JSON-ready); `restore` takes
        it back."""
        gone = [w for w in self._workers.values() if w.role == Role.ROLLOUT and w.membership not in _LIVE]
        live = [w for w in self._workers.values() if w.role == Role.ACTOR or w.membership in _LIVE]
        return {
            "actor_incarnation": self.actor_incarnation,
            "gone": [_entry(w, False) for w in gone] + [_entry(w, True) for w in self._retired],
            "live": [_entry(w, False) for w in [*live, *self._pending.values()]],
        }

    def restore(self, ledger: dict) -> int:
        """Take back a ledger (this weight_control replaces one that died); returns the incarnations restored.

        Only into a registry nobody registered with yet. Gone rollouts are listed again as left or evicted
        (until their id registers anew); replaced incarnations stay apart. Live ones wait (`pending`): the
        same process registering again takes its place; another process under its id makes it a gone
        incarnation (an actor rank's: the next actor incarnation); a rollout that does neither within
        `rejoin_within_s` is evicted. All count in the totals as before. ValueError naming the entry when the
        ledger is malformed (nothing is restored then)."""
        if self._workers or self._retired or self._pending:
            raise ValueError("a ledger is restored only before any worker registers")
        if not isinstance(ledger, dict) or not isinstance(ledger.get("gone"), list):
            raise ValueError("a ledger is a mapping with a 'gone' list")
        if not isinstance(ledger.get("live"), list):
            raise ValueError("a ledger is a mapping with a 'live' list")
        incarnation = ledger.get("actor_incarnation", 0)
        if not isinstance(incarnation, int) or incarnation < 0:
            raise ValueError(f"actor_incarnation must be an integer >= 0, got {incarnation!r}")
        gone = [_from_entry(e, f"gone entry {i}", live=False) for i, e in enumerate(ledger["gone"])]
        live = [_from_entry(e, f"live entry {i}", live=True) for i, e in enumerate(ledger["live"])]
        current = [w.worker_id for w, retired in gone if not retired] + [w.worker_id for w, _ in live]
        if len(set(current)) != len(current):
            raise ValueError("ledger: a worker id is listed twice as its current incarnation")
        now = self._clock()
        for w, retired in gone:
            if retired:
                self._retired.append(w)
            else:
                self._workers[w.worker_id] = w
        for w, _ in live:
            w.last_seen = now  # heard of now: a rollout that does not come back is evicted in rejoin_within_s
            self._pending[w.worker_id] = w
        self.actor_incarnation = incarnation
        self.took_over = bool(gone or live) or self.took_over
        return len(gone) + len(live)

    def _take_pending(self, worker_id: str, worker_key: int) -> bool:
        """A worker registers under an id the restored ledger knew as live: the same process takes its place
        (its own reports count from now on); another process means that one is gone. True if that was an
        actor rank's: the world must re-form around the new process (as in _restart_actor)."""
        w = self._pending.pop(worker_id, None)
        if w is None or not _another_process(w, worker_key):
            return False
        if w.role == Role.ACTOR and w.rank == 0:
            self.actor_incarnation += 1  # actor rank 0 came back as a new process (from its checkpoint)
        w.membership, w.rank = (Membership.LEFT if w.role == Role.ACTOR else Membership.EVICTED), -1
        self._retired.append(w)
        self.events.append(f"'{worker_id}' registered as a new process: the one the ledger knew is gone")
        return w.role == Role.ACTOR

    def standbys(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.membership == Membership.STANDBY]

    def env_spec(self) -> EnvSpec | None:
        """The rollouts' common env spec; ValueError if they disagree."""
        specs = {w.env_spec for w in self._workers.values() if w.role == Role.ROLLOUT and w.env_spec}
        if len(specs) > 1:
            raise InvalidArgument(f"rollouts report different env specs: {specs}")
        return next(iter(specs), None)


def _another_process(known: Worker, worker_key: int) -> bool:
    """Both keys given and different: a new process under a known id (the old one is gone)."""
    return bool(worker_key and known.worker_key and worker_key != known.worker_key)


_GONE = (Membership.LEFT, Membership.EVICTED)


def _entry(w: Worker, retired: bool) -> dict:
    stats = {k: v for k, v in w.stats.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {"worker_id": w.worker_id, "role": w.role.value, "membership": w.membership.value, "rank": w.rank,
            "worker_key": w.worker_key, "retired": retired, "stats": stats}  # fmt: skip


def _from_entry(e, where: str, live: bool) -> tuple[Worker, bool]:
    """A ledger entry back as an incarnation, and whether it was replaced. Gone entries are left or evicted;
    live ones are members, standbys or leavers."""
    if not isinstance(e, dict):
        raise ValueError(f"{where}: not a mapping")
    try:
        role, membership = Role(e["role"]), Membership(e["membership"])
        worker_id, key, retired, stats = e["worker_id"], e.get("worker_key", 0), e.get("retired", False), e["stats"]
        rank = e.get("rank", -1)
    except KeyError as missing:
        raise ValueError(f"{where}: no {missing}") from None
    except ValueError as bad:
        raise ValueError(f"{where}: {bad}") from None
    if not isinstance(worker_id, str) or not worker_id:
        raise ValueError(f"{where}: worker_id must be a non-empty string")
    if not isinstance(key, int) or not 0 <= key < 1 << 63 or not isinstance(rank, int):
        raise ValueError(f"{where} ('{worker_id}'): worker_key must be an integer in [0, 2**63), rank an integer")
    if not isinstance(stats, dict) or not all(isinstance(v, (int, float)) for v in stats.values()):
        raise ValueError(f"{where} ('{worker_id}'): stats must map names to numbers")
    ok = membership in _LIVE and not retired if live else membership in _GONE and (retired or role == Role.ROLLOUT)
    if not ok:
        raise ValueError(f"{where} ('{worker_id}'): a {'live' if live else 'gone'} entry cannot be a "
                         f"{'replaced ' if retired else ''}{role} {membership}")  # fmt: skip
    w = Worker(worker_id, role, rank if live else -1, "", 0.0, stats=dict(stats), membership=membership,
               worker_key=key)  # fmt: skip
    return w, bool(retired)
