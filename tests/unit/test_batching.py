import pytest

from dvla.algo.batching import DynamicBatcher


def test_fires_when_the_batch_is_full():
    b = DynamicBatcher(max_batch=8, timeout_s=1.0)
    b.add("a", 4, now=0.0)
    assert not b.ready(0.1) and b.time_left(0.1) == pytest.approx(0.9)
    b.add("b", 4, now=0.2)
    assert b.ready(0.2) and b.time_left(0.2) == 0.0
    assert b.take(0.2) == ["a", "b"] and (b.fired_full, b.fired_timeout) == (1, 0)
    assert len(b) == 0 and b.time_left(0.3) is None and not b.ready(5.0)


def test_fires_when_the_oldest_request_times_out():
    b = DynamicBatcher(max_batch=8, timeout_s=0.005)
    b.add("a", 2, now=10.0)
    b.add("b", 2, now=10.004)
    assert not b.ready(10.004)
    assert b.ready(10.005)  # the oldest waited timeout_s; the younger one rides along
    assert b.take(10.005) == ["a", "b"] and (b.fired_full, b.fired_timeout) == (0, 1)


def test_bad_use_is_refused():
    with pytest.raises(ValueError):
        DynamicBatcher(0, 0.1)
    b = DynamicBatcher(4, 0.1)
    b.add("a", 1, 0.0)
    with pytest.raises(ValueError, match="already waiting"):
        b.add("a", 1, 0.0)
