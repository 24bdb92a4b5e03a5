"""Plain data types shared by every service: what crosses the planes.

Shapes use B = episodes in a batch, T = padded decisions per episode, D = state
obs dim, I = uint8 values per flattened camera image (0 without a camera), S = the
policy's sample width (the action dim for the MLP). A decision executes a chunk of
up to C env steps. Tensors here are CPU tensors unless a caller moves them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch


class TextEnum(str, Enum):
    """An enum whose members equal, hash, print and format like their string values (StrEnum before 3.11),
    so callers and wire maps keyed by the strings keep working."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class Role(TextEnum):
    ACTOR = "actor"
    ROLLOUT = "rollout"


class Membership(TextEnum):
    """A worker's place in the data-plane world; the actor is always a member."""

    MEMBER = "member"  # holds a rank in the current epoch
    STANDBY = "standby"  # registered, waits for a slot
    LEAVING = "leaving"  # told to leave (Admin.Rescale); sends what it holds, then leaves the data plane
    LEFT = "left"  # has left the data plane; may register again and start afresh
    EVICTED = "evicted"  # stopped heartbeating (dead): out of the world; what it had not delivered is lost
    UNKNOWN = "unknown"  # a client's word for a membership it has not heard (or cannot read)


class RunState(TextEnum):
    STARTING = "starting"  # no version published yet
    RUNNING = "running"
    PAUSED = "paused"  # Admin.Pause: workers hold at their next safe point
    FINISHED = "finished"  # the latest version is final; nothing may follow it
    UNKNOWN = "unknown"  # a client's word for a state it has not heard (or cannot read)


@dataclass(frozen=True)
class EnvSpec:
    """What a policy needs to know about an environment to be built."""

    task: str
    obs_dim: int
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    max_episode_steps: int
    image_shape: tuple[int, ...] = ()
    """(H, W, 3) of the camera image in each observation; () when the obs has no image."""
    instruction: str = ""
    """The task in words, for language-conditioned policies."""

    @property
    def image_size(self) -> int:
        """I, uint8 values per flattened image (0 without a camera)."""
        n = 1
        for d in self.image_shape:
            n *= d
        return n if self.image_shape else 0


@dataclass(frozen=True)
class Acks:
    """What a worker has done that weight_control acts on; its stats beside them are telemetry only."""

    checkpoint_request_done: int = 0  # actor: the newest Admin.Checkpoint request written
    checkpoint_version: int = -1  # actor: the version of the newest checkpoint (-1: none)
    checkpoint_path: str = ""
    left_dataplane: bool = False  # this worker has left the data plane for good


@dataclass(frozen=True)
class SenderCounts:
    """A rollout's counters at the moment it sent a batch, carried to the actor in the batch's header."""

    worker_key: int  # the rollout's own number (registered with weight_control), 1 .. 2**63 - 1
    episodes_produced: int
    episodes_sent: int
    env_steps_produced: int
    # Set by the actor process that received the batch, not carried on the wire: the rollout's episodes_sent
    # before the first batch this actor process received from it (what went to earlier actor incarnations).
    episodes_sent_before: int = 0


@dataclass(frozen=True)
class World:
    """One data-plane epoch as this process sees it: its rank among `size` ranks.

    Ranks 0..actors-1 are the actor group's; rollouts follow. Rollout rank r sends to actor
    (r - actors) % actors, its home: with M rollouts and K actors, a multiple, each actor has M/K.
    """

    epoch: int
    rank: int
    size: int
    actors: int = 1
    rendezvous: str = ""  # host:port of actor rank 0's store for this epoch ("": the one already connected)

    def home(self) -> int:
        """A rollout rank's actor."""
        return (self.rank - self.actors) % self.actors

    def rollouts_of(self, actor: int) -> list[int]:
        """The rollout ranks whose home is actor rank `actor`."""
        return [r for r in range(self.actors, self.size) if (r - self.actors) % self.actors == actor]


@dataclass
class TrajectoryBatch:
    """B finished episodes from one rollout worker, padded to T decisions.

    Decision t of episode b is real when t < lengths[b]; padding is zero. Each
    decision's action chunk ran chunk_steps[b, t] env steps (fewer than C when
    the episode ended inside it) and earned their summed reward. `versions`
    stamps every decision, hence every chunk, with the policy version that chose it.
    """

    obs: torch.Tensor  # [B, T, D] float32, state observation before each decision
    actions: torch.Tensor  # [B, T, S] float32, the policy's sample (MLP: raw unclipped action)
    log_probs: torch.Tensor  # [B, T] float32, behaviour log-prob of each sample
    values: torch.Tensor  # [B, T] float32, behaviour value estimate (0 if no value head)
    rewards: torch.Tensor  # [B, T] float32, summed over the chunk's env steps
    dones: torch.Tensor  # [B, T] bool, True on the last real decision of an episode
    versions: torch.Tensor  # [B, T] int64, policy version per decision
    lengths: torch.Tensor  # [B] int64, real decisions per episode
    terminated: torch.Tensor  # [B] bool, episode ended by the task (not by time limit)
    success: torch.Tensor  # [B] bool, task success at the episode's end
    final_obs: torch.Tensor  # [B, D] float32, observation after the last real step
    group_ids: torch.Tensor  # [B] int64, episodes sharing an initial state share a group id
    images: torch.Tensor | None = None  # [B, T, I] uint8 camera image before each decision (I = 0: none)
    final_images: torch.Tensor | None = None  # [B, I] uint8, image after the last real step
    chunk_steps: torch.Tensor | None = None  # [B, T] int64, env steps each decision ran (default: 1 each)
    worker_rank: int = 0
    round: int = 0  # the rollout round that produced this batch (not a data-plane epoch)
    trace_context: tuple[int, int, int] | None = None
    """(trace_id, span_id, trace_flags) of the rollout span that produced this batch, so the actor's
    spans on it join the same trace (dvla.telemetry); None when not traced."""
    sender: SenderCounts | None = None
    """The sending rollout's counters as it sent this batch (this batch included); None if not kept."""

    TENSOR_FIELDS = (
        "obs",
        "actions",
        "log_probs",
        "values",
        "rewards",
        "dones",
        "versions",
        "lengths",
        "terminated",
        "success",
        "final_obs",
        "group_ids",
        "images",
        "final_images",
        "chunk_steps",
    )

    def __post_init__(self) -> None:
        b, t = self.obs.shape[:2]
        if self.images is None:
            self.images = torch.zeros(b, t, 0, dtype=torch.uint8)
        if self.final_images is None:
            self.final_images = torch.zeros(b, self.images.shape[2], dtype=torch.uint8)
        if self.chunk_steps is None:
            self.chunk_steps = self.step_mask().to(torch.int64)

    @property
    def num_episodes(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_decisions(self) -> int:
        """Real (unpadded) policy decisions in the batch."""
        return int(self.lengths.sum())

    @property
    def num_steps(self) -> int:
        """Real env steps in the batch (decisions x the chunk steps each ran)."""
        return int((self.chunk_steps * self.step_mask()).sum())

    @property
    def has_images(self) -> bool:
        return self.images.shape[2] > 0

    def episode_steps(self) -> torch.Tensor:
        """[B] int64 env steps per episode."""
        return (self.chunk_steps * self.step_mask()).sum(dim=1)

    def step_mask(self) -> torch.Tensor:
        """[B, T] bool, True on real steps."""
        t = torch.arange(self.obs.shape[1])
        return t[None, :] < self.lengths[:, None]

    def returns(self) -> torch.Tensor:
        """[B] undiscounted episode returns."""
        return (self.rewards * self.step_mask()).sum(dim=1)

    def select(self, keep: torch.Tensor) -> TrajectoryBatch:
        """The episodes where keep [B] bool is True."""
        return TrajectoryBatch(
            **{n: getattr(self, n)[keep] for n in self.TENSOR_FIELDS},
            worker_rank=self.worker_rank,
            round=self.round,
            trace_context=self.trace_context,
            sender=self.sender,
        )

    @staticmethod
    def concat(batches: list[TrajectoryBatch]) -> TrajectoryBatch:
        """Join batches along B, padding T to the longest; worker_rank is -1, trace_context None unless shared."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        t_max = max(b.obs.shape[1] for b in batches)
        out = {}
        for name in TrajectoryBatch.TENSOR_FIELDS:
            parts = []
            for b in batches:
                x = getattr(b, name)
                if x.dim() >= 2 and name not in ("final_obs", "final_images") and x.shape[1] != t_max:
                    pad = [0, 0] * (x.dim() - 2) + [0, t_max - x.shape[1]]
                    x = torch.nn.functional.pad(x, pad)
                parts.append(x)
            out[name] = torch.cat(parts, dim=0)
        contexts = {b.trace_context for b in batches}  # one trace context only if all batches share it
        return TrajectoryBatch(
            **out,
            worker_rank=-1,
            round=max(b.round for b in batches),
            trace_context=contexts.pop() if len(contexts) == 1 else None,
        )
