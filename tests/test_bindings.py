"""Reference-counted bindings, with a fake channel (no reactor)."""

from __future__ import annotations

from notifyd.bindings import Bindings
from notifyd.testing import FakeBinder


def test_acquire_waits_for_bind_ok():
    b, ch = Bindings(), FakeBinder()
    b.attach(ch)
    d = b.acquire("invoice.sent")
    assert not d.called and ch.ops == [("bind", "invoice.sent")]
    ch.complete()
    assert d.called and b.bound == {"invoice.sent"}


def test_shared_key_binds_once_and_unbinds_after_last_release():
    b, ch = Bindings(), FakeBinder(auto=True)
    b.attach(ch)
    assert b.acquire("#").called
    assert b.acquire("#").called
    b.release("#")
    assert b.bound == {"#"}
    b.release("#")
    assert ch.ops == [("bind", "#"), ("unbind", "#")]
    assert b.bound == frozenset() and b.wanted == frozenset()


def test_release_while_binding_unbinds_after_bind_ok():
    b, ch = Bindings(), FakeBinder()
    b.attach(ch)
    d = b.acquire("k")
    b.release("k")
    d.cancel()
    ch.complete()
    assert ch.ops == [("bind", "k"), ("unbind", "k")]
    ch.complete()
    assert b.bound == frozenset()


def test_reacquire_while_unbinding_binds_again():
    b, ch = Bindings(), FakeBinder()
    b.attach(ch)
    b.acquire("k")
    ch.complete()
    b.release("k")
    d = b.acquire("k")
    assert not d.called
    ch.complete()  # unbind-ok
    assert ch.ops[-1] == ("bind", "k") and not d.called
    ch.complete()  # bind-ok
    assert d.called and b.bound == {"k"}


def test_detached_keys_are_counted_and_applied_on_attach():
    b = Bindings()
    d = b.acquire("a.b")
    b.acquire("c.#")
    assert not d.called
    ch = FakeBinder()
    all_bound = b.attach(ch)
    assert sorted(ch.ops) == [("bind", "a.b"), ("bind", "c.#")]
    ch.complete()
    assert d.called and all_bound.called


def test_reconnect_rebinds_everything_and_ignores_stale_results():
    b, old = Bindings(), FakeBinder()
    b.attach(old)
    b.acquire("k")
    b.detach()  # connection lost before bind-ok
    new = FakeBinder(auto=True)
    b.attach(new)
    assert new.ops == [("bind", "k")] and b.bound == {"k"}
    old.complete()  # a late answer on the dead channel changes nothing
    assert b.bound == {"k"} and new.ops == [("bind", "k")]


def test_attach_finishes_when_a_key_is_released_during_the_rebind():
    b = Bindings()
    b.acquire("k").addErrback(lambda f: None)
    ch = FakeBinder()
    attached = b.attach(ch)
    b.release("k")  # the last subscriber left before bind-ok
    ch.complete()  # bind-ok, then the unbind is issued
    ch.complete()
    assert attached.called and b.bound == frozenset()


def test_attach_fails_when_a_bind_fails_so_the_caller_reconnects():
    from twisted.internet.defer import Deferred

    b = Bindings()
    b.acquire("k")
    failing = FakeBinder()
    attached = b.attach(failing)
    errors = []
    attached.addErrback(errors.append)
    op, key, d = failing.pending.pop()
    d.errback(ConnectionError("channel closed"))
    assert errors and errors[0].check(ConnectionError)
    assert isinstance(attached, Deferred)


def test_detach_while_attaching_fails_the_attach():
    b = Bindings()
    b.acquire("k")
    attached = b.attach(FakeBinder())
    errors = []
    attached.addErrback(errors.append)
    b.detach()
    assert errors


def test_binding_changes_are_debug_lines_summed_up_once_per_interval():
    from twisted.logger import globalLogPublisher

    from notifyd.bindings import SUMMARY_INTERVAL
    from notifyd.logs import Logger

    now = [1000.0]
    lines: list[dict] = []
    globalLogPublisher.addObserver(lines.append)
    try:
        b, ch = Bindings(clock=lambda: now[0]), FakeBinder(auto=True)
        b.attach(ch)
        for i in range(100):
            b.acquire(f"user.{i}")
        now[0] += SUMMARY_INTERVAL
        for i in range(50):
            b.release(f"user.{i}")
    finally:
        globalLogPublisher.removeObserver(lines.append)
    mine = [e for e in lines if e.get("log_namespace", "").startswith("notifyd.bindings")]
    summaries = [e for e in mine if "since the last summary" in e["log_format"]]
    assert Logger.level.name == "info"
    # 150 changes: no line each at the default level, two summaries
    assert not [e for e in mine if "AMQP binding added" in e["log_format"]]
    assert [(e["added"], e["removed"]) for e in summaries] == [(1, 0), (99, 1)]
    assert b.added == 100 and b.removed == 50
