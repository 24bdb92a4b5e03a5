"""Evening out a global batch: three actor ranks (real processes, a real gloo group) holding
uneven shares hand whole units to each other (dvla/lanes/balance.py).

Every episode ends on exactly one rank, bit for bit as it was sent, GRPO groups whole, and
every rank holds total // K units (the first total % K one more).

Run as a script, this file is one rank: `python test_actor_balance.py RANK PORT ALGO OUT`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dvla.net import free_port
from dvla.types import TrajectoryBatch

sys.path.insert(0, str(Path(__file__).parent))
from test_actor_group import trajectories  # noqa: E402  (seeded rollout batches: 6 of 8 episodes, 2 groups)

K = 3


def shares(algo: str) -> list[list[TrajectoryBatch]]:
    """Each rank's batches as its home rollouts would have sent them: uneven, with pieces of batches
    so that evening out must split a batch (between episodes; for GRPO between groups)."""
    b = trajectories(1)
    first = lambda batch, n: batch.select(torch.arange(batch.num_episodes) < n)  # noqa: E731
    if algo == "grpo":  # groups 7, 2, 2 -> 4, 4, 3
        return [[b[0], b[3], b[4], first(b[5], 4)], [b[1]], [b[2]]]
    return [[b[0], b[3], b[4]], [b[1]], [first(b[2], 5)]]  # episodes 24, 8, 5 -> 13, 12, 12


def rank_main(rank: int, port: int, algo: str, out: str) -> None:
    from dvla import actorgroup
    from dvla.lanes.balance import even_out

    actorgroup.form(rank, K, backend="gloo", timeout_s=60, rendezvous=f"127.0.0.1:{port}")
    try:
        group = actorgroup.DistGroup("ddp", torch.device("cpu"))
        batches, moved = even_out(group, shares(algo)[rank], whole_groups=algo == "grpo")
        copies = [b.select(torch.ones(b.num_episodes, dtype=torch.bool)) for b in batches]  # not views of a buffer
        torch.save({"batches": copies, "moved": moved}, f"{out}.{rank}")
    finally:
        actorgroup.leave()


def episodes(batches: list[TrajectoryBatch]) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Every episode by (rollout, first observation value): its real decisions field by field."""
    out = {}
    for b in batches:
        for i in range(b.num_episodes):
            n = int(b.lengths[i])
            key = (b.worker_rank, float(b.obs[i, 0, 0]))
            assert key not in out, f"episode {key} twice"
            row = {}
            for name in TrajectoryBatch.TENSOR_FIELDS:
                x = getattr(b, name)[i]
                row[name] = (
                    x[:n]
                    if x.dim() >= 1 and name not in ("final_obs", "final_images") and x.shape[0] == b.obs.shape[1]
                    else x
                )
            out[key] = row
    return out


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_uneven_shares_are_evened_out_whole_and_bit_exact(tmp_path, algo):
    port, out = free_port(), tmp_path / "share"
    procs = [subprocess.Popen([sys.executable, __file__, str(r), str(port), algo, str(out)]) for r in range(K)]
    assert [p.wait(timeout=120) for p in procs] == [0] * K
    got = [torch.load(f"{out}.{r}", weights_only=False) for r in range(K)]

    sent = [b for share in shares(algo) for b in share]
    if algo == "grpo":
        held = [sum(len(b.group_ids.unique()) for b in g["batches"]) for g in got]
        assert held == [4, 4, 3]
        assert [g["moved"] for g in got] == [3, 2, 1]
        owner = {}
        for r, g in enumerate(got):  # every group on one rank only
            for b in g["batches"]:
                for gid in b.group_ids.unique().tolist():
                    assert owner.setdefault(gid, r) == r, f"group {gid} split over ranks"
        sizes = torch.cat([b.group_ids for g in got for b in g["batches"]]).unique(return_counts=True)[1]
        assert (sizes == 4).all()  # and whole
    else:
        assert [sum(b.num_episodes for b in g["batches"]) for g in got] == [13, 12, 12]
        assert [g["moved"] for g in got] == [11, 4, 7]

    expected = episodes(sent)
    received = episodes([b for g in got for b in g["batches"]])
    assert received.keys() == expected.keys()  # every episode exactly once
    for key, row in expected.items():
        for name, x in row.items():
            assert torch.equal(received[key][name], x), (key, name)


if __name__ == "__main__":
    rank_main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
