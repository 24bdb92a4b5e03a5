"""PPO on PushCube-v1 (state) with the real services, one actor or a group of two: the return must rise.

The first update's episodes come from v0, the freshly initialised policy, so
its mean return is the random policy's; the last updates must clearly beat it.
"""

from __future__ import annotations

import pytest

from dvla.config import load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "layout",
    [
        ["env.num_envs=8", "pipeline.num_rollout_workers=1"],
        # the same 8 envs per update from two rollouts, each homed to one of two FSDP actor ranks
        ["env.num_envs=4", "pipeline.num_rollout_workers=2", "pipeline.num_actors=2"],
    ],
    ids=["one-actor", "two-actor-ranks"],
)
def test_ppo_pushcube_return_rises(tmp_path, layout):
    cfg = load_config(
        None,
        ["seed=1", "env.control_mode=pd_joint_delta_pos", *layout, "pipeline.num_updates=30"],
    )
    launcher = Launcher(cfg, tmp_path, progress=False)
    try:
        launcher.start()
        rc = launcher.wait()
    finally:
        launcher.stop_all()
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    returns = [r["return_mean"] for r in rows]
    assert len(returns) == 30
    initial, final = returns[0], sum(returns[-5:]) / 5
    rate = rows[-1]["env_steps"] / rows[-1]["wall_s"]
    success = sum(r["success_rate"] for r in rows[-5:]) / 5
    print(f"{cfg.pipeline.num_actors} actor rank(s): mean episode return initial {initial:.2f}, last 5 updates "
          f"{final:.2f}; success last 5 {success:.2f}; {rate:.0f} env steps/s")  # fmt: skip
    assert final > initial + 1.5 and final > 1.5 * initial, returns
