"""End to end: real RabbitMQ, real notifyd, real clients (Autobahn|JS on Node
with each serializer, and autobahn-python) get exactly the events their exact,
prefix and wildcard subscriptions match."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.types import ComponentConfig, SubscribeOptions
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.harness import with_timeout

# (tag, topic, match) -> the published topics it must receive, in order
SUBSCRIPTIONS = [
    ("exact", "invoice.sent", "exact"),
    ("prefix_dot", "invoice.", "prefix"),
    ("prefix_str", "inv", "prefix"),
    ("wild", "client..created", "wildcard"),
    ("end", "zz.end", "exact"),
]
PUBLISHED = [
    "invoice.sent",
    "invoice.paid",
    "inventory.low",
    "invoices.archived",
    "invoice",
    "client.acme.created",
    "client.created",
    "client.acme.x.created",
    "other.thing",
    "invoice.sent",
    "zz.end",
]


def expected(topic: str, match: str) -> list[int]:
    from notifyd.topics import matches

    return [i for i, t in enumerate(PUBLISHED) if matches(topic, match, t)]


def publish_all(publisher: Any) -> None:
    for i, topic in enumerate(PUBLISHED):
        publisher.publish(topic, {"seq": i, "topic": topic})


@pytest.mark.parametrize("serializer", ["json", "msgpack", "cbor"])
@pytest_twisted.inlineCallbacks
def test_autobahn_js_gets_exactly_its_events(spawn, publisher, serializer):
    node = yield spawn.notifyd()
    client = yield spawn.js(node.url, serializer)
    for tag, topic, match in SUBSCRIPTIONS:
        r = yield client.subscribe(tag, topic, match)
        assert r["ev"] == "subscribed", r
    publish_all(publisher)
    yield client.wait_events("end", 1)
    for tag, topic, match in SUBSCRIPTIONS:
        got = [e["args"][0]["seq"] for e in client.events(tag)]
        assert got == expected(topic, match), (tag, got)
        for e in client.events(tag):
            want_topic = PUBLISHED[e["args"][0]["seq"]]
            # details.topic is carried on pattern subscriptions
            if match != "exact":
                assert e["topic"] == want_topic
    # prefix "inv" is a string prefix: invoices.archived and inventory.low too
    assert [PUBLISHED[s["args"][0]["seq"]] for s in client.events("prefix_str")] == [
        "invoice.sent",
        "invoice.paid",
        "inventory.low",
        "invoices.archived",
        "invoice",
        "invoice.sent",
    ]
    yield client.exit()


class _Recorder(ApplicationSession):
    def __init__(self, config: ComponentConfig, joined: Deferred, events: dict) -> None:
        super().__init__(config)
        self._joined = joined
        self._events = events

    async def onJoin(self, details: Any) -> None:
        for tag, topic, match in SUBSCRIPTIONS:

            def handler(value: Any, details: Any = None, tag: str = tag) -> None:
                self._events.setdefault(tag, []).append((value, details))
                if tag == "end":
                    self._events["done"].callback(None)

            await self.subscribe(
                handler, topic, options=SubscribeOptions(match=match, details=True)
            )
        self._joined.callback(self)


@pytest_twisted.inlineCallbacks
def test_autobahn_python_gets_exactly_its_events(spawn, publisher):
    node = yield spawn.notifyd()
    joined: Deferred = Deferred()
    events: dict = {"done": Deferred()}
    factory = WampWebSocketClientFactory(
        lambda: _Recorder(ComponentConfig("realm1"), joined, events), url=node.url
    )
    proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory)
    session = yield with_timeout(joined)
    assert proto._serializer.SERIALIZER_ID.startswith("cbor")
    publish_all(publisher)
    yield with_timeout(events["done"])
    for tag, topic, match in SUBSCRIPTIONS:
        got = [value["seq"] for value, _ in events.get(tag, [])]
        assert got == expected(topic, match), (tag, got)
        if match != "exact":
            assert all(d.topic == PUBLISHED[v["seq"]] for v, d in events[tag])
    session.leave()


@pytest_twisted.inlineCallbacks
def test_autobahn_js_gets_specific_errors(spawn):
    node = yield spawn.notifyd()
    client = yield spawn.js(node.url, "msgpack")
    r = yield client.subscribe("bad", "bad topic")
    assert r["ev"] == "error" and r["error"] == "wamp.error.invalid_uri"
    r = yield client.subscribe("star", "invoice.*", "exact")
    assert r["ev"] == "error" and r["error"] == "wamp.error.invalid_uri"
    client.send(
        op="publish", tag="p", topic="invoice.sent", args=[1], options={"acknowledge": True}
    )
    r = yield client.wait_report(lambda r: r.get("tag") == "p")
    assert r["ev"] == "error" and r["error"] == "wamp.error.not_authorized"
    r = yield client.subscribe("ok", "invoice.sent")  # the session carries on
    assert r["ev"] == "subscribed"
