"""The seams every lane depends on, and nothing else of the outside world.

    weights       WeightSource (a rollout fetches versions)   WeightSink (the actor publishes them)
    trajectories  TrajectorySink (a rollout sends rounds)     TrajectorySource (the actor receives them)
    data plane    Plane: form / leave a data-plane epoch, and the sink or source of the epoch formed
    directives    Control: what weight_control last told this worker (pause, epoch, shards, checkpoints)
    actor group   ActorGroup: the other actor ranks training the same policy (Solo when there are none)

The services wire real implementations: the gRPC client (dvla/rpc/client.py)
for weights, torch.distributed (dvla/dataplane/) for trajectories, the
heartbeat (dvla/membership.py) for directives. dvla/inproc.py wires in-memory
ones (a version store called directly, queues, a directive one can set), so the
same lanes run in one process for fast tests. A lane never imports grpc, a
process group or a service.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from dvla.types import Membership, RunState, TrajectoryBatch, World


@dataclass(frozen=True)
class VersionEvent:
    """The newest version weight_control holds, and the run's state."""

    version: int  # -1 when none is published yet
    final: bool
    state: RunState


@dataclass(frozen=True)
class Directives:
    """What weight_control tells a worker in each heartbeat reply."""

    state: RunState = RunState.UNKNOWN
    latest_version: int = -1
    epoch: int = 0  # the data-plane epoch to be in; a newer one means: reach a safe point and re-form
    rank: int = -1  # rank in that epoch; -1: not a member (standby, or leaving)
    world_size: int = 0
    membership: Membership = Membership.UNKNOWN
    num_shards: int = 0  # rollout: env shards to run (0: no instruction)
    checkpoint_request: int = 0  # actor: newest Admin.Checkpoint request number
    episodes_per_update: int = 0  # actor: its share of a global batch, one round of its rollouts' envs (0: unknown)
    rendezvous_address: str = ""
    num_actors: int = 1  # K: data-plane ranks 0..K-1 are the actor group's
    lost: tuple[tuple[int, int], ...] = ()  # actor: (epoch, rank) of recent ranks whose worker was evicted
    actor_incarnation: int = 0  # times actor rank 0 was started afresh; a new one rewinds the versions
    actor_silent_s: float = 0.0  # rollout: seconds actor rank 0 has been silent, once it shows as dead (else 0)

    def lost_ranks(self, epoch: int) -> set[int]:
        """Ranks of data-plane epoch `epoch` whose worker weight_control evicted: nothing more will come."""
        return {r for e, r in self.lost if e == epoch}

    @property
    def paused(self) -> bool:
        """Start no new episodes (Admin.Pause)."""
        return self.state == RunState.PAUSED

    @property
    def out_of_the_run(self) -> bool:
        """This worker takes no part in any later epoch: rescaled away, evicted, or the run has finished."""
        out = (Membership.LEAVING, Membership.LEFT, Membership.EVICTED)
        return self.membership in out or self.state == RunState.FINISHED

    def world(self) -> World | None:
        """The epoch this worker is to be in, if it holds a rank there."""
        if self.rank < 0:
            return None
        return World(self.epoch, self.rank, self.world_size, self.num_actors, self.rendezvous_address)


class WeightSource(Protocol):
    """Where a rollout's policy versions come from."""

    def latest(self) -> VersionEvent: ...

    def watch(self, after_version: int, stop: threading.Event | None = None) -> Iterator[VersionEvent]:
        """Version or state changes newer than after_version (the current one first), until stop is set."""
        ...

    def fetch(self, version: int | None = None) -> tuple[int, bool, dict[str, torch.Tensor]]:
        """(version, final, tensors) of `version`, or of the newest one (None); checksum verified. Always
        whole: a partial version comes completed from the whole one it names."""
        ...


class WeightSink(Protocol):
    """Where the actor's policy versions go."""

    def publish(
        self,
        version: int,
        tensors: dict[str, torch.Tensor],
        final: bool = False,
        publisher_id: str = "",
        base: tuple[int, str] | None = None,
    ) -> int:
        """Store one version (the bytes sent); versions only go forward, and none follows a final one. With
        base, (version, sha256) of a whole version held, the version is partial: only what trains; the rest
        is the base's. NOT_FOUND when the base is not held: publish a whole version."""
        ...


class TrajectorySink(Protocol):
    """A rollout's end of the data plane in one epoch: towards the actor."""

    def send(self, batch: TrajectoryBatch) -> None:
        """Returns once the batch has left; blocks while the actor has no room (backpressure)."""
        ...

    def send_end(self, epoch_end: int | None = None) -> None:
        """END: no more for the run; with epoch_end=e, only for data-plane epoch e."""
        ...


class TrajectorySource(Protocol):
    """The actor's end of the data plane in one epoch: from every rollout rank."""

    @property
    def open_sources(self) -> list[int]:
        """Ranks that have not sent END or EPOCH_END yet."""
        ...

    def recv(self, timeout_s: float | None = None) -> tuple[int, TrajectoryBatch | None]:
        """(rank, batch), or (rank, None) when that rank ended; TimeoutError after timeout_s."""
        ...

    def run_ended(self) -> bool:
        """The ranks that ended did so with END (the run is over), not EPOCH_END, and none is open."""
        ...

    def drop(self, rank: int) -> None:
        """Receive nothing more from `rank` (its worker was evicted: it is dead or cut off)."""
        ...


class SourceLost(ConnectionError):
    """A rank's connection broke (its process died, its node went away): that rank is closed."""

    def __init__(self, rank: int, cause: BaseException | str):
        super().__init__(f"data-plane rank {rank} is lost: {cause}")
        self.rank = rank


class SinkLost(ConnectionError):
    """The connection to the actor broke (its process died, its node went away): this epoch's sink is dead."""


class ActorLost(TimeoutError):
    """The actor did not come back (no new data-plane epoch) within the bound: the worker gives up."""


class Plane(Protocol):
    """This process's membership of the data plane, one epoch at a time."""

    def form(self, world: World, abort: Callable[[], bool] = lambda: False) -> bool:
        """Join `world`; False when the epoch was cancelled (abort() here, or on another rank)."""
        ...

    def leave(self) -> None: ...

    def sink(self, dst: int = 0) -> TrajectorySink:
        """Towards rank `dst` (this rollout's home actor, World.home()), in the epoch formed."""
        ...

    def source(self, ranks: list[int]) -> TrajectorySource:
        """From `ranks`, in the epoch formed."""
        ...


class Control(Protocol):
    """The run's directives as weight_control last said them."""

    @property
    def directives(self) -> Directives: ...

    def beat(self) -> None:
        """Report now and read fresh directives, instead of waiting for the next period."""
        ...

    def acknowledge(self, **done) -> None:
        """Tell weight_control of something done (fields of dvla.types.Acks), now."""
        ...


class ActorGroup(Protocol):
    """The actor ranks that train one policy together, each on its share of the global batch.

    The learner sums what must be global (minibatch sizes, advantage moments, loss terms, stats)
    through it, so K ranks compute the update one rank would compute on the union of their data.
    """

    rank: int
    size: int
    collective_forward: bool
    """Every forward is a collective (FSDP gathers parameters): all ranks must make the same calls."""
    grad_scale: float
    """Factor on each rank's loss so the strategy's gradient reduction (a mean over ranks) yields the sum."""

    def wrap(self, policy: torch.nn.Module) -> torch.nn.Module:
        """Prepare `policy` for training in the group; returns the module whose forward trains it."""
        ...

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """`t` reduced over the ranks ('sum', 'min' or 'max'), in place; returned."""
        ...

    def full_weights(self, policy: torch.nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole policy as CPU tensors on rank 0 (None on the others): one version, gathered once.
        A collective: every rank calls it."""
        ...

    def send_batch(self, batch: TrajectoryBatch, dst: int) -> None:
        """`batch` to actor rank `dst` (evening a global batch out), returning once it has left."""
        ...

    def recv_batch(self, src: int) -> TrajectoryBatch:
        """The next batch actor rank `src` sends, on the CPU."""
        ...
