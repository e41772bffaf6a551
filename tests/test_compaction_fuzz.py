"""A randomized check of binding compaction (docs/scaling.md), written in
review: random acquires, releases (cancelling waits as the broker does),
bind/unbind confirms in and out of order, the delayed split timer, and
channel losses with the broker's re-waits, over keys with and without a
group (``user``, ``#``, ``*.x``, ``user.*``, and ``user.#``, which is a
group key itself).  After every step: every key told "live" is covered by a
binding RabbitMQ confirmed and has not been asked to remove; the physical
reference counts are exactly what the groups' states imply; and at the end
every wait fired and nothing is left behind."""

import random

import pytest
from pika.exceptions import AMQPConnectionError
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from notifyd.bindings import Bindings
from notifyd.compaction import COMPACT, COMPACTING, SPLIT, CompactingBindings, group_of
from notifyd.testing import FakeBinder


class Q(FakeBinder):
    def __init__(self):
        super().__init__(False)
        self.certain = set()  # bind confirmed, no unbind issued since
        self.dead = False

    def _op(self, op, key):
        if op == "unbind":
            self.certain.discard(key)
        d = super()._op(op, key)

        def ok(_):
            if op == "bind" and not self.dead:
                self.certain.add(key)

        d.addCallback(ok)
        return d

    def complete_one(self, i):
        op, key, d = self.pending.pop(i)
        d.callback(None)


KEYS = (
    [f"user.{i}.#" for i in range(7)]
    + [f"user.{i}" for i in range(3)]
    + ["user.#", "user", "#", "*.x", "user.*", "acct.%d.#", "acct.1.#", "acct.2.#", "acct.#"]
)


def run(seed, steps=1500, threshold=3, use_clock=True, inorder=False):
    rnd = random.Random(seed)
    clock = Clock()
    phys = Bindings()
    b = CompactingBindings(phys, threshold, clock=clock if use_clock else None, split_after=5)
    q = Q()
    b.attach(q)
    handles = {}  # key -> list of deferreds (one per holder)
    live = set()
    errors = []

    def cov(k, S):
        return k in S or "#" in S or (group_of(k) in S if group_of(k) else False)

    def on_fire(_, k):
        try:
            assert k in handles, ("fired for released key", k)
            assert cov(k, q.certain), ("fired early", seed, k, sorted(q.certain))
            live.add(k)
        except AssertionError as e:
            errors.append(e)

    def check_refs():
        exp = {}
        for k in b._refs:
            if group_of(k) is None:
                exp[k] = exp.get(k, 0) + 1
        for g in b._groups.values():
            assert g.held <= g.members, (seed, g)
            if g.state == SPLIT:
                assert g.held == g.members, (seed, g)
            if g.state == COMPACT:
                assert not g.held, (seed, g)
            if g.state == COMPACTING:
                pass
            for k in g.held:
                exp[k] = exp.get(k, 0) + 1
            if g.state != SPLIT:
                exp[g.key] = exp.get(g.key, 0) + 1
            assert g.members == {k for k in b._refs if group_of(k) == g.key}, (seed, g)
        assert phys._refs == exp, (seed, phys._refs, exp)
        assert set(b._refs) == set(handles)
        for k, n in b._refs.items():
            assert n == len(handles[k])

    for step in range(steps):
        r = rnd.random()
        if r < 0.3:
            k = rnd.choice(KEYS)
            hs = handles.setdefault(k, [])
            d = b.acquire(k)
            hs.append(d)
            d.addCallbacks(on_fire, lambda f: f.trap(CancelledError), callbackArgs=(k,))
        elif r < 0.52 and handles:
            k = rnd.choice(sorted(handles))
            d = handles[k].pop()
            if not handles[k]:
                del handles[k]
                live.discard(k)
            if not d.called:
                d.cancel()
            b.release(k)
        elif r < 0.93 and q.pending:
            i = 0 if inorder else rnd.randrange(len(q.pending))
            q.complete_one(i)
        elif r < 0.96:
            clock.advance(rnd.choice([1, 3, 6]))
        else:
            q.dead = True
            b.detach()
            live.clear()
            # broker: ready subs wait again
            for k in list(handles):
                for i, d in enumerate(handles[k]):
                    if d.called:
                        nd = b.wait(k)
                        nd.addCallbacks(
                            on_fire, lambda f: f.trap(CancelledError), callbackArgs=(k,)
                        )
                        handles[k][i] = nd
            if rnd.random() < 0.5:
                # ops of the dead channel fail later
                for _op, _key, d in q.pending:
                    d.errback(AMQPConnectionError("gone"))
                q.pending = []
            q = Q()
            b.attach(q).addErrback(lambda f: None)
        for k in live:
            assert k in handles
            assert cov(k, q.certain), (
                "uncovered live key",
                seed,
                step,
                k,
                sorted(q.certain),
                {g.key: g.state for g in b._groups.values()},
            )
        check_refs()
        assert not errors, errors
    # quiesce
    for _ in range(50):
        while q.pending:
            q.complete_one(0)
        clock.advance(10)
    check_refs()
    for k, ds in handles.items():
        for d in ds:
            assert d.called, (
                "never fired",
                seed,
                k,
                b._groups.get(group_of(k) or ""),
                phys.settled(k),
            )
    for g in b._groups.values():
        assert g.state in (SPLIT, COMPACT), (seed, g)
    for k in list(handles):
        for _d in handles.pop(k):
            b.release(k)
    for _ in range(50):
        while q.pending:
            q.complete_one(0)
        clock.advance(10)
    assert not b._refs and not b._groups and not b._waiters and not b._waiting_in, (
        seed,
        b._groups,
        b._waiters,
        b._waiting_in,
    )
    assert not phys._refs and not phys._waiters and not phys.bound and not q.certain, (
        seed,
        phys._refs,
        phys._waiters,
    )
    return b


@pytest.mark.parametrize("seed", range(15))
@pytest.mark.parametrize("use_clock", [True, False])
@pytest.mark.parametrize("inorder", [True, False])
@pytest.mark.parametrize("threshold", [4, 6, 8])
def test_fuzz(seed, use_clock, inorder, threshold):
    b = run(seed, use_clock=use_clock, inorder=inorder, threshold=threshold)
    assert b.compactions or threshold > 6  # the walks do compact
