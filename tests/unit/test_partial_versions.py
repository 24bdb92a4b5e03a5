"""Publishing only what trains (policy.frozen): the store, the publish lane and a source completing versions."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from dvla.algo.learner import Learner, Samples
from dvla.config import load_config
from dvla.control.errors import NotFound
from dvla.control.store import Base, VersionStore
from dvla.inproc import LocalWeights
from dvla.lanes.publish import PublishLane
from dvla.policy import build_policy
from dvla.types import EnvSpec
from dvla.weights import pack

SPEC = EnvSpec("PushCube-v1", 43, 8, (-1.0,) * 8, (1.0,) * 8, 50, (), "test")


def policy(frozen=("actor_mean.2", "critic.2")):
    cfg = load_config(None, [])
    torch.manual_seed(0)
    return build_policy(replace(cfg.policy, frozen=tuple(frozen)), SPEC)


def same(a: dict, b: dict) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_parameters_do_not_train_and_stay_out_of_partial_versions():
    p = policy()
    before = {k: v.clone() for k, v in p.state_dict().items()}
    learner = Learner(p, load_config(None, []).algo, torch.device("cpu"))
    n = 64
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(n, 43, generator=g)
    actions = p.act(obs, torch.zeros(n, 0, dtype=torch.uint8), generator=g).actions
    learner.update(Samples(obs, torch.zeros(n, 0, dtype=torch.uint8), actions, torch.zeros(n), torch.ones(n),
                           torch.randn(n, generator=g), torch.randn(n, generator=g)))  # fmt: skip
    after = p.state_dict()
    for k in before:
        moved = not torch.equal(before[k], after[k])
        assert moved == (k in p.trained_names()), k
    assert p.trained_names() == frozenset(before) - {
        "actor_mean.2.weight", "actor_mean.2.bias", "critic.2.weight", "critic.2.bias"}  # fmt: skip
    assert policy(frozen=()).trained_names() is None  # nothing frozen: versions stay whole


def test_a_frozen_name_that_matches_nothing_is_refused_with_the_parts_there_are():
    with pytest.raises(ValueError, match=r"\['vision'\] name no parameter.*'actor_mean.0'"):
        policy(frozen=("vision",))
    with pytest.raises(ValueError, match="actor_mean.0"):  # a prefix ends at a dot: 'actor_mean.0' is no 'actor_m'
        policy(frozen=("actor_m",))


def test_the_store_holds_the_base_while_partial_versions_name_it():
    store = VersionStore(keep=2, max_version_bytes=1 << 20, clock_ns=time.time_ns)

    def put(version, tensors, base=None):
        m, buf = pack(tensors)
        up = store.begin(version, m, base=base)
        up.write(0, bytes(buf))
        return store.commit(up)

    full = put(0, {"a": torch.ones(3), "b": torch.zeros(2)})
    base = Base(0, full.manifest.sha256)
    for v in (1, 2, 3):
        put(v, {"b": torch.full((2,), float(v))}, base)
    assert [v.version for v in store.versions()] == [2, 3]
    assert [v.version for v in store.held()] == [0, 2, 3]  # the base outlives `keep`
    assert store.get(0) is full and store.get(3).partial
    with pytest.raises(NotFound, match="publish a full version"):
        store.begin(4, pack({"b": torch.ones(2)})[0], base=Base(0, "f" * 64))  # another whole version's digest
    with pytest.raises(NotFound, match="not held"):
        store.begin(4, pack({"b": torch.ones(2)})[0], base=Base(1, full.manifest.sha256))
    put(4, {"a": torch.ones(3), "b": torch.ones(2)})  # whole again: the new base
    assert [v.version for v in store.held()] == [3, 4]
    assert store.rewind() == [3, 4] and store.held() == []


def test_after_a_whole_first_version_only_what_trains_travels_and_sources_complete_it():
    p = policy()
    sink = LocalWeights(keep=2)
    lane = PublishLane(sink, "actor", trained=p.trained_names())
    for v in range(4):
        with torch.no_grad():
            for t in p.parameters():
                if t.requires_grad:
                    t.add_(0.01)  # "training"
        lane.submit(v, p.export_weights())
        got_v, _, got = sink.fetch(None)
        assert got_v == v and same(got, p.export_weights()), f"v{v} is not the actor's policy"
    whole, partial = lane.bytes_sent[0], lane.bytes_sent[1]
    assert partial < 0.2 * whole and lane.bytes_sent[1:] == [partial] * 3
    held = sink.store.held()
    assert [v.version for v in held] == [0, 2, 3] and not held[0].partial and held[-1].base.version == 0


def test_a_store_that_lost_the_base_gets_a_whole_version_again(caplog):
    p = policy()
    sink = LocalWeights(keep=2)
    lane = PublishLane(sink, "actor", trained=p.trained_names())
    lane.submit(0, p.export_weights())
    lane.submit(1, p.export_weights())
    sink.store.rewind()  # as a restarted weight_control holds nothing
    lane.submit(2, p.export_weights())
    assert "goes out whole" in caplog.text
    assert not sink.store.get(2).partial and lane.bytes_sent[2] == lane.bytes_sent[0]
    lane.submit(3, p.export_weights())
    assert sink.store.get(3).base.version == 2
    assert same(sink.fetch(3)[2], p.export_weights())
