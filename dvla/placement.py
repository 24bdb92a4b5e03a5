"""Where each process of a single-node run goes: its device and its CPU cores. Pure: no I/O.

`pipeline.placement` says how the node's devices are shared between the rollouts and the actor
group: GPUs when the node has them, otherwise CPU cores.

    colocated      every process may use every device: actor rank k on GPU k, rollout j on GPU
                   j mod G (on CPU: no pinning).
    disaggregated  the actor ranks on devices of their own (one each: the last K), the rollouts on
                   the others.
    R:A            the devices split R:A between rollouts and actors (3:1 is D-VLA's 3 rollout
                   GPUs per actor GPU; 1:1 half and half), at least one each.

On GPUs every process gets one device and no two actor ranks share one (NCCL holds one rank of a
group per device); rollouts take their devices round robin. On CPU the actor ranks split the
actors' cores between them when there are enough, and every process gets as many intra-op threads
as it has cores.

A cluster places its services itself (each starts on its own, with its `device` override and the
cores its scheduler gives it); this plan is what `dvla run` does on one node.
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("colocated", "disaggregated")


@dataclass(frozen=True)
class Slot:
    """One process's place: a torch device ('' keeps the config's) and its CPU cores (None: any)."""

    device: str = ""
    cores: frozenset[int] | None = None

    def describe(self) -> str:
        parts = ([self.device] if self.device else []) + (
            [] if self.cores is None else [f"cores {_ranges(sorted(self.cores))}"]
        )
        return ", ".join(parts) or "anywhere"


@dataclass(frozen=True)
class Placement:
    actors: tuple[Slot, ...]
    rollouts: tuple[Slot, ...]  # rollout j runs in rollouts[j % len(rollouts)]

    def rollout(self, j: int) -> Slot:
        return self.rollouts[j % len(self.rollouts)]

    def describe(self, num_rollouts: int) -> list[str]:
        """A line per place, processes in the same place on one line ('rollouts 0-5: cores 0')."""
        lines = []
        for what, slots in (("actor rank", self.actors), ("rollout", [self.rollout(j) for j in range(num_rollouts)])):
            by_place: dict[Slot, list[int]] = {}
            for i, s in enumerate(slots):
                by_place.setdefault(s, []).append(i)
            lines += [f"{what}{'s' * (len(ix) > 1)} {_ranges(ix)}: {s.describe()}" for s, ix in by_place.items()]
        return lines


def check_mode(placement: str) -> str | None:
    """Why `placement` is not a placement, or None."""
    if placement in (*MODES, "auto"):
        return None
    try:
        r, a = ratio(placement)
    except ValueError as e:
        return str(e)
    return None if r > 0 and a > 0 else f"ratio '{placement}' needs two positive parts"


def ratio(text: str) -> tuple[int, int]:
    """'3:1' -> (3, 1): rollout parts, actor parts."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"'{text}' is neither colocated, disaggregated nor a rollout:actor ratio such as 3:1")
    return int(parts[0]), int(parts[1])


def shards_per_worker(cores: int, workers: int, num_envs: int, group_size: int = 1) -> int:
    """pipeline.num_shards=0 (auto): env shard processes per rollout worker when `workers` rollouts share
    `cores` cores. Shards pay off by stepping one shard's physics while another's observations go through
    inference, which needs a core for each; on fewer, extra shards only add IPC (measured on 2 cores, 2
    workers x 16 envs, swimlane colocated: ~500 env steps/s with 1 shard each, 370-449 with 2). So a shard per
    core of the worker's share, at least one, and a count that splits num_envs into whole GRPO groups."""
    if cores < 1 or workers < 1 or num_envs < 1 or group_size < 1:
        raise ValueError(f"shards_per_worker: cores={cores}, workers={workers}, num_envs={num_envs} and "
                         f"group_size={group_size} must all be >= 1")  # fmt: skip
    k = max(1, min(cores // workers, num_envs))
    while k > 1 and (num_envs % k or (num_envs // k) % group_size):
        k -= 1
    return k


def actor_threads(cores: int, busy_neighbours: int) -> int:
    """Intra-op threads for an actor rank on `cores` cores that `busy_neighbours` env-stepping processes share
    while it trains (the asynchronous modes, colocated): one per core they leave it, at least one. A torch
    thread pool wider than the free cores spins at every barrier while the OS runs physics on its other
    threads' cores (measured on 2 cores, train_async colocated: an update took 1.15-1.19 s with 2 threads,
    0.30 s with 1, and the run went from 513-527 to 612 env steps/s)."""
    if cores < 1 or busy_neighbours < 0:
        raise ValueError(f"actor_threads: cores={cores} must be >= 1 and busy_neighbours={busy_neighbours} >= 0")
    return max(1, cores - busy_neighbours)


def _split(n: int, mode: str, num_actors: int) -> int | None:
    """How many of n devices go to the actors (the rest to the rollouts); None: shared (colocated)."""
    if mode == "colocated" or n < 2:
        return None
    if mode == "disaggregated":
        return min(num_actors, n - 1)
    r, a = ratio(mode)
    return min(max(1, round(n * a / (r + a))), n - 1)


def plan(mode: str, num_actors: int, num_rollouts: int, cores: list[int], gpus: int) -> Placement:
    """The place of every process: `mode` is pipeline.placement ('auto' resolved by the caller),
    `cores` the cores this node lets us use, `gpus` the CUDA devices (0: a CPU run)."""
    if num_actors < 1 or num_rollouts < 1:
        raise ValueError(f"a run needs at least one actor and one rollout, got {num_actors} and {num_rollouts}")
    if gpus > 0:
        return _on_gpus(mode, num_actors, gpus)
    cores = sorted(cores)
    n_actor = _split(len(cores), mode, num_actors)
    if n_actor is None:
        return Placement((Slot(),) * num_actors, (Slot(),))
    mine, theirs = cores[-n_actor:], cores[:-n_actor]
    if len(mine) >= num_actors:  # each actor rank its own cores: rank k gets every K-th
        actors = tuple(Slot(cores=frozenset(mine[k::num_actors])) for k in range(num_actors))
    else:
        actors = (Slot(cores=frozenset(mine)),) * num_actors
    return Placement(actors, (Slot(cores=frozenset(theirs)),))


def _on_gpus(mode: str, num_actors: int, gpus: int) -> Placement:
    n_actor = _split(gpus, mode, num_actors)
    if n_actor is None:  # colocated: actor k on GPU k, rollouts round robin over all
        actor_gpus, rollout_gpus = list(range(gpus)), list(range(gpus))
    else:
        actor_gpus, rollout_gpus = list(range(gpus - n_actor, gpus)), list(range(gpus - n_actor))
    if num_actors > len(actor_gpus):
        raise ValueError(
            f"pipeline.num_actors={num_actors} actor ranks need a GPU each, and placement '{mode}' gives the "
            f"actors {len(actor_gpus)} of {gpus}: NCCL holds one rank of a group per device "
            "(use fewer actor ranks, another ratio, or colocated)"
        )
    return Placement(
        tuple(Slot(device=f"cuda:{actor_gpus[k]}") for k in range(num_actors)),
        tuple(Slot(device=f"cuda:{g}") for g in rollout_gpus),
    )


def _ranges(xs: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, start = [], None
    for i, x in enumerate(xs):
        if start is None:
            start = x
        if i + 1 == len(xs) or xs[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return ",".join(out)
