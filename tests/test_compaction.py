"""Binding compaction without RabbitMQ (docs/scaling.md): the order of the
AMQP operations of a swap, readiness, re-attach after a restart, and a
random walk that checks the one guarantee that matters: a key whose
subscription was told it is live stays covered by a binding RabbitMQ has."""

from __future__ import annotations

import random

import pytest

from notifyd.bindings import Bindings
from notifyd.compaction import CompactingBindings, group_of
from notifyd.testing import FakeBinder


class Queue(FakeBinder):
    """A fake channel that also keeps what RabbitMQ would have bound."""

    def __init__(self, auto: bool = False) -> None:
        super().__init__(auto)
        self.applied: set[str] = set()

    def _op(self, op, key):
        d = super()._op(op, key)

        def apply(_):
            (self.applied.add if op == "bind" else self.applied.discard)(key)

        d.addCallback(apply)
        return d


def compacting(threshold=4, auto=False):
    b = CompactingBindings(Bindings(), threshold)
    q = Queue(auto)
    b.attach(q)
    return b, q


def test_group_of():
    assert group_of("user.42.#") == "user.#"
    assert group_of("user.42") == "user.#"
    assert group_of("acct.7.invoice.sent") == "acct.#"
    assert group_of("user.#") is None  # a group key itself
    assert group_of("#") is None and group_of("*.x") is None and group_of("user") is None


def test_below_the_threshold_each_key_has_its_binding():
    b, q = compacting()
    ds = [b.acquire(f"user.{i}.#") for i in range(4)]
    assert not any(d.called for d in ds)
    q.complete()
    assert all(d.called for d in ds)
    assert q.applied == {f"user.{i}.#" for i in range(4)} and b.compacted == []


def test_compacting_binds_the_group_before_unbinding_the_keys():
    b, q = compacting()
    for i in range(4):
        b.acquire(f"user.{i}.#")
    q.complete()
    q.ops.clear()
    late = b.acquire("user.4.#")  # the fifth: over the threshold
    assert q.ops == [("bind", "user.4.#"), ("bind", "user.#")]
    q.complete()
    assert late.called
    assert sorted(q.ops[2:]) == [("unbind", f"user.{i}.#") for i in range(5)]
    q.complete()
    assert q.applied == {"user.#"} and b.compacted == ["user.#"]
    assert b.bound == {"user.#"} and len(b.wanted) == 5
    # a sixth key needs no AMQP operation at all
    n = len(q.ops)
    assert b.acquire("user.5.#").called and len(q.ops) == n
    # other groups are not affected
    b.acquire("acct.1.#")
    assert q.ops[-1] == ("bind", "acct.1.#")


def test_splitting_binds_every_key_before_unbinding_the_group():
    b, q = compacting()
    keys = [f"user.{i}.#" for i in range(6)]
    for k in keys:
        b.acquire(k)
    q.complete()
    q.complete()
    assert q.applied == {"user.#"}
    q.ops.clear()
    for k in keys[:5]:  # 1 left: below half of 4
        b.release(k)
    assert q.ops == [("bind", "user.5.#")]
    assert q.applied == {"user.#"}  # still covered meanwhile
    q.complete()
    assert q.ops[-1] == ("unbind", "user.#")
    q.complete()
    assert q.applied == {"user.5.#"} and b.compacted == []


def test_a_restart_rebinds_one_key_per_compacted_group_and_wakes_every_waiter():
    b, q = compacting(auto=True)
    keys = [f"user.{i}.t{j}" for i in range(50) for j in range(20)]
    for k in keys:
        b.acquire(k)
    assert q.applied == {"user.#"}
    b.detach()
    waits = [b.wait(k) for k in keys]  # what the broker does on a lost channel
    assert not any(d.called for d in waits)
    fresh = Queue()
    attached = b.attach(fresh)
    assert fresh.ops == [("bind", "user.#")]
    fresh.complete()
    assert attached.called and all(d.called for d in waits)


def test_a_swap_undone_before_it_completed():
    b, q = compacting()
    for i in range(5):
        b.acquire(f"user.{i}.#")
    # the group bind is pending; the group shrinks again
    for i in range(4):
        b.release(f"user.{i}.#")
    q.complete()
    q.complete()
    assert q.applied == {"user.4.#"} and b.compacted == []


def test_cancelled_waits_are_forgotten():
    b, q = compacting()
    d = b.acquire("user.1.#")
    d.addErrback(lambda f: None)
    d.cancel()
    q.complete()
    assert b._waiters == {} and b._waiting_in == {}


@pytest.mark.parametrize("seed", range(20))
def test_random_walk_never_uncovers_a_live_key(seed):
    """Random acquires, releases, completions in any order, detaches and
    re-attaches: once a key's acquire fired, RabbitMQ's bindings cover it
    until it is released or the channel is lost."""
    rnd = random.Random(seed)
    b = CompactingBindings(Bindings(), 4)
    q = Queue()
    b.attach(q)
    held: dict[str, int] = {}
    live: set[str] = set()

    def covered(key):
        g = group_of(key)
        return key in q.applied or (g is not None and g in q.applied)

    for _ in range(400):
        r = rnd.random()
        if r < 0.35:
            key = f"{rnd.choice(['user', 'acct'])}.{rnd.randrange(8)}.#"
            held[key] = held.get(key, 0) + 1
            b.acquire(key).addCallback(lambda _, k=key: live.add(k) if k in held else None)
        elif r < 0.6 and held:
            key = rnd.choice(sorted(held))
            held[key] -= 1
            if not held[key]:
                del held[key]
                live.discard(key)
            b.release(key)
        elif r < 0.97 and q.pending:
            # RabbitMQ answers in order on one channel: complete the oldest
            q.complete(rnd.randrange(1, len(q.pending) + 1))
        elif r >= 0.97:
            b.detach()
            live.clear()
            q = Queue()
            b.attach(q)
            for key in held:
                b.wait(key).addCallback(lambda _, k=key: live.add(k) if k in held else None)
        for key in live:
            assert covered(key), (seed, key, q.applied)
    q.complete()
    q.complete()
    q.complete()
    assert all(covered(k) for k in held)
    assert set(held) == set(b.wanted)


def test_a_small_group_is_split_only_after_it_stayed_small():
    """A mass disconnect does not bind every member on its way out."""
    from twisted.internet.task import Clock

    clock = Clock()
    b = CompactingBindings(Bindings(), 4, clock=clock, split_after=10)
    q = Queue(auto=True)
    b.attach(q)
    keys = [f"user.{i}.#" for i in range(6)]
    for k in keys:
        b.acquire(k)
    assert q.applied == {"user.#"}
    for k in keys[:5]:
        b.release(k)
    clock.advance(9)
    assert q.applied == {"user.#"}  # not yet
    b.release(keys[5])  # the last one goes too: the group key goes, nothing is bound
    assert q.applied == set()
    clock.advance(5)
    assert q.applied == set() and b.compacted == []
    # small for long enough: split
    for k in keys:
        b.acquire(k)
    for k in keys[:5]:
        b.release(k)
    clock.advance(10)
    assert q.applied == {"user.5.#"}


def test_a_group_that_grew_again_waits_a_full_delay_before_it_splits():
    from twisted.internet.task import Clock

    clock = Clock()
    b = CompactingBindings(Bindings(), 4, clock=clock, split_after=10)
    q = Queue(auto=True)
    b.attach(q)
    keys = [f"user.{i}.#" for i in range(6)]
    for k in keys:
        b.acquire(k)
    b.release(keys[0])
    for k in keys[1:5]:
        b.release(k)  # 1 left: small
    clock.advance(8)
    for k in keys[1:3]:
        b.acquire(k)  # 3: not small any more
    clock.advance(1)
    for k in keys[1:3]:
        b.release(k)  # small again
    clock.advance(2)  # the first timer would have fired by now
    assert q.applied == {"user.#"}
    clock.advance(8)
    assert q.applied == {"user.5.#"}


def test_thresholds_below_four_are_refused():
    with pytest.raises(ValueError):
        CompactingBindings(Bindings(), 3)
