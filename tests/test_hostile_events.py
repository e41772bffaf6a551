"""Hostile tenants, the event side (issue 11, findings 1-3): topics that are
not valid text, targeting headers RabbitMQ streams would drop, payloads that
cannot be carried to every client.  Real RabbitMQ, real notifyd, Autobahn|JS
(json and msgpack) and raw WebSocket peers."""

from __future__ import annotations

import json
import os
from typing import Any

import pika
import pytest_twisted
from twisted.internet import threads

from tests.harness import hello, raw_peer, unique, with_timeout
from tests.test_history import history_args, stream  # noqa: F401


def close_amqp_connection(rabbit: Any, node: Any) -> Any:
    """Make RabbitMQ drop ``node``'s connection (notifyd then reconnects)."""

    def run() -> None:
        out = rabbit.ctl("list_connections", "pid", "client_properties")
        mine = f"notifyd@{os.uname().nodename}:{node.transport.pid}"
        pids = [line.split()[0] for line in out.splitlines() if mine in line]
        assert pids, out
        for pid in pids:
            rabbit.ctl("close_connection", pid, "test: reconnect")

    return threads.deferToThread(run)


def dead_letters(rabbit: Any, dlx: str) -> Any:
    """An exclusive queue on fanout exchange ``dlx``; returns (conn, channel, queue)."""
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    ch = conn.channel()
    ch.exchange_declare(dlx, exchange_type="fanout")
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, dlx)
    return conn, ch, queue


def wait_dead(ch: Any, queue: str, n: int) -> Any:
    def run() -> list[str]:
        got: list[str] = []
        for method, _props, _body in ch.consume(queue, auto_ack=True, inactivity_timeout=30):
            assert method is not None, got
            got.append(method.routing_key)
            if len(got) == n:
                break
        ch.cancel()
        return got

    return threads.deferToThread(run)


@pytest_twisted.inlineCallbacks
def test_a_lone_surrogate_topic_is_refused_and_cannot_stall_the_node(spawn, rabbit, publisher):
    """Finding 1: SUBSCRIBE to "acct.42.\\ud800" is answered with invalid_uri
    and, after an AMQP reconnect, the node re-binds everyone else and is
    ready again."""
    node = yield spawn.notifyd("--amqp-max-retry-delay", "1")
    good = yield spawn.js(node.url)
    yield good.subscribe("s", "invoice.sent")
    peer = yield raw_peer(node.port)
    welcome = yield hello(peer)
    assert welcome[0] == 2
    for match in ("exact", "prefix", "wildcard"):
        # the JSON text escape, as a browser would send it
        peer.sendMessage(
            b'[32, 7, {"match": "%s"}, "acct.42.\\ud800"]' % match.encode(), isBinary=False
        )
        err = yield peer.wait_message(lambda m: m[0] == 8 and m[2] == 7)
        assert err[4] == "wamp.error.invalid_uri", err
        peer.received.clear()
    for topic in ("acct.\x1b[31m", "acct.\u202eevil", "acct.a\u200bb"):
        peer.sendMessage(json.dumps([32, 8, {}, topic]).encode(), isBinary=False)
        err = yield peer.wait_message(lambda m: m[0] == 8 and m[2] == 8)
        assert err[4] == "wamp.error.invalid_uri", (topic, err)
        peer.received.clear()

    mark = len(node.lines)
    yield close_amqp_connection(rabbit, node)
    yield node.wait_line(r"notifyd ready", start=mark, timeout=60)
    assert not [line for line in node.lines[mark:] if "set-up failed" in line]
    publisher.publish("invoice.sent", {"seq": 1})
    yield good.wait_events("s", 1)


@pytest_twisted.inlineCallbacks
def test_targeted_events_on_logged_topics_never_widen(spawn, rabbit, publisher, stream):  # noqa: F811
    """Finding 2: targeting headers RabbitMQ streams drop (arrays, tables)
    never make a logged event reach everyone: not live from the log, not by
    get_events, not by resume.  They are dead-lettered, like bad bodies."""
    dlx = unique("dlx")
    conn, ch, dead = dead_letters(rabbit, dlx)
    node = yield spawn.notifyd(
        *history_args(stream, "--meta-api-roles", "anonymous"), "--dead-letter-exchange", dlx
    )
    watcher = yield spawn.js(node.url)
    r = yield watcher.subscribe("s", "invoice.", "prefix")
    assert r["ev"] == "subscribed"
    publisher.publish("invoice.sent", {"seq": 0})
    yield watcher.wait_events("s", 1)
    start = watcher.events("s")[0]["publication"]
    for value in (["alice"], {"id": "alice"}, [["alice"]]):
        publisher.publish("invoice.sent", {"leak": True}, headers={"wamp-eligible-authid": value})
        publisher.publish("invoice.sent", {"leak": True}, headers={"wamp-eligible": value})
    publisher.publish("invoice.paid", {"leak": True}, headers={"wamp-eligible-authrole": ["x"]})
    # bodies the live path rejects are not logged either
    publisher.publish("invoice.bad", body=b"{not json")
    publisher.publish("invoice.bad", body=b"[1e999]")
    publisher.publish("invoice.sent", {"seq": 1})
    yield watcher.wait_events("s", 2)
    got = yield wait_dead(ch, dead, 9)
    conn.close()
    assert len(got) == 9
    assert [e["args"][0] for e in watcher.events("s")] == [{"seq": 0}, {"seq": 1}]

    r = yield watcher.call("ge", "wamp.subscription.get_events", r["id"], 100)
    assert r["ev"] == "result", r
    assert [e["args"][0] for e in r["value"]] == [{"seq": 0}, {"seq": 1}]
    again = yield spawn.js(node.url)
    r = yield again.subscribe("s", "invoice.", "prefix", options={"_resume_after": start - 1})
    assert r["ev"] == "subscribed", r
    yield again.wait_events("s", 2)
    publisher.publish("invoice.sent", {"seq": 2})
    yield again.wait_events("s", 3)
    assert [e["args"][0] for e in again.events("s")] == [{"seq": 0}, {"seq": 1}, {"seq": 2}]


@pytest_twisted.inlineCallbacks
def test_a_deep_publish_is_refused_and_the_log_stays_readable(spawn, publisher, stream):  # noqa: F811
    """Finding 3: a msgpack PUBLISH nested ~960 deep is refused with
    invalid_argument; resume and get_events across the log keep working."""
    node = yield spawn.notifyd(
        *history_args(stream, "--meta-api-roles", "anonymous"), "--allow-publish", "invoice."
    )
    client = yield spawn.js(node.url, "msgpack")
    r = yield client.subscribe("s", "invoice.", "prefix")
    assert r["ev"] == "subscribed"
    publisher.publish("invoice.sent", {"seq": 0})
    yield client.wait_events("s", 1)
    start = client.events("s")[0]["publication"]
    deep = "[" * 960 + "]" * 960  # too deep for Python's json to write
    client.transport.write(
        b'{"op": "publish", "tag": "deep", "topic": "invoice.deep", "args": [%s], '
        b'"options": {"acknowledge": true, "exclude_me": false}}\n' % deep.encode()
    )
    r = yield client.wait_report(lambda r: r.get("tag") == "deep")
    assert r["ev"] == "error" and r["error"] == "wamp.error.invalid_argument", r
    publisher.publish("invoice.sent", {"seq": 1})
    yield client.wait_events("s", 2)
    again = yield spawn.js(node.url, "msgpack")
    r = yield again.subscribe("s", "invoice.", "prefix", options={"_resume_after": start - 1})
    assert r["ev"] == "subscribed", r
    yield again.wait_events("s", 2)
    r = yield again.call("ge", "wamp.subscription.get_events", r["id"], 10)
    assert r["ev"] == "result", r
    assert [e["args"][0]["seq"] for e in r["value"]] == [0, 1]
    assert not [x for x in again.reports + client.reports if x["ev"] == "close"]


@pytest_twisted.inlineCallbacks
def test_bodies_every_client_cannot_read_are_dead_lettered(spawn, rabbit, publisher):
    """1e999, nesting past what Autobahn|JS's msgpack reads, lone surrogates,
    integers msgpack cannot carry and a routing key that is not UTF-8 never
    reach a client; json and msgpack clients on Node keep receiving."""
    dlx = unique("dlx")
    conn, ch, dead = dead_letters(rabbit, dlx)
    node = yield spawn.notifyd("--dead-letter-exchange", dlx)
    clients = []
    for ser in ("json", "msgpack"):
        c = yield spawn.js(node.url, ser)
        yield c.subscribe("all", "", "prefix")
        clients.append(c)
    bad = [
        b"1e999",
        b'{"x": -1e999}',
        b"[" * 101 + b"]" * 101,
        b'{"a":' * 99 + b"1" + b"}" * 99,
        b'"\\ud800"',
        b"18446744073709551616",
        b"[9007199254740993]",  # a BigInt for msgpack and CBOR clients
    ]
    for i, body in enumerate(bad):
        publisher.publish("invoice.bad", body=body)
        publisher.publish("invoice.good", {"seq": i})
    publisher.channel.basic_publish(
        publisher.exchange, b"invoice.\xff\xfe", b"{}", pika.BasicProperties()
    )
    publisher.publish("invoice.good", {"seq": len(bad)})
    for c in clients:
        yield c.wait_events("all", len(bad) + 1)
        got = [e["args"][0]["seq"] for e in c.events("all")]
        assert got == list(range(len(bad) + 1)), (c.serializer, got)
    yield with_timeout(wait_dead(ch, dead, len(bad) + 1), 60)
    conn.close()
    for c in clients:
        assert not [r for r in c.reports if r["ev"] == "close"]


@pytest_twisted.inlineCallbacks
def test_a_kill_order_on_the_control_exchange_ends_sessions_on_every_node(spawn, publisher):
    """Finding 8: the backend ends a user's sessions at once, on every node,
    with one message; a malformed order ends nobody."""
    a = yield spawn.notifyd()
    b = yield spawn.notifyd()
    victims = [(yield spawn.js(a.url)), (yield spawn.js(b.url, "msgpack"))]
    bystander = yield spawn.js(b.url)
    yield bystander.subscribe("s", "invoice.sent")
    control = publisher.exchange + ".control"
    bad = [b"{not json", b'{"kill": {}}', b'{"kill": {"authid": "x", "authrole": "y"}}']
    for body in bad:
        publisher.channel.basic_publish(control, "", body)
    yield a.wait_count("refused control message", len(bad))
    yield b.wait_count("refused control message", len(bad))
    for victim in victims:
        order = {"kill": {"session": victim.session}, "message": "removed from account"}
        publisher.channel.basic_publish(control, "", json.dumps(order).encode())
    for victim in victims:
        r = yield victim.wait_report(lambda r: r["ev"] == "close")
        assert r["details"]["reason"] == "wamp.close.killed", r
    publisher.publish("invoice.sent", {"seq": 1})
    yield bystander.wait_events("s", 1)
    assert not [r for r in bystander.reports if r["ev"] == "close"]
