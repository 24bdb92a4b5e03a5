"""The rollout weight lane against a real server: swaps are never seen half-done."""

from __future__ import annotations

import threading

import pytest
import torch

from dvla.config import MlpConfig, PolicyConfig
from dvla.lanes.weights import WeightLane
from dvla.policy import build_policy
from dvla.types import EnvSpec

SPEC = EnvSpec("Fake-v0", 6, 3, (-1.0,) * 3, (1.0,) * 3, 10)

# Every test here publishes, and only the actor may: register the client as the actor first.
pytestmark = pytest.mark.usefixtures("publisher")


def make_policy():
    return build_policy(PolicyConfig(mlp=MlpConfig(hidden_sizes=(16, 16))), SPEC).eval()


def weights_of(version: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(version)
    return {k: torch.randn(v.shape, generator=g) * 0.5 for k, v in make_policy().export_weights().items()}


def test_inference_only_ever_sees_whole_versions(client):
    num_versions = 25
    obs = torch.randn(32, SPEC.obs_dim, generator=torch.Generator().manual_seed(7))
    expected = {}
    ref = make_policy()
    for v in range(num_versions):
        ref.load_weights(weights_of(v))
        expected[v] = ref.act(obs, deterministic=True).actions
    stop = threading.Event()
    lane = WeightLane(client, make_policy, stop).start_thread()

    def publish():
        for v in range(num_versions):
            client.publish(v, weights_of(v), final=(v == num_versions - 1))

    publisher = threading.Thread(target=publish)
    publisher.start()
    assert lane.wait_loaded(0, timeout_s=20)
    seen, checked = set(), 0
    while not (lane.final and not publisher.is_alive()):
        policy, version = lane.current()
        out = policy.act(obs, deterministic=True).actions  # inference while the lane loads the shadow
        assert torch.equal(out, expected[version]), f"output does not match version {version}"
        seen.add(version)
        checked += 1
    publisher.join()
    stop.set()
    assert lane.version == num_versions - 1
    assert len(seen) >= 3 and checked > num_versions
    assert lane.versions_used == sorted(lane.versions_used)  # only ever forward
    assert len(lane.swap_pauses_s) == len(lane.versions_used)


def test_wait_loaded_blocks_until_the_version_arrives(client):
    stop = threading.Event()
    lane = WeightLane(client, make_policy, stop).start_thread()
    client.publish(0, weights_of(0))
    assert lane.wait_loaded(0, timeout_s=10) and lane.version == 0
    t = threading.Timer(0.3, lambda: client.publish(1, weights_of(1)))
    t.start()
    assert lane.wait_loaded(1, timeout_s=10) and lane.version == 1
    stop.set()
    assert not lane.wait_loaded(5, timeout_s=1)  # stopped: returns False, no hang


def test_inline_lane_fetches_in_wait_loaded(client):
    stop = threading.Event()
    lane = WeightLane(client, make_policy, stop)  # no thread: it follows inline
    client.publish(0, weights_of(0))
    client.publish(1, weights_of(1))
    assert lane.wait_loaded(0) and lane.version == 1  # the newest, fetched inline
    client.publish(2, weights_of(2))
    assert lane.current()[1] == 1  # no background swap between batches
    t = threading.Timer(0.3, lambda: client.publish(3, weights_of(3), final=True))
    t.start()
    assert lane.wait_loaded(3) and lane.version == 3 and lane.final
    stop.set()
