"""An actor group: K ranks (real processes, a real gloo group) train what one rank trains.

Every process builds the same trajectories (seeded): the one-rank learner trains on all of them,
rank r of K on its slice (rollout batches r*B/K ..). After several updates with stale steps,
minibatches that straddle the ranks and advantage normalisation, the parameters match.

The tiny VLA (transformers layers, each an FSDP unit of its own) trains the same way, and its group
checkpoint holds the whole policy in transformers format, from the gathered weights.

Run as a script, this file is one rank: `python test_actor_group.py RANK SIZE PORT STRATEGY ALGO OUT POLICY`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvla.algo.learner import Learner
from dvla.config import AlgoConfig, MlpConfig, PolicyConfig, VlaConfig
from dvla.net import free_port
from dvla.policy import build_policy
from dvla.types import EnvSpec, TrajectoryBatch

NUM_BATCHES, EPISODES, T, UPDATES = 6, 8, 5, 3  # 6 rollout batches per update: 3 per rank with K=2
SPEC = EnvSpec("Fake-v0", 6, 3, (-1.0,) * 3, (1.0,) * 3, T)
VLA_SPEC = EnvSpec("Fake-v0", 6, 3, (-1.0,) * 3, (1.0,) * 3, T, image_shape=(16, 16, 3), instruction="push it")


def algo_cfg(algo: str) -> AlgoConfig:
    return AlgoConfig(name=algo, update_epochs=2, num_minibatches=3, group_size=4, lr=3e-3)


def build(kind: str):
    if kind.startswith("vla"):  # vla: the discrete head; vla-flow: the flow head
        head = "flow" if kind == "vla-flow" else "discrete"
        vla = VlaConfig(size="tiny", action_head=head, num_bins=32, flow_steps=2)
        return build_policy(PolicyConfig(name="vla", chunk_size=1, dtype="float32", vla=vla), VLA_SPEC)
    return build_policy(PolicyConfig(mlp=MlpConfig(hidden_sizes=(32, 32))), SPEC)


def make_policy(kind: str = "mlp"):
    torch.manual_seed(0)
    return build(kind)


def trajectories(update: int, kind: str = "mlp") -> list[TrajectoryBatch]:
    """The rollout batches of one update: sampled by a fixed behaviour policy, a quarter of the
    episodes by the version before the learner's (stale: their proximal log-probs are recomputed)."""
    g = torch.Generator().manual_seed(1000 + update)
    torch.manual_seed(77)
    behaviour = build(kind)
    spec = VLA_SPEC if kind.startswith("vla") else SPEC
    out = []
    for i in range(NUM_BATCHES):
        obs = torch.randn(EPISODES, T, spec.obs_dim, generator=g)
        images = torch.randint(0, 256, (EPISODES, T, spec.image_size), generator=g, dtype=torch.uint8)
        with torch.no_grad():
            flat = images.reshape(EPISODES * T, spec.image_size)
            act = behaviour.act(obs.reshape(-1, spec.obs_dim), flat, generator=g)
        lengths = torch.randint(2, T + 1, (EPISODES,), generator=g)
        step = torch.arange(T)[None, :]
        mask = step < lengths[:, None]
        versions = torch.full((EPISODES, T), update, dtype=torch.int64)
        versions[: EPISODES // 4] = update - 1
        out.append(
            TrajectoryBatch(
                obs=obs * mask[..., None],
                actions=act.actions.reshape(EPISODES, T, -1) * mask[..., None],
                log_probs=act.log_probs.reshape(EPISODES, T) * mask,
                values=torch.randn(EPISODES, T, generator=g) * mask,
                rewards=torch.rand(EPISODES, T, generator=g) * mask,
                dones=step == (lengths[:, None] - 1),
                versions=versions * mask,
                lengths=lengths,
                terminated=torch.rand(EPISODES, generator=g) < 0.5,
                success=torch.zeros(EPISODES, dtype=torch.bool),
                final_obs=torch.randn(EPISODES, spec.obs_dim, generator=g),
                images=images,
                final_images=images[:, -1],
                group_ids=torch.arange(EPISODES) // 4 + 100 * i,  # whole GRPO groups per rollout batch
                worker_rank=i,
            )
        )
    return out


def train(learner: Learner, rank: int, size: int, updates=range(1, UPDATES + 1), kind: str = "mlp") -> list[dict]:
    records = []
    per_rank = NUM_BATCHES // size
    for u in updates:
        mine = trajectories(u, kind)[rank * per_rank : (rank + 1) * per_rank]
        s = learner.prepare(TrajectoryBatch.concat(mine), version=u)
        records.append(learner.update(s))
    return records


def rank_main(rank: int, size: int, port: int, strategy: str, algo: str, out: str, kind: str) -> None:
    from dvla import actorgroup

    actorgroup.form(rank, size, backend="gloo", timeout_s=60, rendezvous=f"127.0.0.1:{port}")
    try:
        group = actorgroup.DistGroup(strategy, torch.device("cpu"))
        learner = Learner(make_policy(kind), algo_cfg(algo), torch.device("cpu"), seed=0, group=group)
        checkpoint = out.endswith(".ckpt")  # train all but the last update, then write a group checkpoint
        records = train(learner, rank, size, range(1, UPDATES) if checkpoint else range(1, UPDATES + 1), kind)
        weights = group.full_weights(learner.policy)
        if checkpoint:
            actorgroup.save_optimizer(learner.policy, learner.optimizer, Path(out) / "optimizer")
        if rank == 0:
            state = {"weights": weights, "records": records, "generator": learner.generator.get_state()}
            torch.save(state, Path(out) / "rest.pt" if checkpoint else out)
        del learner  # a DDP reducer must go before its process group
    finally:
        actorgroup.leave()


@pytest.mark.parametrize(
    "strategy,algo,kind",
    [
        ("fsdp", "ppo", "mlp"),
        pytest.param("ddp", "ppo", "mlp", marks=pytest.mark.slow),
        pytest.param("fsdp", "grpo", "mlp", marks=pytest.mark.slow),
        pytest.param("ddp", "grpo", "mlp", marks=pytest.mark.slow),
        pytest.param("fsdp", "ppo", "vla", marks=pytest.mark.slow),  # transformer layers as FSDP units
        pytest.param("fsdp", "grpo", "vla-flow", marks=pytest.mark.slow),
    ],
)
def test_two_ranks_train_what_one_rank_trains(tmp_path, strategy, algo, kind):
    solo = Learner(make_policy(kind), algo_cfg(algo), torch.device("cpu"), seed=0)
    solo_records = train(solo, 0, 1, kind=kind)
    expected = solo.policy.export_weights()

    port, out = free_port(), tmp_path / "rank0.pt"
    procs = [
        subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), strategy, algo, str(out), kind])
        for r in range(2)
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    got = torch.load(out)
    assert got["weights"].keys() == expected.keys()
    start = make_policy(kind).export_weights()
    floats = [k for k in expected if expected[k].is_floating_point()]
    moved = max(float((expected[k] - start[k]).abs().max()) for k in floats)
    diff = max(float((got["weights"][k] - expected[k]).abs().max()) for k in floats)
    assert all(torch.equal(got["weights"][k], expected[k]) for k in expected if k not in floats)
    print(f"{strategy} {algo} {kind}: max |K=2 - K=1| = {diff:.2e} (parameters moved up to {moved:.2e})")
    assert moved > 1e-2  # the updates did something
    assert diff < 1e-5
    for mine, theirs in zip(got["records"], solo_records):
        assert mine["train/samples"] == theirs["train/samples"]
        for k in ("loss/policy", "loss/clip_frac", "loss/approx_kl", "loss/grad_norm", "train/behaviour_weight_min"):
            assert mine[k] == pytest.approx(theirs[k], rel=1e-4, abs=1e-6), k


@pytest.mark.slow
def test_a_group_checkpoint_resumes_on_one_rank(tmp_path):
    """Two FSDP ranks write their optimizer shards (torch.distributed.checkpoint); one rank reads them
    back resharded and takes the last update: the same parameters as one rank all along."""
    from dvla import actorgroup

    solo = Learner(make_policy(), algo_cfg("ppo"), torch.device("cpu"), seed=0)
    train(solo, 0, 1)
    port, out = free_port(), tmp_path / "group.ckpt"
    procs = [
        subprocess.Popen([sys.executable, __file__, str(r), "2", str(port), "fsdp", "ppo", str(out), "mlp"])
        for r in range(2)
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    rest = torch.load(out / "rest.pt")
    policy = make_policy()
    policy.load_weights(rest["weights"])
    resumed = Learner(policy, algo_cfg("ppo"), torch.device("cpu"), seed=0)
    actorgroup.load_optimizer(policy, resumed.optimizer, out / "optimizer")
    resumed.generator.set_state(rest["generator"])
    train(resumed, 0, 1, range(UPDATES, UPDATES + 1))
    got, expected = resumed.policy.export_weights(), solo.policy.export_weights()
    diff = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    print(f"K=2 checkpoint resumed on K=1: max |diff| = {diff:.2e}")
    assert diff < 1e-5


if __name__ == "__main__":
    rank_main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7])
