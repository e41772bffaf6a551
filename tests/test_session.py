"""The WAMP session state machine with a recording transport."""

from __future__ import annotations

from autobahn.wamp import message, role

from notifyd.bindings import Bindings
from notifyd.node import make_router
from notifyd.router import Policy, PublishRejected, PublishUnavailable
from notifyd.session import State, WampSession
from notifyd.testing import FakeBinder, FakePublisher, RecordingTransport


def setup(allow_anonymous=True, allow_publish=("chat.",), auto=True):
    bindings, ch = Bindings(), FakeBinder(auto=auto)
    bindings.attach(ch)
    pub = FakePublisher()
    router = make_router(
        Policy(allow_anonymous=allow_anonymous, allow_publish=allow_publish),
        bindings=bindings,
        publisher=pub,
    )
    t = RecordingTransport()
    return WampSession(router, t), t, router, ch, pub


def join(s):
    s.on_message(message.Hello("realm1", {"subscriber": role.RoleSubscriberFeatures()}))


def test_hello_welcome_announces_broker_features():
    s, t, router, *_ = setup()
    join(s)
    w = t.sent[0]
    assert isinstance(w, message.Welcome) and w.session == s.session_id
    features = w.roles["broker"]
    assert features.pattern_based_subscription and features.publisher_exclusion
    assert features.subscriber_blackwhite_listing and features.publisher_identification
    assert features.subscription_meta_api and features.session_meta_api
    # history and retention are announced only with an event log
    assert not features.event_retention and not features.event_history
    assert router.sessions[s.session_id] is s and s.state is State.OPEN


def test_wrong_realm_and_anonymous_disabled_abort():
    s, t, *_ = setup()
    s.on_message(message.Hello("other", {"subscriber": role.RoleSubscriberFeatures()}))
    assert t.sent[0].reason == "wamp.error.no_such_realm" and t.closed
    s, t, *_ = setup(allow_anonymous=False)
    join(s)
    assert t.sent[0].reason == "wamp.error.not_authorized" and t.closed
    s, t, *_ = setup()
    s.on_message(
        message.Hello(
            "realm1", {"subscriber": role.RoleSubscriberFeatures()}, authmethods=["ticket"]
        )
    )
    assert t.sent[0].reason == "wamp.error.no_auth_method"


def test_messages_before_welcome_are_violations():
    s, t, *_ = setup()
    s.on_message(message.Subscribe(1, "a.b"))
    assert t.sent[0].reason == "wamp.error.protocol_violation" and t.closed
    assert s.state is State.CLOSED


def test_subscribed_only_after_binding():
    s, t, router, ch, _ = setup(auto=False)
    join(s)
    s.on_message(message.Subscribe(7, "invoice.", match="prefix"))
    assert len(t.sent) == 1
    ch.complete()
    sub = t.sent[1]
    assert isinstance(sub, message.Subscribed) and sub.request == 7


def test_goodbye_detaches_everything():
    s, t, router, ch, _ = setup()
    join(s)
    s.on_message(message.Subscribe(1, "a.b"))
    s.on_message(message.Goodbye())
    assert t.sent[-1].reason == "wamp.close.goodbye_and_out" and t.closed
    assert router.sessions == {} and router.broker.subscriptions() == []
    assert ("unbind", "a.b") in ch.ops


def test_router_shutdown_sends_goodbye_and_waits_for_reply():
    s, t, router, *_ = setup()
    join(s)
    s.shutdown()
    assert t.sent[-1].reason == "wamp.close.system_shutdown" and not t.closed
    s.on_message(message.Goodbye(reason="wamp.close.goodbye_and_out"))
    assert t.closed and len([m for m in t.sent if isinstance(m, message.Goodbye)]) == 1


def test_publish_acknowledged_and_refused():
    s, t, router, ch, pub = setup()
    join(s)
    s.on_message(message.Publish(1, "chat.room", args=["hi"], acknowledge=True))
    assert isinstance(t.sent[-1], message.Published) and pub.published[0].topic == "chat.room"
    s.on_message(message.Publish(2, "invoice.sent", args=["x"], acknowledge=True))
    assert t.sent[-1].error == "wamp.error.not_authorized"
    s.on_message(message.Publish(3, "wamp.session.on_join", args=["x"], acknowledge=True))
    assert t.sent[-1].error == "wamp.error.invalid_uri"  # reserved, as Crossbar answers
    n = len(t.sent)
    s.on_message(message.Publish(4, "invoice.sent", args=["x"]))  # no ack: no answer
    assert len(t.sent) == n
    pub.error = PublishRejected()
    s.on_message(message.Publish(5, "chat.x", args=[1], acknowledge=True))
    assert t.sent[-1].error == "notifyd.error.publish_rejected"
    pub.error = PublishUnavailable()
    s.on_message(message.Publish(6, "chat.x", args=[1], acknowledge=True))
    assert t.sent[-1].error == "notifyd.error.publish_unavailable"
    pub.error = None
    s.on_message(message.Publish(7, "chat.x", args=[1], eligible_authid=["bob"], acknowledge=True))
    assert isinstance(t.sent[-1], message.Published)
    # lists travel as comma-separated strings (streams drop array headers)
    assert pub.published[-1].headers["wamp-eligible-authid"] == "bob"
    s.on_message(message.Publish(8, "chat.x", payload=b"\x00", acknowledge=True))
    assert t.sent[-1].error == "wamp.error.invalid_argument"


def test_publish_headers_carry_options():
    s, t, router, ch, pub = setup()
    join(s)
    s.on_message(
        message.Publish(1, "chat.room", args=["hi"], exclude_me=False, eligible=[5], exclude=[6]),
        [16, 1, {"disclose_me": True}, "chat.room", ["hi"]],
    )
    h = pub.published[0].headers
    assert h["wamp-publisher"] == s.session_id and h["wamp-exclude-me"] is False
    assert h["wamp-eligible"] == "5" and h["wamp-exclude"] == "6" and h["wamp-disclose-me"] is True


def test_call_and_register_errors():
    s, t, *_ = setup()
    join(s)
    s.on_message(message.Call(3, "com.x"))
    assert t.sent[-1].error == "wamp.error.no_such_procedure" and t.sent[-1].request == 3
    s.on_message(message.Register(4, "com.x"))
    assert t.sent[-1].error == "wamp.error.feature_not_supported"


def test_router_only_messages_from_client_are_violations():
    s, t, *_ = setup()
    join(s)
    s.on_message(message.Event(1, 2, args=[]))
    assert t.sent[-1].reason == "wamp.error.protocol_violation" and t.closed


# -- kill orders, rate limits, the kill meta procedures ------------------------------------
def limited(limits=None, meta_roles=(), **kw):
    from twisted.internet.task import Clock

    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    clock = Clock()
    router = make_router(
        Policy(
            allow_anonymous=True,
            allow_publish=("chat.", "log."),
            limits=limits,
            meta_roles=meta_roles,
            **kw,
        ),
        bindings=bindings,
        publisher=FakePublisher(),
        clock=clock,
    )
    return router, clock


def joined(router, authid=None, authrole=None):
    t = RecordingTransport()
    s = WampSession(router, t)
    join(s)
    if authid is not None:
        s.authid = authid
    if authrole is not None:
        s.authrole = authrole
    return s, t


def test_kill_sends_goodbye_drops_subscriptions_and_closes():
    router, _ = limited()
    s, t = joined(router)
    s.on_message(message.Subscribe(1, "a.b"))
    s.kill("wamp.close.killed", "removed from account")
    bye = t.sent[-1]
    assert isinstance(bye, message.Goodbye)
    assert (bye.reason, bye.message) == ("wamp.close.killed", "removed from account")
    assert t.closed and s.state is State.CLOSED
    assert router.sessions == {} and router.broker.subscriptions() == []
    n = len(t.sent)
    s.kill("wamp.close.killed")  # a second order changes nothing
    assert len(t.sent) == n


def test_router_kill_selects_by_authid_and_broadcasts():
    from notifyd.revocation import KillOrder

    router, _ = limited()
    sent = []
    router.broadcast_kill = sent.append
    a1, t1 = joined(router, authid="alice")
    a2, t2 = joined(router, authid="alice")
    b, tb = joined(router, authid="bob")
    order = KillOrder(authid="alice", message="bye")
    assert sorted(router.kill(order)) == sorted([a1.session_id, a2.session_id])
    assert t1.closed and t2.closed and not tb.closed
    assert sent == [order] and list(router.sessions) == [b.session_id]


def test_subscribe_rate_limit():
    from notifyd.ratelimit import Limits

    router, clock = limited(Limits(subscribe_rate=1, subscribe_burst=3))
    s, t = joined(router)
    for i in range(1, 6):
        s.on_message(message.Subscribe(i, f"a.b{i}"))
    assert [type(m).__name__ for m in t.sent[1:]] == ["Subscribed"] * 3 + ["Error"] * 2
    assert t.sent[-1].error == "notifyd.error.rate_limited" and t.sent[-1].request == 5
    assert s.state is State.OPEN
    clock.advance(1)
    s.on_message(message.Subscribe(6, "a.b6"))
    assert isinstance(t.sent[-1], message.Subscribed)
    assert router.stats.count("rate_limited", "subscribe") == 2


def test_call_rate_limit():
    from notifyd.ratelimit import Limits

    router, clock = limited(Limits(call_rate=1, call_burst=2))
    s, t = joined(router)
    for i in range(1, 4):
        s.on_message(message.Call(i, "wamp.subscription.list"))
    assert [type(m).__name__ for m in t.sent[1:]] == ["Result", "Result", "Error"]
    assert t.sent[-1].error == "notifyd.error.rate_limited"


def test_publish_rate_limit_answers_only_with_acknowledge():
    from notifyd.ratelimit import Limits

    router, clock = limited(Limits(publish_rate=1, publish_burst=1))
    s, t = joined(router)
    s.on_message(message.Publish(1, "chat.x", args=[1], acknowledge=True))
    s.on_message(message.Publish(2, "chat.x", args=[1]))  # refused silently
    s.on_message(message.Publish(3, "chat.x", args=[1], acknowledge=True))
    assert isinstance(t.sent[1], message.Published)
    assert len(t.sent) == 3 and t.sent[2].error == "notifyd.error.rate_limited"
    assert len(router.publisher.published) == 1


def test_byte_budget_on_logged_topics():
    from types import SimpleNamespace

    from notifyd.ratelimit import Limits
    from notifyd.topics import PatternSet

    router, clock = limited(
        Limits(publish_log_rate=1000, publish_log_burst=4000), max_message_size=1024
    )
    router.history = SimpleNamespace(patterns=PatternSet(["log.#"]))
    s, t = joined(router)
    big = "x" * 900
    results = []
    for i in range(1, 7):
        s.on_message(message.Publish(i, "log.a", args=[big], acknowledge=True))
        results.append(type(t.sent[-1]).__name__)
    assert results[:4] == ["Published"] * 4 and results[-1] == "Error"
    assert t.sent[-1].error == "notifyd.error.rate_limited"
    # topics the log does not keep are not counted
    s.on_message(message.Publish(9, "chat.a", args=[big], acknowledge=True))
    assert isinstance(t.sent[-1], message.Published)
    clock.advance(1)
    s.on_message(message.Publish(10, "log.a", args=[big], acknowledge=True))
    assert isinstance(t.sent[-1], message.Published)


def call(s, t, procedure, *args, **kwargs):
    s.on_message(message.Call(len(t.sent) + 100, procedure, args=list(args), kwargs=kwargs))
    return t.sent[-1]


def test_meta_kill_procedures():
    router, _ = limited(meta_roles=("admin",))
    admin, ta = joined(router, authid="root", authrole="admin")
    admin2, ta2 = joined(router, authid="root", authrole="admin")
    alice, tal = joined(router, authid="alice", authrole="user")
    alice2, tal2 = joined(router, authid="alice", authrole="user")
    bob, tb = joined(router, authid="bob", authrole="user")
    # only meta roles may kill
    err = call(bob, tb, "wamp.session.kill", alice.session_id)
    assert err.error == "wamp.error.not_authorized" and not tal.closed
    err = call(bob, tb, "wamp.session.kill_by_authid", "alice")
    assert err.error == "wamp.error.not_authorized" and not tal.closed
    # not oneself, not a session that is not here
    assert call(admin, ta, "wamp.session.kill", admin.session_id).error == (
        "wamp.error.no_such_session"
    )
    assert call(admin, ta, "wamp.session.kill", 12345).error == "wamp.error.no_such_session"
    assert call(admin, ta, "wamp.session.kill", "x").error == "wamp.error.invalid_argument"
    bad = call(admin, ta, "wamp.session.kill", alice.session_id, reason="Not a URI")
    assert bad.error == "wamp.error.invalid_argument" and not tal.closed
    # kill one session: null, GOODBYE wamp.close.killed with the message
    res = call(admin, ta, "wamp.session.kill", alice.session_id, message="removed")
    assert isinstance(res, message.Result) and res.args == [None]
    assert tal.closed and tal.sent[-1].reason == "wamp.close.killed"
    assert tal.sent[-1].message == "removed" and not tal2.closed
    # by authid: the ids killed here; the caller is spared
    res = call(admin, ta, "wamp.session.kill_by_authid", "root", reason="com.example.bye")
    assert res.args == [[admin2.session_id]] and ta2.sent[-1].reason == "com.example.bye"
    assert not ta.closed
    res = call(admin, ta, "wamp.session.kill_by_authrole", "user")
    assert sorted(res.args[0]) == sorted([alice2.session_id, bob.session_id])
    assert tal2.closed and tb.closed and list(router.sessions) == [admin.session_id]
    assert call(admin, ta, "wamp.session.kill_by_authrole", "user").args == [[]]


def test_expensive_meta_calls_take_more_tokens():
    from notifyd import meta
    from notifyd.ratelimit import Limits

    router, clock = limited(Limits(call_rate=1, call_burst=10))
    s, t = joined(router)
    for i in range(1, 6):
        s.on_message(message.Subscribe(i, f"a.b{i}"))
    old = meta.SCAN_PER_TOKEN
    meta.SCAN_PER_TOKEN = 2  # 5 subscriptions: 2 more tokens a call
    try:
        res = [type(call(s, t, "wamp.subscription.list")).__name__ for _ in range(4)]
    finally:
        meta.SCAN_PER_TOKEN = old
    assert res == ["Result", "Result", "Result", "Error"]
    assert t.sent[-1].error == "notifyd.error.rate_limited"
