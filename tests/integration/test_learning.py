"""PPO on PushCube-v1 (state) with the real services: the return must rise.

The first update's episodes come from v0, the freshly initialised policy, so
its mean return is the random policy's; the last updates must clearly beat it.
"""

from __future__ import annotations

import pytest

from dvla.config import load_config
from dvla.launch import Launcher
from dvla.metrics import read_metrics

pytestmark = pytest.mark.slow


def test_ppo_pushcube_return_rises(tmp_path):
    cfg = load_config(
        None,
        [
            "seed=1",
            "env.control_mode=pd_joint_delta_pos",
            "env.num_envs=8",
            "pipeline.num_rollout_workers=1",
            "pipeline.num_updates=30",
        ],
    )
    launcher = Launcher(cfg, tmp_path, progress=False)
    try:
        launcher.start()
        rc = launcher.wait()
    finally:
        launcher.stop_all()
    assert rc == 0, "\n".join(c.tail() for c in launcher.children)
    returns = [r["return_mean"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(returns) == 30
    initial, final = returns[0], sum(returns[-5:]) / 5
    print(f"mean episode return: initial policy {initial:.2f}, last 5 updates {final:.2f}")
    assert final > initial + 1.5 and final > 1.5 * initial, returns
