"""The actor group's CUDA paths on one GPU: FSDP2 (fp32 and bf16 mixed precision) and DDP over NCCL.

    python benchmarks/device_actor_group.py [--updates 3]

One GPU holds one NCCL rank (NCCL refuses two ranks on one device), so the group here has one rank:
what this checks is the CUDA side of dvla/actorgroup.py (a device mesh on cuda, MixedPrecisionPolicy,
NCCL all-reduces, the full state dict gathered to the CPU, the optimizer written and read back with
torch.distributed.checkpoint), against the plain learner on the same GPU and the same data as
tests/integration/test_actor_group.py. Prints one JSON line per strategy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
import test_actor_group as same  # noqa: E402  (the equivalence test's data and learner settings)

from dvla import actorgroup  # noqa: E402
from dvla.algo.learner import Learner  # noqa: E402
from dvla.net import free_port  # noqa: E402


def max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algo", default="ppo")
    args = ap.parse_args()
    device = torch.device("cuda")
    torch.cuda.set_device(device)
    solo = Learner(same.make_policy().to(device), same.algo_cfg(args.algo), device, seed=0)
    same.train(solo, 0, 1)
    expected = solo.policy.export_weights()
    moved = max_diff(expected, same.make_policy().export_weights())
    actorgroup.form(0, 1, backend="nccl", timeout_s=60, rendezvous=f"127.0.0.1:{free_port()}")
    try:
        for strategy, param_dtype in (("fsdp", "float32"), ("fsdp", "bfloat16"), ("ddp", "float32")):
            t0 = time.monotonic()
            group = actorgroup.DistGroup(strategy, device, param_dtype=param_dtype)
            learner = Learner(same.make_policy().to(device), same.algo_cfg(args.algo), device, seed=0, group=group)
            records = same.train(learner, 0, 1)
            weights = group.full_weights(learner.policy)
            with tempfile.TemporaryDirectory() as tmp:
                actorgroup.save_optimizer(learner.policy, learner.optimizer, Path(tmp) / "optimizer")
                before = {k: v.clone() for k, v in learner.optimizer.state_dict()["state"][0].items()}
                for s in learner.optimizer.state.values():
                    s["exp_avg"].zero_()
                actorgroup.load_optimizer(learner.policy, learner.optimizer, Path(tmp) / "optimizer")
                after = learner.optimizer.state_dict()["state"][0]
                round_trip = max(float((_local(after[k]) - _local(before[k])).abs().max()) for k in before)
            line = {
                "strategy": strategy,
                "param_dtype": param_dtype,
                "backend": torch.distributed.get_backend(),
                "device": torch.cuda.get_device_name(device),
                "weights_on": str(next(iter(weights.values())).device),
                "max_diff_vs_plain_learner": max_diff(weights, expected),
                "parameters_moved": moved,
                "loss_policy_last": records[-1]["loss/policy"],
                "optimizer_round_trip_max_diff": round_trip,
                "seconds": round(time.monotonic() - t0, 2),
            }
            print(json.dumps(line), flush=True)
            del learner, group
    finally:
        actorgroup.leave()


def _local(t: torch.Tensor) -> torch.Tensor:
    return (t.to_local() if hasattr(t, "to_local") else t).float().cpu()


if __name__ == "__main__":
    main()
