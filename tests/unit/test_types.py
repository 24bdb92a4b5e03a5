"""TrajectoryBatch: padding, masks and concat."""

import pytest
import torch

from dvla.types import TrajectoryBatch

D, A = 3, 2


def make_batch(lengths: list[int], num_steps: int, seed: int, round_: int = 0) -> TrajectoryBatch:
    g = torch.Generator().manual_seed(seed)
    num_episodes = len(lengths)
    lengths_t = torch.tensor(lengths, dtype=torch.int64)
    mask = torch.arange(num_steps)[None, :] < lengths_t[:, None]

    def rand(*shape):
        return torch.rand(*shape, generator=g) + 0.1  # nonzero, so padding is easy to spot

    return TrajectoryBatch(
        obs=rand(num_episodes, num_steps, D) * mask[..., None],
        actions=rand(num_episodes, num_steps, A) * mask[..., None],
        log_probs=rand(num_episodes, num_steps) * mask,
        values=rand(num_episodes, num_steps) * mask,
        rewards=rand(num_episodes, num_steps) * mask,
        dones=torch.arange(num_steps)[None, :] == (lengths_t - 1)[:, None],
        versions=torch.full((num_episodes, num_steps), 5, dtype=torch.int64) * mask,
        lengths=lengths_t,
        terminated=torch.tensor([i % 2 == 0 for i in range(num_episodes)]),
        success=torch.tensor([i % 2 == 1 for i in range(num_episodes)]),
        final_obs=rand(num_episodes, D),
        group_ids=torch.arange(num_episodes, dtype=torch.int64) + 10 * seed,
        worker_rank=seed,
        round=round_,
    )


def test_step_mask_and_returns():
    b = make_batch([1, 3], num_steps=3, seed=0)
    assert b.step_mask().tolist() == [[True, False, False], [True, True, True]]
    torch.testing.assert_close(b.returns(), b.rewards.sum(dim=1))
    assert b.num_episodes == 2 and b.num_steps == 4


def test_concat_pads_shorter_batch():
    short, long = (
        make_batch([2, 3], num_steps=3, seed=1, round_=4),
        make_batch([5, 1, 4], num_steps=5, seed=2, round_=7),
    )
    out = TrajectoryBatch.concat([short, long])

    assert out.num_episodes == 5 and out.obs.shape == (5, 5, D) and out.actions.shape == (5, 5, A)
    assert out.round == 7 and out.worker_rank == -1
    for name in TrajectoryBatch.TENSOR_FIELDS:
        joined, a, b = getattr(out, name), getattr(short, name), getattr(long, name)
        assert joined.dtype == a.dtype, name
        if a.dim() >= 2 and name != "final_obs":
            assert torch.equal(joined[:2, :3], a), name
            assert not joined[:2, 3:].any(), f"{name} padding is not zero/False"
        else:
            assert torch.equal(joined[:2], a), name
        assert torch.equal(joined[2:], b), name

    assert torch.equal(out.step_mask(), torch.arange(5)[None, :] < out.lengths[:, None])
    torch.testing.assert_close(out.returns(), torch.cat([short.returns(), long.returns()]))


def test_the_header_carries_the_senders_counters_and_refuses_impossible_ones():
    from dvla.dataplane.wire import check_header, decode_payload, encode_batch
    from dvla.types import SenderCounts

    b = make_batch([2, 3], num_steps=3, seed=1, round_=5)
    b.sender = SenderCounts((1 << 63) - 1, episodes_produced=10, episodes_sent=8, env_steps_produced=321)
    header, payload = encode_batch(b)
    h = check_header(header)
    assert h.sender == b.sender and decode_payload(h, payload).sender == b.sender
    b.sender = None
    assert check_header(encode_batch(b)[0]).sender is None
    bad = header.clone()
    bad[18] = 11  # more sent than produced
    with pytest.raises(ValueError, match="more sent than produced"):
        check_header(bad)
