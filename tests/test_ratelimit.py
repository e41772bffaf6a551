"""Token buckets: pure state, driven by hand-given times."""

from __future__ import annotations

import pytest

from notifyd.ratelimit import Limits, SessionLimits, TokenBucket


def test_bucket_starts_full_and_refills_at_its_rate():
    b = TokenBucket(rate=2, burst=3, now=100.0)
    assert [b.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert not b.take(100.4)  # 0.8 tokens
    assert b.take(100.5)  # 1.0
    assert not b.take(100.5)
    b.take(1000.0)
    assert b.available(1000.0) == 2  # never more than the burst


def test_refusal_takes_nothing_and_amounts_count():
    b = TokenBucket(rate=10, burst=100, now=0.0)
    assert b.take(0.0, 60)
    assert not b.take(0.0, 50)  # refused whole
    assert b.available(0.0) == 40
    assert b.take(1.0, 50)  # 40 + 10


def test_a_clock_going_back_gives_nothing():
    b = TokenBucket(rate=1, burst=1, now=10.0)
    assert b.take(10.0)
    assert not b.take(5.0)
    assert not b.take(10.5)
    assert b.take(11.0)


def test_rate_zero_is_unlimited():
    b = TokenBucket(rate=0, burst=1, now=0.0)
    assert all(b.take(0.0, 10**9) for _ in range(100))
    assert b.unlimited and b.available(0) == float("inf")
    with pytest.raises(ValueError):
        TokenBucket(rate=-1, burst=1, now=0)


def test_session_limits_defaults_and_the_largest_message_always_fits():
    limits = SessionLimits(Limits(), 0.0, max_message_size=4 * 1024 * 1024)
    assert (limits.subscribe.rate, limits.subscribe.burst) == (50, 100)
    assert (limits.call.rate, limits.call.burst) == (20, 40)
    assert (limits.publish.rate, limits.publish.burst) == (100, 200)
    assert limits.publish_log.rate == 64 * 1024
    assert limits.publish_log.burst == 4 * 1024 * 1024
    assert SessionLimits(Limits(), 0.0, 1024).publish_log.burst == 1024 * 1024
