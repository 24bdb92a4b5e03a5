"""Every lane in one process on an accelerator: dvla.inproc.run_local with a VLA, no simulator needed.

    python benchmarks/device_lanes.py --device cuda [--size tiny] [--updates 4] [--dtype bfloat16]

The rollouts' sampling lanes run the VLA's inference (chunks of actions, a camera
image per decision) on `device`, with a seeded generator there; the actor's
training lane runs PPO on the same device; versions travel through the
in-process weight store (packed, checksummed, unpacked as on the wire). The envs
are synthetic (random images, episodes of fixed length), so what this checks is
the lanes' device paths, not learning. Prints one JSON line per head.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dvla.config import AlgoConfig, PolicyConfig, VlaConfig
from dvla.envs import StepResult
from dvla.inproc import run_local
from dvla.types import EnvSpec

SPEC = EnvSpec("PickCube-v1", 29, 4, (-1.0,) * 4, (1.0,) * 4, 12, (64, 64, 3), "pick up the cube")


class CameraEnvs:
    """N envs whose episodes last `length` steps; random state and images, seeded by the reset seeds."""

    def __init__(self, num_envs: int = 8, length: int = 6):
        self.num_envs, self.length, self.spec = num_envs, length, SPEC
        self.steps = torch.zeros(num_envs)
        self.g = torch.Generator()

    def _obs(self):
        images = torch.randint(0, 256, (self.num_envs, SPEC.image_size), generator=self.g, dtype=torch.uint8)
        return torch.randn(self.num_envs, SPEC.obs_dim, generator=self.g), images

    def reset(self, seeds):
        self.g.manual_seed(int(seeds[0]))
        self.steps.zero_()
        return self._obs()

    def step(self, actions, active, observe=True):
        self.steps += active.float()
        done = (self.steps >= self.length) & active
        obs, images = self._obs()
        return StepResult(obs=obs, reward=active.float() * actions[:, 0].clamp(-1, 1), terminated=done,
                          truncated=torch.zeros_like(done), success=done, images=images)  # fmt: skip

    def close(self):
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--dtype", default="bfloat16", help="the VLA trunk's dtype (heads stay float32)")
    ap.add_argument("--updates", type=int, default=4)
    ap.add_argument("--heads", default="discrete,flow")
    args = ap.parse_args()
    for head in args.heads.split(","):
        policy = PolicyConfig(
            name="vla", chunk_size=2, dtype=args.dtype, vla=VlaConfig(size=args.size, action_head=head)
        )
        t = time.monotonic()
        run = run_local(policy, AlgoConfig(update_epochs=2, num_minibatches=2), lambda: CameraEnvs(), num_rollouts=2,
                        num_updates=args.updates, max_staleness=1, streamer=True, background_weights=True,
                        device=args.device, timeout_s=300)  # fmt: skip
        wall = time.monotonic() - t
        gaps = [r["check/behaviour_logp_gap"] for r in run.records]
        print(json.dumps({
            "head": head, "device": args.device, "dtype": args.dtype, "versions": run.versions,
            "ledger": run.ledger, "produced": run.produced, "wall_s": round(wall, 2),
            "s_per_update": round(wall / args.updates, 3), "behaviour_logp_gap": gaps,
            "loss_finite": all(all(v == v for k, v in r.items() if k.startswith("loss/")) for r in run.records),
        }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
