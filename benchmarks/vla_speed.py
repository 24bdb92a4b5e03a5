"""Parameter counts and inference / training speed of the VLA presets on this machine.

    .venv/bin/python benchmarks/vla_speed.py [--sizes tiny,small] [--heads discrete,flow]

Inference: `act` on a batch of 16 rollout observations (128x128 RGB, state, the
PickCube instruction). Training: `evaluate` + backward on a batch of 32, as one
PPO minibatch. Samples/s after one warm-up call, median of a few timed calls.
Writes a markdown table to stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dvla.config import PolicyConfig, VlaConfig
from dvla.policy import build_policy
from dvla.types import EnvSpec

SPEC = EnvSpec(
    "PickCube-v1",
    29,
    4,
    (-1.0,) * 4,
    (1.0,) * 4,
    50,
    (128, 128, 3),
    "pick up the cube and move it to the goal position",
)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(size: str, head: str, act_batch: int, train_batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    policy = build_policy(PolicyConfig(name="vla", chunk_size=4, vla=VlaConfig(size=size, action_head=head)), SPEC)
    g = torch.Generator().manual_seed(0)
    n = max(act_batch, train_batch)
    obs = torch.randn(n, SPEC.obs_dim, generator=g)
    images = torch.randint(0, 256, (n, SPEC.image_size), generator=g, dtype=torch.uint8)
    policy.eval()
    act_s = timed(lambda: policy.act(obs[:act_batch], images[:act_batch], generator=g), repeats)
    samples = policy.act(obs[:train_batch], images[:train_batch], generator=g).actions
    policy.train()

    def train_step():
        out = policy.evaluate(obs[:train_batch], samples, images[:train_batch])
        (-(out.log_probs.mean()) + out.values.square().mean()).backward()
        policy.zero_grad(set_to_none=True)

    train_s = timed(train_step, repeats)
    return {
        "size": size,
        "head": head,
        "params_m": sum(p.numel() for p in policy.parameters()) / 1e6,
        "act_sps": act_batch / act_s,
        "train_sps": train_batch / train_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="tiny,small")
    ap.add_argument("--heads", default="discrete,flow")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CUDA' if torch.cuda.is_available() else 'CPU only'}\n"
    )
    print("| preset | head | parameters (M) | inference (samples/s, batch 16) | training (samples/s, batch 32) |")
    print("|---|---|---|---|---|")
    for size in args.sizes.split(","):
        for head in args.heads.split(","):
            r = measure(size, head, 16, 32, args.repeats)
            print(
                f"| vla-{r['size']} | {r['head']} | {r['params_m']:.2f} | {r['act_sps']:.1f} | {r['train_sps']:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
