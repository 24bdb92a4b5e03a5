"""The tiny VLA trained by the pipeline end to end: camera images and an instruction in, action chunks out."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from test_training import run_services  # tests/integration is on sys.path (rootdir import mode)

from dvla.config import load_config
from dvla.policy import build_policy
from dvla.types import EnvSpec

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:__array_wrap__:DeprecationWarning")]


# the swimlane run keeps its vision tower frozen: after a whole v0, versions carry only what trains
@pytest.mark.parametrize("head,mode,frozen", [("discrete", "swimlane", "[model.vision]"), ("flow", "sync", "[]")])
def test_tiny_vla_trains_on_rgb_pickcube(tmp_path, head, mode, frozen):
    n = 3
    cfg = load_config(
        None,
        [
            f"policy.vla.action_head={head}",
            f"pipeline.mode={mode}",
            "env.num_envs=4",
            "env.max_episode_steps=12",
            "env.image_size=64",
            f"pipeline.num_updates={n}",
            "control.heartbeat_s=0.2",
            f"policy.frozen={frozen}",
        ],
        preset="pickcube-vla-tiny",
    )
    rc, status, rows, launcher = run_services(cfg, tmp_path)
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    # more than one version was published, and the run ended on the final one
    assert status.latest_version == n and status.versions[-1].final
    if cfg.policy.frozen:  # partial versions on v0; rollouts complete them (the log-prob check below)
        held = {v.version: v for v in status.versions}
        assert not held[0].partial and held[n].partial and held[n].base_version == 0
        assert held[n].total_bytes < 0.9 * held[0].total_bytes
    assert [r["version"] for r in rows] == list(range(1, n + 1))
    for r in rows:
        # every trained chunk was stamped with a version the actor had published before the update
        assert r["versions_used"] and all(0 <= v < r["version"] for v in r["versions_used"])
        assert r["version"] - 1 - min(r["versions_used"]) <= cfg.pipeline.max_staleness_in_force
        # where the rollout ran the actor's own weights, act's log-prob is the actor's to float tolerance
        if r["versions_used"] == [r["version"] - 1]:
            assert r["check/behaviour_logp_gap"] < 1e-3
        # chunks of 4: a 12-step episode is 3 decisions, and its length is counted in env steps
        assert 3 < r["episode_length"] <= 12
    t = status.totals
    assert t.episodes_trained + t.episodes_dropped == t.episodes_produced and t.episodes_in_flight == 0
    ckpt = tmp_path / f"checkpoints/v{n:06d}"
    assert (ckpt / "weights.safetensors").exists()
    # the checkpoint holds the VLA in the transformers format, which policy.path starts a run from
    saved = ckpt / "policy"
    assert (saved / "config.json").exists() and (saved / "model.safetensors").exists()
    spec = EnvSpec("PickCube-v1", 29, 4, (-1.0,) * 4, (1.0,) * 4, 12, (64, 64, 3), "pick up the cube")
    loaded = build_policy(replace(cfg.policy, path=str(saved)), spec)
    weights = load_file(str(ckpt / "weights.safetensors"))
    assert all(torch.equal(loaded.export_weights()[k], w) for k, w in weights.items())
