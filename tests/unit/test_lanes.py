"""Every lane over the in-process ports (dvla/inproc.py): no sockets, no process groups, milliseconds each."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
import torch

from dvla.algo.batching import DynamicBatcher
from dvla.algo.learner import Learner
from dvla.config import AlgoConfig, MlpConfig, PolicyConfig
from dvla.counters import EpisodeLedger
from dvla.envs import StepResult
from dvla.inproc import LocalHub, LocalWeights, SetControl, run_local
from dvla.lanes.epochs import EpochCycle
from dvla.lanes.publish import OffThread, PublishLane
from dvla.lanes.receive import ReceiveLane
from dvla.lanes.sampling import Outcome, Sampler
from dvla.lanes.shards import LocalShard, ShardPool
from dvla.lanes.training import Progress, Trainer
from dvla.lanes.weights import WeightLane
from dvla.policy import build_policy
from dvla.ports import Directives
from dvla.types import EnvSpec, World

SPEC = EnvSpec("Fake-v0", 3, 2, (-1.0,) * 2, (1.0,) * 2, 4)


class FakeEnvs:
    """N envs whose episodes last `length` steps; obs = [step, env, 1]."""

    def __init__(self, num_envs: int = 4, length: int = 3):
        self.num_envs, self.length, self.spec = num_envs, length, SPEC
        self.steps = torch.zeros(num_envs)

    def _obs(self):
        return torch.stack(
            [self.steps, torch.arange(self.num_envs, dtype=torch.float32), torch.ones(self.num_envs)], dim=1
        )

    def reset(self, seeds):
        self.steps.zero_()
        return self._obs(), torch.zeros(self.num_envs, 0, dtype=torch.uint8)

    def step(self, actions, active, observe=True):
        self.steps += active.float()
        done = (self.steps >= self.length) & active
        return StepResult(
            obs=self._obs(),
            reward=active.float(),
            terminated=done,
            truncated=torch.zeros(self.num_envs, dtype=torch.bool),
            success=done,
        )

    def close(self):
        pass


def make_policy():
    torch.manual_seed(0)
    return build_policy(PolicyConfig(mlp=MlpConfig(hidden_sizes=(8,))), SPEC)


class ListSink:
    def __init__(self, on_send=lambda b: None):
        self.batches, self.ends, self.on_send = [], [], on_send

    def send(self, batch):
        self.batches.append(batch)
        self.on_send(batch)

    def send_end(self, epoch_end=None):
        self.ends.append(epoch_end)


def sampler(
    weights: LocalWeights,
    control: SetControl,
    stop: threading.Event,
    *,
    background: bool = False,
    max_staleness: int = 0,
) -> tuple[Sampler, WeightLane]:
    lane = WeightLane(weights, make_policy, stop)
    if background:
        lane.start_thread()
    s = Sampler(
        ShardPool.local(FakeEnvs()),
        lane,
        control,
        lambda r, sh, k: (list(range(k)), list(range(k))),
        max_staleness=max_staleness,
        batcher=DynamicBatcher(4, 0.0),
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
        stop=stop,
    )
    return s, lane


# ---------------------------------------------------------------- sampling and weights
def test_admission_never_runs_ahead_of_the_bound():
    """With max_staleness eta, round r only starts on version >= r - eta: every step of round r is
    stamped with such a version, and the rollout waits when the actor lags."""
    weights, control, stop = LocalWeights(), SetControl(), threading.Event()
    policy = make_policy()
    weights.publish(0, policy.export_weights())
    rounds = []

    def on_send(b):
        rounds.append((b.round, int(b.versions[b.step_mask()].min())))
        if len(rounds) >= 2:  # the actor lags: version k comes out only once round k has been sent
            weights.publish(len(rounds) - 1, policy.export_weights(), final=len(rounds) == 4)

    s, _ = sampler(weights, control, stop, max_staleness=1)
    assert s.run(ListSink(on_send), rank=1, should_yield=lambda: False) == Outcome.FINAL
    assert [r for r, _ in rounds] == [0, 1, 2, 3]
    assert all(v >= r - 1 for r, v in rounds), rounds


def test_a_swap_is_never_seen_half_done():
    weights, stop = LocalWeights(keep=8), threading.Event()
    obs = torch.randn(16, SPEC.obs_dim, generator=torch.Generator().manual_seed(1))
    versions = {
        v: {k: torch.full_like(t, 0.01 * (v + 1)) for k, t in make_policy().export_weights().items()} for v in range(12)
    }
    expected = {}
    for v, w in versions.items():
        ref = make_policy()
        ref.load_weights(w)
        expected[v] = ref.act(obs, deterministic=True).actions
    lane = WeightLane(weights, make_policy, stop).start_thread()

    def publish():
        for v, w in versions.items():
            weights.publish(v, w, final=v == 11)
            time.sleep(0.02)

    publisher = threading.Thread(target=publish)
    publisher.start()
    assert lane.wait_loaded(0, timeout_s=10)
    seen = set()
    while not lane.final:
        policy, version = lane.current()
        assert torch.equal(policy.act(obs, deterministic=True).actions, expected[version]), version
        seen.add(version)
    publisher.join()
    stop.set()
    assert lane.versions_used == sorted(lane.versions_used) and lane.version == 11 and len(seen) >= 2


def test_pause_and_yield_happen_at_safe_points():
    """Paused: no round starts, the one under way is finished and sent. Asked to yield: every round under
    way is sent, then YIELD."""
    weights, stop = LocalWeights(), threading.Event()
    control = SetControl()
    weights.publish(0, make_policy().export_weights())
    s, _ = sampler(weights, control, stop, background=True, max_staleness=1000)

    def pause_after_first(b):
        control.directives = dataclasses.replace(control.directives, state="paused")

    sink = ListSink(pause_after_first)
    outcome = {}
    t = threading.Thread(target=lambda: outcome.setdefault("o", s.run(sink, rank=1, should_yield=yield_now.is_set)))
    yield_now = threading.Event()
    t.start()
    time.sleep(0.3)
    assert len(sink.batches) == 1 and s.counts.episodes_produced == 4  # paused after one whole round
    assert all(int(b.lengths.min()) == 3 for b in sink.batches)  # no episode cut
    yield_now.set()
    t.join(5)
    assert outcome["o"] == Outcome.YIELD and len(sink.batches) == 1
    stop.set()


def test_inline_weights_take_the_newest_version_at_each_round():
    """Without a thread of its own, the weight lane pulls the newest version at each round start, even
    when admission control would let the round run on the older one."""
    weights, control, stop = LocalWeights(), SetControl(), threading.Event()
    policy = make_policy()
    weights.publish(0, policy.export_weights())
    firsts = []

    def on_send(b):
        firsts.append(int(b.versions[0, 0]))
        weights.publish(len(firsts), policy.export_weights())  # the next version is out before the next round
        if len(firsts) == 3:
            stop.set()

    s, lane = sampler(weights, control, stop, max_staleness=1000)
    s.run(ListSink(on_send), rank=1, should_yield=lambda: False)
    assert firsts == [0, 1, 2] and not lane.background


# ---------------------------------------------------------------- actor lanes
def batch_of(version: int, n: int = 2, length: int = 2):
    from dvla.types import TrajectoryBatch

    t = length
    return TrajectoryBatch(
        obs=torch.ones(n, t, 3),
        actions=torch.zeros(n, t, 2),
        log_probs=torch.zeros(n, t),
        values=torch.zeros(n, t),
        rewards=torch.ones(n, t),
        dones=torch.zeros(n, t, dtype=torch.bool),
        versions=torch.full((n, t), version),
        lengths=torch.full((n,), t),
        terminated=torch.ones(n, dtype=torch.bool),
        success=torch.ones(n, dtype=torch.bool),
        final_obs=torch.ones(n, 3),
        group_ids=torch.arange(n),
    )


def actor_side(hub: LocalHub, capacity: int, stop: threading.Event):
    control = SetControl(Directives(state="running", epoch=0, rank=0, world_size=2, membership="member"))
    plane = hub.plane()
    cycle = EpochCycle(plane, control, stop)
    return cycle, control, plane


def test_the_receive_lane_applies_backpressure_and_loses_nothing():
    hub, stop, ledger = LocalHub(capacity=1), threading.Event(), EpisodeLedger()
    cycle, _, plane = actor_side(hub, 1, stop)
    rollout = hub.plane()
    formed = []
    t = threading.Thread(target=lambda: formed.append(rollout.form(World(0, 1, 2))))
    t.start()
    assert cycle.enter(World(0, 0, 2)) == World(0, 0, 2)
    t.join(5)
    inbox = ReceiveLane(cycle, World(0, 0, 2), capacity=2, ledger=ledger, stop=stop).start()
    sink, sent = rollout.sink(), []

    def produce():
        for i in range(6):
            sink.send(batch_of(0))
            sent.append(i)
        sink.send_end()

    producer = threading.Thread(target=produce)
    producer.start()
    time.sleep(0.3)
    assert len(sent) < 6  # queue (2) + hand-off (1) + the lane's hand: the sender blocks
    got = [inbox.take(timeout_s=5) for _ in range(6)]
    assert all(b is not None for b in got) and inbox.take(timeout_s=5) is None  # then END
    producer.join(5)
    snap = ledger.snapshot()
    assert snap["received"] == 12 and snap["in_training"] == 12 and EpisodeLedger.balanced(snap)
    stop.set()


def test_training_drops_stale_episodes_and_follows_the_world():
    ledger, progress = EpisodeLedger(), Progress(version=3)
    learner = Learner(make_policy(), AlgoConfig(update_epochs=1, num_minibatches=1), torch.device("cpu"))

    class Inbox:
        def __init__(self, batches):
            self.batches = batches

        def take(self, timeout_s=None):
            b = self.batches.pop(0) if self.batches else None
            if b is not None:
                ledger.receive(b.num_episodes)
                ledger.take(b.num_episodes)
            return b

    target = [4]
    trainer = Trainer(
        learner,
        Inbox([batch_of(3), batch_of(1), batch_of(2), batch_of(3)]),
        ledger,
        progress,
        max_staleness=1,
        streamer=False,
        episodes_per_update=lambda: target[0],
    )
    g = trainer.next_global_batch()
    assert g.num_episodes == 4 and ledger.snapshot()["dropped"] == 2  # version 1 is 2 behind v3: dropped
    record = trainer.update(g)
    assert progress.updates == 1 and record["staleness_max"] == 1.0
    target[0] = 2  # the world shrank: the next update needs one round of it
    assert trainer.next_global_batch().num_episodes == 2
    assert trainer.next_global_batch() is None and ledger.snapshot()["dropped"] == 2


def test_publish_runs_off_the_training_thread_newest_first():
    slow, started = threading.Event(), threading.Event()

    class SlowSink:
        def __init__(self):
            self.versions = []

        def publish(self, version, tensors, final=False, publisher_id=""):
            started.set()
            slow.wait(5)
            self.versions.append(version)
            return 0

    sink = SlowSink()
    lane = PublishLane(sink, "actor")
    off = OffThread(lane.submit)
    t = time.monotonic()
    off.submit(0, {})
    assert started.wait(5)  # version 0 is streaming out ...
    for v in range(1, 5):  # ... while four more updates finish
        off.submit(v, {}, final=v == 4)
    assert time.monotonic() - t < 0.5  # the caller never waited for the sink
    slow.set()
    off.flush(5)
    assert sink.versions == [0, 4]  # the ones that went by while v0 streamed out are skipped
    with pytest.raises(AssertionError):
        off.submit(5, {})


def test_the_last_version_is_published_again_to_a_restarted_store_and_only_there():
    lane = PublishLane(LocalWeights(), "actor")
    assert lane.republish() is None  # nothing published yet
    for v in (1, 2):
        lane.submit(v, {"w": torch.full((3,), float(v))})
    assert lane.republish() is None and lane.sink.latest().version == 2  # the store holds it: nothing to do
    lane.sink = LocalWeights()  # weight_control restarted: it holds no version
    assert lane.republish() == 2
    version, final, tensors = lane.sink.fetch()
    assert (version, final) == (2, False) and tensors["w"].tolist() == [2.0, 2.0, 2.0]
    lane.submit(3, {"w": torch.zeros(3)}, final=True)
    assert lane.republish() is None and lane.sink.latest().version == 3

    class Down:
        def publish(self, *a, **kw):
            raise ConnectionError("weight_control is unreachable")

    lane.sink = Down()
    assert lane.republish() is None  # it says so in the log and leaves it to the next version


def test_a_cancelled_epoch_moves_on_to_the_next_one():
    hub, stop = LocalHub(), threading.Event()
    control = SetControl(Directives(state="running", epoch=1, rank=0, world_size=2, membership="member"))
    cycle = EpochCycle(hub.plane(), control, stop)
    other = hub.plane()
    t = threading.Thread(target=lambda: other.form(World(1, 1, 2)))
    t.start()
    # epoch 0 never completes (its other rank is gone); epoch 1 is announced: cancel 0, form 1
    assert cycle.enter(World(0, 0, 2)) == World(1, 0, 2)
    t.join(5)
    control.directives = dataclasses.replace(control.directives, membership="leaving")
    assert cycle.advance(World(1, 0, 2)) is None


# ---------------------------------------------------------------- the whole pipeline in one process
@pytest.mark.parametrize("mode", ["lockstep", "swimlane"])
def test_a_run_in_one_process_trains_every_version_and_loses_nothing(mode):
    swimlane = mode == "swimlane"
    run = run_local(
        PolicyConfig(mlp=MlpConfig(hidden_sizes=(8,))),
        AlgoConfig(update_epochs=1, num_minibatches=1),
        lambda: FakeEnvs(num_envs=4, length=3),
        num_rollouts=2,
        num_updates=4,
        max_staleness=1 if swimlane else 0,
        streamer=swimlane,
        background_weights=swimlane,
        timeout_s=30,
    )
    assert run.versions[0] == 0 and run.versions[-1] == 4 and run.versions == sorted(set(run.versions))
    assert len(run.records) == 4 and all(r["train/samples"] > 0 for r in run.records)
    led = run.ledger
    assert run.produced == run.sent == led["received"] and EpisodeLedger.balanced(led)
    assert led["trained"] == 4 * 8 and led["trained"] + led["dropped"] == run.produced  # nothing lost
    if not swimlane:
        assert led["dropped"] == 0 and all(r["staleness_max"] == 0 for r in run.records)


def test_the_sampling_lane_sends_its_counters_with_each_batch_and_no_heartbeat():
    weights, control, stop = LocalWeights(), SetControl(), threading.Event()
    weights.publish(0, make_policy().export_weights())
    lane = WeightLane(weights, make_policy, stop)
    s = Sampler(
        ShardPool.local(FakeEnvs()),
        lane,
        control,
        lambda r, sh, k: (list(range(k)), list(range(k))),
        max_staleness=1000,
        batcher=DynamicBatcher(4, 0.0),
        device=torch.device("cpu"),
        generator=None,
        stop=stop,
        worker_key=42,
    )
    sink = ListSink(lambda b: len(sink.batches) == 3 and stop.set())
    s.run(sink, rank=1, should_yield=lambda: False)
    assert [(b.sender.worker_key, b.sender.episodes_sent, b.sender.env_steps_produced) for b in sink.batches] == [
        (42, 4, 12),
        (42, 8, 24),
        (42, 12, 36),
    ]
    assert control.beats == 0  # the control plane is off the sampling path


# ---------------------------------------------------------------- an actor started afresh
def weights_of(value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(t, value) for k, t in make_policy().export_weights().items()}


def first_weight(policy) -> float:
    return float(next(iter(policy.export_weights().values())).flatten()[0])


@pytest.mark.parametrize("background", [False, True])
def test_a_rewound_weight_lane_follows_the_new_actors_older_versions(background):
    weights, stop = LocalWeights(), threading.Event()
    lane = WeightLane(weights, make_policy, stop)
    if background:
        lane.start_thread()
    for v in range(6):
        weights.publish(v, weights_of(0.5))
    assert lane.wait_loaded(5, timeout_s=10) and lane.version == 5
    weights.store.rewind()  # the actor died; its successor publishes its checkpoint's version, 3
    weights.publish(3, weights_of(0.25))
    lane.rewind()
    assert (lane.version, lane.final) == (-1, False)  # nothing runs until the new history's first version
    assert lane.wait_loaded(0, timeout_s=10)
    policy, version = lane.current()
    assert version == 3 == lane.version and first_weight(policy) == 0.25
    weights.publish(4, weights_of(0.125), final=True)  # and on from there
    assert lane.wait_loaded(4, timeout_s=10) and lane.current()[1] == 4 and lane.final
    assert first_weight(lane.active) == 0.125
    stop.set()


def test_a_version_fetched_before_a_rewind_is_thrown_away():
    """A fetch of the dead actor's version, under way when the lane rewinds, never becomes the one in use."""
    weights, stop = LocalWeights(), threading.Event()
    fetching, release = threading.Event(), threading.Event()

    class SlowFetch:
        def latest(self):
            return weights.latest()

        def watch(self, after_version, stop=None):
            return weights.watch(after_version, stop)

        def fetch(self, version=None):
            got = weights.fetch(version)
            if got[0] == 5:  # holds the dead history's newest until the lane has rewound
                fetching.set()
                release.wait(10)
            return got

    weights.publish(5, weights_of(0.5))
    lane = WeightLane(SlowFetch(), make_policy, stop).start_thread()
    assert fetching.wait(10)
    weights.store.rewind()
    weights.publish(3, weights_of(0.25))
    lane.rewind()
    release.set()
    assert lane.wait_loaded(0, timeout_s=10)
    policy, version = lane.current()
    assert version == 3 and first_weight(policy) == 0.25 and lane.versions_used == [3]
    stop.set()


def test_rounds_move_back_only_on_a_rewind():
    pool = ShardPool([LocalShard(FakeEnvs(), 0), LocalShard(FakeEnvs(), 1)], SPEC, chunk_size=None)
    pool.start_rounds_at(7)
    pool.shards[1].round = 9
    pool.start_rounds_at(4)  # never back: rounds are numbered like the versions they are meant for
    assert [s.round for s in pool.shards] == [7, 9]
    pool.start_rounds_at(8)
    assert [s.round for s in pool.shards] == [8, 9]
    pool.start_rounds_at(3, rewind=True)  # the actor continues from an older checkpoint
    assert [s.round for s in pool.shards] == [3, 3]
