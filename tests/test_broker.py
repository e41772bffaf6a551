"""Broker state and fan-out, with fakes (no reactor, no network)."""

from __future__ import annotations

import itertools

from notifyd.bindings import Bindings
from notifyd.broker import Broker
from notifyd.events import InboundEvent
from notifyd.testing import FakeBinder


class Sess:
    def __init__(self, sid: int) -> None:
        self.session_id = sid
        self.got: list = []

    def send_event(self, event) -> None:
        self.got.append(event)


def make(auto=True):
    ids = itertools.count(100)
    bindings, ch = Bindings(), FakeBinder(auto=auto)
    bindings.attach(ch)
    return Broker(bindings, new_id=lambda: next(ids)), ch


def ev(topic, **kw):
    return InboundEvent(topic=topic, publication=1, args=[{"t": topic}], **kw)


def test_one_subscription_per_topic_and_match_shared_by_sessions():
    broker, _ = make()
    a, b = Sess(1), Sess(2)
    s1 = broker.subscribe(a, "invoice.sent", "exact").result
    s2 = broker.subscribe(b, "invoice.sent", "exact").result
    s3 = broker.subscribe(a, "invoice.sent", "prefix").result
    assert s1 is s2 and s1.id == 100 and s3.id == 101
    assert broker.subscribe(a, "invoice.sent", "exact").result is s1  # idempotent


def test_one_event_object_per_subscription():
    broker, _ = make()
    sessions = [Sess(i) for i in range(1, 6)]
    for s in sessions:
        broker.subscribe(s, "invoice.", "prefix")
    broker.subscribe(sessions[0], "invoice.sent", "exact")
    assert broker.dispatch(ev("invoice.sent")) == 6
    prefix_events = {id(s.got[-1]) for s in sessions[1:]}
    assert len(prefix_events) == 1  # the same message object for all
    exact_msg, prefix_msg = sessions[0].got
    assert exact_msg.topic is None and prefix_msg.topic == "invoice.sent"
    assert exact_msg.subscription != prefix_msg.subscription


def test_matching_policies():
    broker, _ = make()
    s = Sess(1)
    broker.subscribe(s, "a..c", "wildcard")
    broker.subscribe(s, "inv", "prefix")
    broker.subscribe(s, "x.y", "exact")
    for topic in ["a.b.c", "a.b", "a.b.c.d", "invoice.x", "inventory", "x.y", "x.y.z", "b.inv"]:
        broker.dispatch(ev(topic))
    assert [e.args[0]["t"] for e in s.got] == ["a.b.c", "invoice.x", "inventory", "x.y"]


def test_subscriber_joins_only_after_binding_confirmed():
    broker, ch = make(auto=False)
    s = Sess(1)
    d = broker.subscribe(s, "k", "exact")
    assert broker.dispatch(ev("k")) == 0 and not d.called
    ch.complete()
    assert d.called
    assert broker.dispatch(ev("k")) == 1


def test_unsubscribe_and_detach_release_bindings():
    broker, ch = make()
    a, b = Sess(1), Sess(2)
    sub = broker.subscribe(a, "k", "exact").result
    broker.subscribe(b, "k", "exact")
    broker.subscribe(a, "p.", "prefix")
    broker.unsubscribe(a, sub.id)
    assert ("unbind", "k") not in ch.ops
    assert broker.detach(b) == 1
    assert ("unbind", "k") in ch.ops
    assert broker.detach(a) == 1
    assert ("unbind", "p.#") in ch.ops
    assert broker.subscriptions() == [] and broker.bindings.wanted == frozenset()


def test_unsubscribe_unknown_raises():
    import pytest

    from notifyd.broker import NoSuchSubscription

    broker, _ = make()
    a, b = Sess(1), Sess(2)
    sub = broker.subscribe(a, "k", "exact").result
    with pytest.raises(NoSuchSubscription):
        broker.unsubscribe(b, sub.id)
    with pytest.raises(NoSuchSubscription):
        broker.unsubscribe(a, 999)


def test_session_closed_while_subscribe_pending():
    broker, ch = make(auto=False)
    s = Sess(1)
    d = broker.subscribe(s, "k", "exact")
    d.addErrback(lambda f: None)
    broker.detach(s)
    ch.complete()
    ch.complete()
    assert broker.subscriptions() == [] and ch.ops == [("bind", "k"), ("unbind", "k")]


def test_eligible_exclude_and_exclude_me():
    broker, _ = make()
    s = [Sess(i) for i in range(1, 5)]
    for x in s:
        broker.subscribe(x, "k", "exact")
    assert broker.dispatch(ev("k", eligible=frozenset({1, 2, 3}), exclude=frozenset({2}))) == 2
    assert [len(x.got) for x in s] == [1, 0, 1, 0]
    assert broker.dispatch(ev("k", publisher=4)) == 3  # exclude_me defaults to true
    assert broker.dispatch(ev("k", publisher=4, exclude_me=False)) == 4
    assert s[0].got[-1].publisher is None
    broker.dispatch(ev("k", publisher=4, disclose_me=True))
    assert s[0].got[-1].publisher == 4


def test_json_fast_path_equals_autobahns_serializer():
    import json as _json

    import pika
    from autobahn.wamp.serializer import JsonSerializer

    from notifyd.events import decode_delivery

    broker, _ = make()
    s = Sess(1)
    broker.subscribe(s, "inv", "prefix")
    bodies = [b'{"a": 1, "b": [1, 2.5, "\xc3\xa9"], "c": null}', b" 42 ", b'"\\u0000x"', b"[]"]
    for body in bodies:
        props = pika.BasicProperties(
            message_id="m",
            headers={"wamp-publisher": 7, "wamp-disclose-me": True, "wamp-exclude-me": False},
        )
        broker.dispatch(decode_delivery("invoice.sent", props, body, 1000))
        msg = s.got[-1]
        fast = msg.json_payload()
        slow, _ = JsonSerializer().serialize(msg.message())
        assert _json.loads(fast) == _json.loads(slow)
    # kwargs (envelope) events take the ordinary path
    props = pika.BasicProperties(headers={"wamp-payload": "envelope"})
    broker.dispatch(decode_delivery("invoice.x", props, b'{"args": [1], "kwargs": {"k": 2}}', 1000))
    assert s.got[-1].json_payload() is None


def test_after_the_channel_is_lost_subscribed_waits_for_the_rebind():
    broker, ch = make()
    a, b = Sess(1), Sess(2)
    broker.subscribe(a, "k", "exact")
    broker.bindings.detach()  # RabbitMQ went away
    d = broker.subscribe(b, "k", "exact")
    assert not d.called  # not before events can flow again
    assert broker.dispatch(ev("k")) == 0
    broker.bindings.attach(FakeBinder(auto=True))
    assert d.called
    assert broker.dispatch(ev("k")) == 2  # a kept its subscription, b joined
