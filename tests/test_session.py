"""The WAMP session state machine with a recording transport."""

from __future__ import annotations

from autobahn.wamp import message, role

from notifyd.bindings import Bindings
from notifyd.broker import Broker
from notifyd.router import Policy, PublishRejected, PublishUnavailable, Router
from notifyd.session import State, WampSession
from notifyd.testing import FakeBinder, FakePublisher, RecordingTransport


def setup(allow_anonymous=True, allow_publish=("chat.",), auto=True):
    bindings, ch = Bindings(), FakeBinder(auto=auto)
    bindings.attach(ch)
    pub = FakePublisher()
    router = Router(
        Broker(bindings), Policy(allow_anonymous=allow_anonymous, allow_publish=allow_publish), pub
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
    assert t.sent[-1].error == "wamp.error.not_authorized"
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
