"""A model of dvla's swimlane pipeline at scale: throughput and weight-delivery time for M rollouts, K actors. Pure.

A small discrete-event simulation of the lanes as they run (dvla/lanes/), calibrated from stage and
transfer times measured on one machine (dvla/bench_scaling.py measures them), with the cluster's
links and cores as stated assumptions (Cluster):

    rollout group (w on a node) --round r--> data plane --> actor ranks (K) --update k--> publish lane
          ^   admission: round r starts once version >= r - eta is held          |
          |                                                                      v
          +---- held: version v in use <-- delivery (one weight_control) <-- version k stored

    round      a rollout's round of whole episodes, one on each of its envs (sampling lane); on a core
               of its own it takes Calibration.round_s; on a node with more rollouts than cores
               (Cluster.cores_per_node) they share them, a core doing Calibration.share_efficiency
               rollouts' work
    admission  round r waits until the version in use is >= r - max_staleness (algo/staleness.py);
               v0 at least: only fetched weights run
    data plane each round's trajectories go to its home actor rank (rollout r's home is r mod K) over
               that rank's link, in the order the rounds end
    update k   needs round k - 1 of every rollout (one round of every env: the global batch, which
               grows with the rollouts); a fixed part per update, then K ranks each compute 1/K of
               the batch and all-reduce the gradients once per optimizer step (ring: 2(K-1)/K x bytes
               / bandwidth + 2(K-1) x latency), and rank 0 gathers the whole weights to publish them
    publish    the publish lane (its own thread) sends version k to weight_control while update k+1
               trains; a version still waiting when a newer one comes is never sent (OffThread)
    delivery   each rollout's weight lane hears of the version (announce), fetches the newest one out
               (a version that went by while it fetched is skipped) and loads it into its shadow copy;
               every fetch goes through weight_control's one link (server egress), N fetches without the
               node cache, one per node with it (rpc/nodecache.py) plus the node's local copy; the
               swap between two inference batches is free. Delivery time = the actor hands the version
               to the publish lane -> the last rollout holds it.

Every rollout on a node behaves alike (same round time, same versions at the same moments), so a
node's rollouts are simulated as one group that stands for all of them; nodes that hold as many
rollouts are one group (at most two groups: full nodes and the last one). Nothing is random: the
same inputs give the same prediction.

Which stage bounds the run: per update, the rollouts need round_s, the data plane ingress_s, the
actor actor_s; the staleness loop (a round waits for weights trained on the round eta + 1 before
it) needs (round + ingress + actor + weights) / (eta + 1), where weights = publish + announce +
transfer + load. The largest is the bound; when it is the loop, it is the weight plane if the loop
without the weights' round trip would not bind, and LOCKSTEP (eta too small to overlap rollout and
actor at all, e.g. eta = 0) otherwise.
"""

from __future__ import annotations

import bisect
import heapq
import math
from dataclasses import dataclass, field, fields
from enum import Enum

GRID_WORKERS = (8, 16, 32, 64, 128, 256)
GRID_ACTORS = (1, 2, 4, 8)
GBIT = 1e9 / 8  # bytes per second in a gigabit per second


class Stage(Enum):
    ROLLOUTS = "rollouts"
    DATA_PLANE = "data plane"
    ACTOR = "actor"
    WEIGHT_PLANE = "weight plane"
    LOCKSTEP = "lockstep"  # the staleness loop binds even with weights delivered at once


@dataclass(frozen=True)
class Calibration:
    """What one machine measured (dvla/bench_scaling.py says how it got each one)."""

    round_s: float
    """Seconds of one rollout round (one episode on each of a worker's envs) on a core of its own: the
    median `sampling.round` span of the calibration run."""
    env_steps_per_round: float
    """Env steps one worker's round yields (episodes end on success, so fewer than envs x max steps):
    env steps trained per update / workers, from metrics.jsonl."""
    actor_s_per_env_step: float
    """Actor seconds per env step of a global batch on one rank: the median `time/train_s` of an update
    / env steps per update (metrics.jsonl), or the slope of it over runs with larger batches."""
    optimizer_steps_per_update: int
    """Gradient all-reduces per update: algo.update_epochs x algo.num_minibatches (the config)."""
    version_bytes: float
    """Bytes one version carries to each rollout: the `bytes` of the `publish.version` spans."""
    grad_bytes: float
    """Bytes all-reduced per optimizer step: the trainable parameters in float32 (the policy built)."""
    trajectory_bytes_per_step: float
    """Data-plane bytes per env step: one round's wire payload (dataplane/wire.py, padded to the longest
    episode) / env steps per round."""
    publish_s: float
    """Seconds to publish one version here (`publish.version` spans, median): the floor of a publish."""
    fetch_s: float
    """Seconds of one rollout's fetch here (`weights.fetch` spans, median): the floor of a transfer."""
    load_s: float
    """Seconds to load a fetched version into the shadow copy (`weights.load_shadow` spans, median)."""
    announce_s: float
    """Seconds from a version stored to a rollout starting to fetch it (`publish.version` end -> first
    `weights.fetch` start, median over versions)."""
    actor_fixed_s: float = 0.0
    """Actor seconds per update whatever the batch (e.g. the optimizer steps), on every rank alike (as
    DDP; FSDP would shard part of it): the intercept of train time over batch size where runs with
    different batches were measured; 0 where one was."""
    share_efficiency: float = 1.0
    """Rollouts' work a core does when more rollouts than cores share it (1.0: one, so each of w
    rollouts on c < w cores runs c / w as fast; above 1 a rollout alone leaves part of its core idle,
    waiting on IPC or the batcher's timeout, which others fill); fitted where the bench had more
    rollouts than rollout cores."""

    def validate(self) -> Calibration:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("announce_s", "trajectory_bytes_per_step", "actor_fixed_s"):  # may be nothing
                _check(value >= 0, f"Calibration.{f.name}", value, "must be >= 0")
            else:
                _check(value > 0, f"Calibration.{f.name}", value, "must be > 0")
        return self


@dataclass(frozen=True)
class Cluster:
    """Assumptions about where the services run: nodes, cores, links. Defaults: a cluster of 8-core
    rollout nodes on 25 Gb/s Ethernet, one weight_control host, actor ranks one per device."""

    cores_per_node: int = 8
    """Cores (or inference devices) a rollout node gives its rollouts; a rollout uses one at most."""
    rollouts_per_node: int = 8
    """Rollouts on each node (the last node holds the rest)."""
    nic_bytes_per_s: float = 25 * GBIT
    """Each node's link: rollouts of a node share it, each actor rank has its own."""
    server_egress_bytes_per_s: float = 25 * GBIT
    """weight_control's link: every fetch of every version goes through it."""
    node_cache: bool = True
    """One fetch per node, the node's other rollouts map its copy (control.node_cache)."""
    local_copy_bytes_per_s: float = 1.6e9
    """Node cache: writing the node's copy into /dev/shm, which the others then map (benchmarks/README.md:
    ~40 ms for 64 MiB on the development machine)."""
    allreduce_bytes_per_s: float = 25 * GBIT
    """Between actor ranks: each rank's link in the ring."""
    allreduce_latency_s: float = 20e-6
    """Per step of the ring (2(K-1) steps per all-reduce)."""

    def validate(self) -> Cluster:
        for name in ("cores_per_node", "rollouts_per_node"):
            _check(getattr(self, name) >= 1, f"Cluster.{name}", getattr(self, name), "must be >= 1")
        for name in ("nic_bytes_per_s", "server_egress_bytes_per_s", "local_copy_bytes_per_s",
                     "allreduce_bytes_per_s"):  # fmt: skip
            _check(getattr(self, name) > 0, f"Cluster.{name}", getattr(self, name), "must be > 0")
        _check(self.allreduce_latency_s >= 0, "Cluster.allreduce_latency_s", self.allreduce_latency_s, "must be >= 0")
        return self


@dataclass(frozen=True)
class Prediction:
    workers: int
    actors: int
    max_staleness: int
    node_cache: bool
    num_updates: int
    env_steps_per_update: float
    throughput: float  # env steps trained / (v0 handed to the publish lane -> last update done), as the bench
    steady_throughput: float  # over the second half of the updates, past the start-up
    round_s: float  # a round on the slowest node
    ingress_s: float  # the global batch's share of one actor rank's link
    actor_s: float  # one update on K ranks, all-reduces and the publish gather included
    weights_s: float  # a version's round trip: publish + announce + transfer + load, nothing queued
    loop_s: float  # the staleness loop per update: (round + ingress + actor + weights) / (eta + 1)
    delivery_mean_s: float  # over versions 1..U-1 (v0 goes out while rollouts start, U after the run)
    delivery_max_s: float
    staleness_mean: float  # versions between the actor's and the one that took each step, mean
    versions_skipped: int  # of v0..vU, never delivered: a newer one was out before it was sent or fetched
    rollout_stall_fraction: float  # of the run, rollouts waiting for admission control
    actor_busy_fraction: float
    bound: Stage

    def as_row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"bound": self.bound.value}


def _check(ok: bool, name: str, value, why: str) -> None:
    if not ok:
        raise ValueError(f"{name} {why}, got {value!r}")


# ------------------------------------------------------------------ stage times (closed form)
def node_groups(workers: int, cluster: Cluster) -> list[tuple[int, int]]:
    """(rollouts it stands for, rollouts on each of its nodes) per group: the full nodes, then the last."""
    full, rest = divmod(workers, cluster.rollouts_per_node)
    groups = [(full * cluster.rollouts_per_node, cluster.rollouts_per_node)] if full else []
    return groups + ([(rest, rest)] if rest else [])


def round_time(cal: Calibration, cluster: Cluster, on_node: int) -> float:
    """One round of a rollout on a node with `on_node` rollouts: a core each while there are enough, then
    their share of the cores, each core doing share_efficiency rollouts' work."""
    crowd = on_node / cluster.cores_per_node
    return cal.round_s if crowd <= 1 else cal.round_s * max(1.0, crowd / cal.share_efficiency)


def allreduce_time(cluster: Cluster, nbytes: float, actors: int) -> float:
    """One ring all-reduce of nbytes over `actors` ranks (0 for one rank)."""
    if actors == 1:
        return 0.0
    steps = 2 * (actors - 1)
    return steps / actors * nbytes / cluster.allreduce_bytes_per_s + steps * cluster.allreduce_latency_s


def actor_time(cal: Calibration, cluster: Cluster, workers: int, actors: int) -> float:
    """One update: the fixed part, each rank's 1/K of the global batch, the gradient all-reduces, and
    rank 0's gather of the whole weights to publish ((K-1)/K of them cross the ring)."""
    compute = cal.actor_fixed_s + cal.actor_s_per_env_step * workers * cal.env_steps_per_round / actors
    reduce = cal.optimizer_steps_per_update * allreduce_time(cluster, cal.grad_bytes, actors)
    gather = (actors - 1) / actors * cal.version_bytes / cluster.allreduce_bytes_per_s
    return compute + reduce + gather


def ingress_time(cal: Calibration, cluster: Cluster, workers: int, actors: int) -> float:
    """A global batch's share of one actor rank's link (its home rollouts' rounds)."""
    return workers / actors * cal.env_steps_per_round * cal.trajectory_bytes_per_step / cluster.nic_bytes_per_s


def publish_time(cal: Calibration, cluster: Cluster) -> float:
    """Rank 0 to weight_control: the actor's link, never faster than publishing measured here."""
    return max(cal.publish_s, cal.version_bytes / cluster.nic_bytes_per_s)


def transfer_time(cal: Calibration, cluster: Cluster, workers: int) -> float:
    """From the first fetch of a version starting to the last rollout holding its bytes (not yet loaded).

    Every rollout's weight lane starts at once and the links are shared fairly, so the last finishes
    when the busiest link has carried its bytes: weight_control's (a fetch per rollout, or per node
    with the node cache) or a node's (its rollouts' fetches, or the one of the node cache). Never
    faster than one fetch measured here (checks and copies on the CPU)."""
    groups = node_groups(workers, cluster)
    nodes = sum(math.ceil(n / per) for n, per in groups)
    busiest = max(per for _, per in groups)
    b = cal.version_bytes
    if cluster.node_cache:
        net = max(nodes * b / cluster.server_egress_bytes_per_s, b / cluster.nic_bytes_per_s)
        local = b / cluster.local_copy_bytes_per_s if busiest > 1 else 0.0
        return max(cal.fetch_s, net) + local
    net = max(workers * b / cluster.server_egress_bytes_per_s, busiest * b / cluster.nic_bytes_per_s)
    return max(cal.fetch_s, net)


# ------------------------------------------------------------------ the simulation
class _Kind(Enum):
    """What happens at an instant; at equal times in this order, so a round sees a version held then."""

    DELIVERED = 0  # every rollout holds version v (loaded into its shadow copy, swapped in at once)
    PUBLISHED = 1  # version v is in weight_control's store; the weight lanes hear of it after announce_s
    ARRIVED = 2  # group g's round r is in its home actor ranks' queues
    ROUND_END = 3  # group g finished round r: sent to the data plane; its next round may start
    UPDATE_END = 4  # the actor finished update k: version k goes to the publish lane


@dataclass
class _Group:
    count: int  # rollouts it stands for
    round_s: float
    send_s: float  # its rounds' share of one actor rank's link
    next_round: int = 0
    busy: bool = False
    free_since: float = 0.0
    stalled_s: float = 0.0
    started: dict[int, float] = field(default_factory=dict)


class _Sim:
    def __init__(self, cal: Calibration, cluster: Cluster, workers: int, actors: int, eta: int, updates: int):
        self.eta, self.updates, self.workers = eta, updates, workers
        self.steps_per_update = workers * cal.env_steps_per_round
        per_round = cal.env_steps_per_round * cal.trajectory_bytes_per_step / cluster.nic_bytes_per_s
        self.groups = [_Group(n, round_time(cal, cluster, per), n / actors * per_round)
                       for n, per in node_groups(workers, cluster)]  # fmt: skip
        self.actor_s = actor_time(cal, cluster, workers, actors)
        self.publish_s = publish_time(cal, cluster)
        self.announce_s = cal.announce_s
        self.fetch_load_s = transfer_time(cal, cluster, workers) + cal.load_s
        self.heap: list[tuple[float, int, int, _Kind, tuple]] = []
        self.seq = 0
        # weights: what is held, since when (for the versions a round's steps were taken with)
        self.held, self.held_t, self.held_v = -1, [], []
        self.submitted: dict[int, float] = {}  # version -> handed to the publish lane
        self.delivered: dict[int, float] = {}
        self.published_at: dict[int, float] = {}
        self.newest_published = -1
        self.publishing, self.publish_waiting = False, None
        self.fetching = False
        # data plane and actor
        self.link_free = 0.0
        self.arrived: dict[int, int] = {}  # round -> groups whose round is in
        self.batches_ready = 0  # global batches complete, in order
        self.actor_idle, self.updates_done, self.actor_busy_s = True, 0, 0.0
        self.update_end: dict[int, float] = {}
        self.round_version: dict[tuple[int, int], float] = {}  # (group, round) -> mean version of its steps

    def push(self, t: float, kind: _Kind, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, kind.value, self.seq, kind, payload))

    def run(self) -> float:
        self.submit(0, 0.0)  # v0, as the actor publishes it before the first update
        t = 0.0
        while self.heap:
            t, _, _, kind, payload = heapq.heappop(self.heap)
            getattr(self, f"on_{kind.name.lower()}")(t, *payload)
        return t

    # ---- publish lane (the actor's): newest first, one at a time
    def submit(self, v: int, t: float) -> None:
        self.submitted[v] = t
        if self.publishing:
            self.publish_waiting = v  # replaces one still waiting: it is never sent
        else:
            self.publishing = True
            self.push(t + self.publish_s, _Kind.PUBLISHED, v)

    def on_published(self, t: float, v: int) -> None:
        self.published_at[v], self.newest_published = t, v
        self.publishing = False
        if self.publish_waiting is not None:
            nxt, self.publish_waiting = self.publish_waiting, None
            self.publishing = True
            self.push(t + self.publish_s, _Kind.PUBLISHED, nxt)
        if not self.fetching:  # the weight lanes hear of it and fetch it
            self.fetching = True
            self.push(t + self.announce_s + self.fetch_load_s, _Kind.DELIVERED, v)

    # ---- weight lanes (the rollouts'): fetch the newest out, load it, swap it in
    def on_delivered(self, t: float, v: int) -> None:
        if v > self.held:
            self.held = v
            self.held_t.append(t)
            self.held_v.append(v)
        self.delivered[v] = t
        self.fetching = False
        if self.newest_published > v:  # announced while this one travelled: straight on to the newest
            self.fetching = True
            start = max(t, self.published_at[self.newest_published] + self.announce_s)
            self.push(start + self.fetch_load_s, _Kind.DELIVERED, self.newest_published)
        for g in range(len(self.groups)):
            self.try_round(g, t)

    # ---- sampling lanes: rounds, under admission control
    def try_round(self, g: int, t: float) -> None:
        grp = self.groups[g]
        r = grp.next_round
        if grp.busy or r >= self.updates or self.held < max(0, r - self.eta):
            return
        grp.busy = True
        grp.stalled_s += t - grp.free_since
        grp.started[r] = t
        self.push(t + grp.round_s, _Kind.ROUND_END, g, r)

    def on_round_end(self, t: float, g: int, r: int) -> None:
        grp = self.groups[g]
        self.round_version[(g, r)] = self.mean_version(grp.started[r], t)
        grp.busy, grp.free_since, grp.next_round = False, t, r + 1
        self.link_free = max(self.link_free, t) + grp.send_s  # the data plane: in the order rounds end
        self.push(self.link_free, _Kind.ARRIVED, g, r)
        self.try_round(g, t)

    def mean_version(self, start: float, end: float) -> float:
        """The version a round's steps were taken with, on average (steps spread evenly over the round;
        a version is swapped in between two inference batches as soon as it is held)."""
        i = bisect.bisect_right(self.held_t, start) - 1
        if end <= start:
            return float(self.held_v[i])
        total, t = 0.0, start
        while i + 1 < len(self.held_t) and self.held_t[i + 1] < end:
            total += self.held_v[i] * (self.held_t[i + 1] - t)
            t, i = self.held_t[i + 1], i + 1
        return (total + self.held_v[i] * (end - t)) / (end - start)

    # ---- receive + training lanes (the actor ranks'): one global batch per update
    def on_arrived(self, t: float, g: int, r: int) -> None:
        self.arrived[r] = self.arrived.get(r, 0) + 1
        while self.arrived.get(self.batches_ready, 0) == len(self.groups):
            self.batches_ready += 1
        self.try_update(t)

    def try_update(self, t: float) -> None:
        if self.actor_idle and self.updates_done < self.updates and self.batches_ready > self.updates_done:
            self.actor_idle = False
            self.actor_busy_s += self.actor_s
            self.push(t + self.actor_s, _Kind.UPDATE_END, self.updates_done + 1)

    def on_update_end(self, t: float, k: int) -> None:
        self.actor_idle, self.updates_done, self.update_end[k] = True, k, t
        self.submit(k, t)
        self.try_update(t)


def simulate(
    cal: Calibration, cluster: Cluster, workers: int, actors: int = 1, max_staleness: int = 1, num_updates: int = 40
) -> Prediction:
    """Run the pipeline for num_updates updates with `workers` rollouts (each with the calibration run's
    envs) and `actors` actor ranks, and say what it achieves and what bounds it."""
    cal.validate()
    cluster.validate()
    _check(workers >= 1, "workers", workers, "must be >= 1")
    _check(1 <= actors <= workers, "actors", actors, f"must be in [1, workers={workers}]: every rank needs a rollout")
    _check(max_staleness >= 0, "max_staleness", max_staleness, "must be >= 0")
    _check(num_updates >= 1, "num_updates", num_updates, "must be >= 1")
    sim = _Sim(cal, cluster, workers, actors, max_staleness, num_updates)
    sim.run()
    end = sim.update_end[num_updates]
    half = num_updates // 2
    steady = sim.steps_per_update * (num_updates - half) / (end - sim.update_end[half]) if half else None
    versions = [v for v in range(1, num_updates) if v in sim.delivered] or sorted(sim.delivered)
    deliveries = [sim.delivered[v] - sim.submitted[v] for v in versions]
    lags = [
        k - 1 - sum(grp.count * sim.round_version[(g, k - 1)] for g, grp in enumerate(sim.groups)) / workers
        for k in range(1, num_updates + 1)
    ]
    round_s = max(grp.round_s for grp in sim.groups)
    ingress_s = ingress_time(cal, cluster, workers, actors)
    weights_s = sim.publish_s + sim.announce_s + sim.fetch_load_s
    loop_s = (round_s + ingress_s + sim.actor_s + weights_s) / (max_staleness + 1)
    throughput = sim.steps_per_update * num_updates / end
    return Prediction(
        workers=workers,
        actors=actors,
        max_staleness=max_staleness,
        node_cache=cluster.node_cache,
        num_updates=num_updates,
        env_steps_per_update=sim.steps_per_update,
        throughput=throughput,
        steady_throughput=steady if steady is not None else throughput,
        round_s=round_s,
        ingress_s=ingress_s,
        actor_s=sim.actor_s,
        weights_s=weights_s,
        loop_s=loop_s,
        delivery_mean_s=sum(deliveries) / len(deliveries),
        delivery_max_s=max(deliveries),
        staleness_mean=sum(lags) / len(lags),
        versions_skipped=num_updates + 1 - len(sim.delivered),
        rollout_stall_fraction=sum(grp.count * grp.stalled_s for grp in sim.groups) / workers / end,
        actor_busy_fraction=sim.actor_busy_s / end,
        bound=bound(round_s, ingress_s, sim.actor_s, weights_s, max_staleness),
    )


def bound(round_s: float, ingress_s: float, actor_s: float, weights_s: float, max_staleness: int) -> Stage:
    """The stage whose time per update is the largest (see the module docstring)."""
    stages = {Stage.ROLLOUTS: round_s, Stage.DATA_PLANE: ingress_s, Stage.ACTOR: actor_s}
    slowest = max(stages, key=stages.get)
    loops = max_staleness + 1
    if (round_s + ingress_s + actor_s + weights_s) / loops <= stages[slowest]:
        return slowest
    # the loop binds: would it without the weights' round trip? then eta is too small for any overlap
    return Stage.LOCKSTEP if (round_s + ingress_s + actor_s) / loops > stages[slowest] else Stage.WEIGHT_PLANE


def grid(
    cal: Calibration,
    cluster: Cluster,
    workers: tuple[int, ...] = GRID_WORKERS,
    actors: tuple[int, ...] = GRID_ACTORS,
    max_staleness: int = 1,
    num_updates: int = 40,
) -> list[Prediction]:
    """Every (workers, actors) pair with actors <= workers, workers first."""
    return [simulate(cal, cluster, m, k, max_staleness, num_updates) for m in workers for k in actors if k <= m]


def assumptions(cal: Calibration, cluster: Cluster) -> list[str]:
    """The model's assumptions with the numbers in force, one line each, for a report."""
    mb = 1e6
    return [
        f"each rollout keeps the calibration run's envs: a round of {cal.env_steps_per_round:.0f} env steps takes "
        f"{cal.round_s:.3f} s on a core of its own; the global batch grows with the rollouts (one round each)",
        f"rollout nodes: {cluster.rollouts_per_node} rollouts on {cluster.cores_per_node} cores; more rollouts than "
        f"cores share them, a core doing {cal.share_efficiency:.2f} rollouts' work",
        f"actor: {cal.actor_fixed_s:.3f} s per update on every rank + {cal.actor_s_per_env_step * 1e3:.3f} ms per env "
        f"step of the global batch on one rank, split evenly over K ranks; {cal.optimizer_steps_per_update} ring "
        f"all-reduces of {cal.grad_bytes / mb:.1f} MB per update at {cluster.allreduce_bytes_per_s / GBIT:.0f} Gb/s "
        f"+ {cluster.allreduce_latency_s * 1e6:.0f} us per ring step, and the whole weights gathered on rank 0 per "
        "version",
        f"data plane: {cal.trajectory_bytes_per_step:.0f} bytes per env step into each rank's "
        f"{cluster.nic_bytes_per_s / GBIT:.0f} Gb/s link; rollout r's home is rank r mod K",
        f"weight plane: a {cal.version_bytes / mb:.1f} MB version; publish >= {cal.publish_s:.3f} s (measured here) "
        f"or bytes / link; announce {cal.announce_s * 1e3:.1f} ms; one weight_control with "
        f"{cluster.server_egress_bytes_per_s / GBIT:.0f} Gb/s egress shared by every fetch, node links "
        f"{cluster.nic_bytes_per_s / GBIT:.0f} Gb/s; a fetch >= {cal.fetch_s:.3f} s (measured here); load into the "
        f"shadow copy {cal.load_s:.3f} s; node cache: one fetch per node + a local copy at "
        f"{cluster.local_copy_bytes_per_s / 1e9:.1f} GB/s",
        "every rollout on a node runs alike and every weight lane starts a fetch at once; no faults, no stragglers, "
        "no streamer overlap (all rounds of an update end together); stage times as measured on this machine",
    ]
