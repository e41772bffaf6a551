"""Bad input has a defined behaviour, and one bad client never hurts another.

A healthy Autobahn|JS client stays subscribed while raw WebSocket peers send
malformed WAMP and the backend publishes invalid AMQP messages; it receives
every good event, in order."""

from __future__ import annotations

import json

import msgpack
import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.harness import RawWampPeer, hello, raw_peer, with_timeout

ABORT, WELCOME, ERROR, GOODBYE = 3, 2, 8, 6


@pytest_twisted.inlineCallbacks
def abort_reason(peer: RawWampPeer):
    """The ABORT the peer got, after the server closed the connection."""
    yield with_timeout(peer.closed)
    aborts = [m for m in peer.json_messages() if m[0] == ABORT]
    assert len(aborts) == 1, peer.received
    return aborts[0][2]


VIOLATIONS = [
    ("subscribe before welcome", None, [32, 1, {}, "invoice.sent"]),
    ("unknown message code", "hello", [99, 1, {}]),
    ("wrong field types", "hello", [32, "one", {}, "invoice.sent"]),
    ("bad match option", "hello", [32, 1, {"match": "regex"}, "invoice.sent"]),
    ("event from a client", "hello", [36, 1, 2, {}, []]),
    ("second hello", "hello", [1, "realm1", {"roles": {"subscriber": {}}}]),
    ("not a list", "hello", {"hello": 1}),
    ("empty list", "hello", []),
]


@pytest_twisted.inlineCallbacks
def test_malformed_wamp_gets_abort_and_healthy_client_carries_on(spawn, publisher):
    node = yield spawn.notifyd("--max-message-size", "4096")
    healthy = yield spawn.js(node.url, "msgpack")
    yield healthy.subscribe("inv", "invoice.", "prefix")
    publisher.publish("invoice.sent", {"seq": 0})
    yield healthy.wait_events("inv", 1)

    for name, before, msg in VIOLATIONS:
        peer = yield raw_peer(node.port)
        if before:
            w = yield hello(peer)
            assert w[0] == WELCOME, (name, w)
        peer.sendMessage(json.dumps(msg).encode())
        reason = yield abort_reason(peer)
        assert reason == "wamp.error.protocol_violation", name

    # garbage that is not JSON at all, and a binary frame on a JSON session
    for payload, binary in [(b"garbage{", False), (b"\x00\xff\x13junk", True)]:
        peer = yield raw_peer(node.port)
        yield hello(peer)
        peer.sendMessage(payload, isBinary=binary)
        assert (yield abort_reason(peer)) == "wamp.error.protocol_violation"

    # msgpack session: a text frame, and binary junk that is not a WAMP message
    for payload, binary in [(b"[1]", False), (b"\xc1\xc1\xc1", True)]:
        peer = yield raw_peer(node.port, ["wamp.2.msgpack"])
        peer.sendMessage(msgpack.packb([1, "realm1", {"roles": {"subscriber": {}}}]), isBinary=True)
        yield peer._w.wait(lambda p=peer: p.received)
        assert msgpack.unpackb(peer.received[0][0])[0] == WELCOME
        peer.sendMessage(payload, isBinary=binary)
        yield with_timeout(peer.closed)
        last = msgpack.unpackb(peer.received[-1][0])
        assert last[0] == ABORT and last[2] == "wamp.error.protocol_violation"

    # an oversized frame is refused by the WebSocket layer (1009)
    peer = yield raw_peer(node.port)
    yield hello(peer)
    peer.sendMessage(json.dumps([16, 1, {}, "invoice.x", ["x" * 8000]]).encode())
    yield with_timeout(peer.closed)
    assert peer.remote_close_code == 1009

    publisher.publish("invoice.paid", {"seq": 1})
    yield healthy.wait_events("inv", 2)
    assert [e["args"][0]["seq"] for e in healthy.events("inv")] == [0, 1]
    yield node.wait_count(r"protocol violation by", len(VIOLATIONS) + 4)
    assert node.count(r"protocol violation by") == len(VIOLATIONS) + 4
    assert node.count("Traceback") == 0


@pytest_twisted.inlineCallbacks
def test_errors_for_bad_requests(spawn):
    node = yield spawn.notifyd()
    peer = yield raw_peer(node.port)
    yield hello(peer)
    requests = [
        ([32, 10, {}, "bad topic"], "wamp.error.invalid_uri"),
        ([32, 11, {}, "a..b"], "wamp.error.invalid_uri"),
        ([32, 12, {}, "a.*.b"], "wamp.error.invalid_uri"),
        ([32, 13, {"match": "prefix"}, "a b."], "wamp.error.invalid_uri"),
        ([32, 14, {"match": "wildcard"}, ""], "wamp.error.invalid_uri"),
        ([16, 15, {"acknowledge": True}, "bad..topic", [1]], "wamp.error.invalid_uri"),
        ([16, 16, {"acknowledge": True}, "not.allowed", [1]], "wamp.error.not_authorized"),
        ([34, 17, 123456], "wamp.error.no_such_subscription"),
        ([48, 18, {}, "com.example.add", [1, 2]], "wamp.error.no_such_procedure"),
        ([64, 19, {}, "com.example.add"], "wamp.error.feature_not_supported"),
    ]
    for msg, _ in requests:
        peer.sendMessage(json.dumps(msg).encode())
    for msg, uri in requests:
        err = yield peer.wait_message(lambda m, r=msg[1]: m[0] == ERROR and m[2] == r)
        assert err[1] == msg[0] and err[4] == uri, (msg, err)
    # the session is still fine: GOODBYE gets GOODBYE back
    peer.sendMessage(json.dumps([GOODBYE, {}, "wamp.close.normal"]).encode())
    bye = yield peer.wait_message(lambda m: m[0] == GOODBYE)
    assert bye[2] == "wamp.close.goodbye_and_out"
    yield with_timeout(peer.closed)


@pytest_twisted.inlineCallbacks
def test_hello_refusals(spawn, rabbit, exchange):
    node = yield spawn.notifyd()
    peer = yield raw_peer(node.port)
    w = yield hello(peer, realm="nosuchrealm")
    assert w[0] == ABORT and w[2] == "wamp.error.no_such_realm"
    yield with_timeout(peer.closed)

    # anonymous access is off unless enabled
    from tests.harness import Notifyd

    closed = Notifyd(rabbit.url, exchange)
    closed.args.remove("--allow-anonymous")
    yield closed.start()
    try:
        peer = yield raw_peer(closed.port)
        w = yield hello(peer)
        assert w[0] == ABORT and w[2] == "wamp.error.not_authorized"
    finally:
        yield closed.signal()


@pytest_twisted.inlineCallbacks
def test_handshake_without_wamp_subprotocol_is_refused(spawn):
    node = yield spawn.notifyd()
    factory = WebSocketClientFactory(f"ws://127.0.0.1:{node.port}/ws", protocols=["mqtt"])
    factory.protocol = RawWampPeer
    proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory)
    with pytest.raises(ConnectionError):
        yield with_timeout(proto.opened)


@pytest_twisted.inlineCallbacks
def test_invalid_amqp_messages_are_dead_lettered(spawn, rabbit, publisher, exchange):
    dlx = exchange + "-dlx"
    ch = publisher.channel
    ch.exchange_declare(dlx, exchange_type="fanout")
    dead = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(dead, dlx)
    node = yield spawn.notifyd("--max-message-size", "2048", "--dead-letter-exchange", dlx)
    healthy = yield spawn.js(node.url, "cbor")
    yield healthy.subscribe("all", "", "prefix")

    publisher.publish("good.one", {"seq": 1})
    publisher.publish("bad.json", body=b"{not json")
    publisher.publish("bad.nan", body=b"[NaN]")
    publisher.publish("bad.big", {"blob": "x" * 4096})
    publisher.publish("bad.type", body=b"hello", content_type="text/plain")
    publisher.publish("bad.header", {"x": 1}, headers={"wamp-eligible": "12,abc"})
    publisher.publish("bad.envelope", [1], headers={"wamp-payload": "envelope"})
    publisher.publish("good.two", {"seq": 2}, message_id="m-2", type="demo", timestamp=1700000000)
    yield healthy.wait_events("all", 2)
    assert [e["args"][0]["seq"] for e in healthy.events("all")] == [1, 2]
    yield node.wait_count("rejected AMQP message on bad", 6)
    assert node.count("rejected AMQP message on bad") == 6

    # rejected without requeue: each one reached the dead-letter exchange
    # (dead-lettering is asynchronous inside RabbitMQ: wait for each one)
    got = []
    for method, _props, _body in ch.consume(dead, auto_ack=True, inactivity_timeout=30):
        assert method is not None, got
        got.append(method.routing_key)
        if len(got) == 6:
            break
    ch.cancel()
    assert sorted(got) == sorted(
        ["bad.json", "bad.nan", "bad.big", "bad.type", "bad.header", "bad.envelope"]
    )
    publisher.publish("good.three", {"seq": 3})
    yield healthy.wait_events("all", 3)
