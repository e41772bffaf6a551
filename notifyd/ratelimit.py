"""
Per-session rate limits: token buckets.  No I/O, no reactor.

A :class:`TokenBucket` holds up to ``burst`` tokens and gains ``rate`` tokens
a second; a request takes one token (or, for byte budgets, one token per
byte).  A request that finds too few tokens is refused and takes nothing.
The caller passes the time (``router.clock.seconds()``), so tests drive the
buckets with any clock they like.

Each WAMP session has its own buckets (see :class:`SessionLimits`):

=========================== ======================================= =========
bucket                      what takes from it                      refused
=========================== ======================================= =========
``subscribe``               each SUBSCRIBE                          ERROR
``call``                    each CALL (meta calls that scan the     ERROR
                            node's subscriptions take more, see
                            :mod:`notifyd.meta`)
``publish``                 each PUBLISH                            ERROR if
                                                                    acknowledge
``publish_log_bytes``       the encoded size of each PUBLISH to a   ERROR if
                            topic the event log keeps               acknowledge
=========================== ======================================= =========

The error is ``notifyd.error.rate_limited``; the session stays open.  A rate
of 0 turns that limit off.
"""

from __future__ import annotations

from dataclasses import dataclass


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` kept; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate < 0 or burst < 0:
            raise ValueError("rate and burst must not be negative")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        # a clock that goes backwards gives nothing and takes nothing
        self.stamp = max(self.stamp, now)

    def take(self, now: float, n: float = 1) -> bool:
        """Take ``n`` tokens if there are that many; False (and nothing
        taken) otherwise.  An unlimited bucket always says True."""
        if self.rate == 0:
            return True
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False

    def available(self, now: float) -> float:
        """Tokens there are now (``inf`` when unlimited)."""
        if self.rate == 0:
            return float("inf")
        self._refill(now)
        return self.tokens


@dataclass(frozen=True)
class Limits:
    """Rates (per second) and bursts of one session's buckets."""

    subscribe_rate: float = 50.0
    subscribe_burst: int = 100
    call_rate: float = 20.0
    call_burst: int = 40
    publish_rate: float = 100.0
    publish_burst: int = 200
    #: bytes a second into topics the event log keeps
    publish_log_rate: float = 64 * 1024
    publish_log_burst: int = 1024 * 1024


class SessionLimits:
    """The buckets of one session."""

    __slots__ = ("subscribe", "call", "publish", "publish_log")

    def __init__(self, limits: Limits, now: float, max_message_size: int = 0) -> None:
        self.subscribe = TokenBucket(limits.subscribe_rate, limits.subscribe_burst, now)
        self.call = TokenBucket(limits.call_rate, limits.call_burst, now)
        self.publish = TokenBucket(limits.publish_rate, limits.publish_burst, now)
        # one message of the largest size allowed always fits in a full bucket
        self.publish_log = TokenBucket(
            limits.publish_log_rate, max(limits.publish_log_burst, max_message_size), now
        )
