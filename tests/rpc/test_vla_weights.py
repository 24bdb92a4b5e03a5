"""A ~100M-parameter VLA version travels through a real weight_control by name, bit-exactly."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from dvla.config import ControlConfig, PolicyConfig, VlaConfig
from dvla.policy import build_policy
from dvla.rpc.client import ControlClient
from dvla.types import EnvSpec
from services.weight_control.app import BackgroundServer

pytestmark = pytest.mark.slow

SPEC = EnvSpec("PickCube-v1", 29, 4, (-1.0,) * 4, (1.0,) * 4, 50, (128, 128, 3), "pick up the cube")


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def test_vla_small_publishes_and_fetches_by_name():
    torch.manual_seed(0)
    src = build_policy(PolicyConfig(name="vla", chunk_size=4, dtype="float32", vla=VlaConfig(size="small")), SPEC)
    weights = src.export_weights()
    num_params = sum(p.numel() for p in src.parameters())
    assert 85e6 <= num_params <= 115e6
    assert any(n.startswith("model.vision") for n in weights) and any(n.startswith("model.backbone") for n in weights)
    cfg = replace(ControlConfig(), chunk_bytes=4 << 20, max_message_bytes=8 << 20)
    with BackgroundServer(cfg) as srv:
        client = ControlClient(srv.address, cfg)
        try:
            client.wait_healthy(10)
            client.register("actor", "actor-0", rendezvous_address="127.0.0.1:29500")
            client.publish(0, weights)
            status = client.status()
            got_version, _, fetched = client.fetch(0)
        finally:
            client.close()
    assert got_version == 0
    # the store's manifest names the VLA's own tensors
    assert status.versions[-1].num_tensors == len(weights)
    assert sorted(fetched) == sorted(weights)
    for name, t in weights.items():
        assert fetched[name].dtype == t.dtype and fetched[name].shape == t.shape
        assert digest(fetched[name]) == digest(t), name
    dst = build_policy(PolicyConfig(name="vla", chunk_size=4, dtype="float32", vla=VlaConfig(size="small")), SPEC)
    dst.load_weights(fetched)
    g = torch.Generator().manual_seed(1)
    obs, images = (
        torch.randn(2, 29, generator=g),
        torch.randint(0, 256, (2, 128 * 128 * 3), generator=g, dtype=torch.uint8),
    )
    a = src.act(obs, images, deterministic=True)
    b = dst.act(obs, images, deterministic=True)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.values, b.values)
