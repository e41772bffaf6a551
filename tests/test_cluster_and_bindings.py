"""The per-node queue design: each node binds only what its sessions need,
bindings follow subscriptions on the broker, and two nodes on one RabbitMQ
deliver each event exactly once to each entitled client."""

from __future__ import annotations

import json
import re
import urllib.request

import pytest_twisted
from twisted.internet.threads import deferToThread


def bindings_of(rabbit, queue: str) -> set[str]:
    out = rabbit.ctl(
        "list_bindings",
        "-q",
        "--formatter",
        "json",
        "source_name",
        "destination_name",
        "routing_key",
    )
    return {
        b["routing_key"]
        for b in json.loads(out)
        # the default exchange's and the control exchange's bindings are not
        # subscriptions
        if b["destination_name"] == queue
        and b["source_name"]
        and not b["source_name"].endswith(".control")
    }


ADMIN = ("--admin-listen", "tcp:0:interface=127.0.0.1")


def status(node) -> dict:
    """The admin endpoint's /readyz (the public one says only ready or not)."""
    port = next(
        m.group(1)
        for m in map(re.compile(r"admin listening on 127\.0\.0\.1:(\d+)").search, node.lines)
        if m
    )
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as r:
        return json.loads(r.read())


@pytest_twisted.inlineCallbacks
def test_two_nodes_each_client_gets_exactly_its_events(spawn, publisher, rabbit):
    a = yield spawn.notifyd(*ADMIN)
    b = yield spawn.notifyd(*ADMIN)
    ca = yield spawn.js(a.url, "json")
    cb = yield spawn.js(b.url, "msgpack")
    cb2 = yield spawn.js(b.url, "cbor")
    yield ca.subscribe("inv", "invoice.", "prefix")
    yield ca.subscribe("end", "end")
    yield cb.subscribe("inv", "invoice.sent")
    yield cb.subscribe("cli", "client..created", "wildcard")
    yield cb.subscribe("end", "end")
    yield cb2.subscribe("inv", "invoice.sent")
    yield cb2.subscribe("end", "end")
    topics = ["invoice.sent", "client.x.created", "invoice.paid", "noise.a", "invoice.sent"] * 20
    for i, t in enumerate(topics):
        publisher.publish(t, {"seq": i})
    publisher.publish("end", {"seq": -1})
    for c in (ca, cb, cb2):
        yield c.wait_events("end", 1)

    def seqs(c, tag):
        return [e["args"][0]["seq"] for e in c.events(tag)]

    assert seqs(ca, "inv") == [i for i, t in enumerate(topics) if t.startswith("invoice.")]
    assert seqs(ca, "cli") == []
    assert seqs(cb, "inv") == [i for i, t in enumerate(topics) if t == "invoice.sent"]
    assert seqs(cb2, "inv") == seqs(cb, "inv")
    assert seqs(cb, "cli") == [i for i, t in enumerate(topics) if t == "client.x.created"]
    # RabbitMQ did the filtering: each node's queue holds only its own bindings
    qa, qb = status(a)["queue"], status(b)["queue"]
    assert qa != qb
    assert (yield deferToThread(bindings_of, rabbit, qa)) == {"invoice.#", "end"}
    assert (yield deferToThread(bindings_of, rabbit, qb)) == {
        "invoice.sent",
        "client.*.created",
        "end",
    }


@pytest_twisted.inlineCallbacks
def test_bindings_follow_subscriptions(spawn, rabbit):
    node = yield spawn.notifyd(*ADMIN, "--log-level", "debug")
    queue = status(node)["queue"]
    c1 = yield spawn.js(node.url)
    c2 = yield spawn.js(node.url)
    r1 = yield c1.subscribe("s", "invoice.sent")
    r2 = yield c2.subscribe("s", "invoice.sent")
    # one subscription id per (topic, match), shared by its subscribers
    assert r1["id"] == r2["id"]
    yield c1.subscribe("p", "acct.42.inv", "prefix")
    yield c1.subscribe("w", "a..c", "wildcard")
    assert (yield deferToThread(bindings_of, rabbit, queue)) == {
        "invoice.sent",
        "acct.42.#",
        "a.*.c",
    }
    assert status(node)["subscriptions"] == 3

    mark = len(node.lines)
    c1.send(op="unsubscribe", tag="p")
    yield c1.wait_report(lambda r: r["ev"] == "unsubscribed" and r["tag"] == "p")
    yield node.wait_line(r"AMQP binding removed: acct\.42\.#", start=mark)
    assert (yield deferToThread(bindings_of, rabbit, queue)) == {"invoice.sent", "a.*.c"}

    # c1 goes away without unsubscribing: its wildcard binding goes, the shared
    # exact one stays for c2
    mark = len(node.lines)
    c1.transport.signalProcess("KILL")
    yield node.wait_line(r"AMQP binding removed: a\.\*\.c", start=mark)
    assert (yield deferToThread(bindings_of, rabbit, queue)) == {"invoice.sent"}

    mark = len(node.lines)
    yield c2.exit()
    yield node.wait_line(r"AMQP binding removed: invoice\.sent", start=mark)
    assert (yield deferToThread(bindings_of, rabbit, queue)) == set()
    assert status(node)["subscriptions"] == 0
    assert status(node)["sessions"] == 0


@pytest_twisted.inlineCallbacks
def test_existing_exchange_used_passively_and_amqp_details(spawn, publisher):
    from tests.harness import hello, raw_peer

    # the publisher fixture declared the exchange; notifyd only checks it
    node = yield spawn.notifyd("--exchange-passive")
    peer = yield raw_peer(node.port)
    yield hello(peer)
    peer.sendMessage(json.dumps([32, 1, {"match": "prefix"}, "invoice."]).encode())
    sub = yield peer.wait_message(lambda m: m[0] == 33)
    publisher.publish(
        "invoice.sent",
        {"n": 1},
        message_id="m-1",
        timestamp=1700000000,
        type="InvoiceSent",
        app_id="billing",
    )
    event = yield peer.wait_message(lambda m: m[0] == 36)
    assert event[1] == sub[2]
    assert event[3] == {
        "topic": "invoice.sent",
        "x_message_id": "m-1",
        "x_timestamp": 1700000000,
        "x_type": "InvoiceSent",
        "x_app_id": "billing",
    }
    assert event[4] == [{"n": 1}]


@pytest_twisted.inlineCallbacks
def test_missing_exchange_in_passive_mode_is_reported(rabbit):
    from tests.harness import Notifyd, unique

    node = Notifyd(rabbit.url, unique("absent"), "--exchange-passive")
    from twisted.internet import reactor

    reactor.spawnProcess(node, node.args[0], node.args, env=node.env)
    try:
        # one clear line per retry, naming the setting; no tracebacks (the
        # automat NoTransition of ClientService included)
        yield node.wait_count(
            r"RabbitMQ refused notifyd's set-up: exchange .* does not exist "
            r"\(NOT_FOUND - no exchange .*\); create it, or unset exchange_passive; retrying",
            2,
        )
        assert not [line for line in node.lines if "Traceback" in line or "NoTransition" in line]
    finally:
        yield node.signal("KILL")


@pytest_twisted.inlineCallbacks
def test_an_exchange_with_other_properties_is_one_clear_line_per_retry(rabbit):
    """An existing non-durable exchange of the same name: RabbitMQ refuses the
    declare (406); notifyd says what to change, once per retry, with backoff
    and without tracebacks."""
    import pika

    from tests.harness import Notifyd, unique

    name = unique("transient")
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    conn.channel().exchange_declare(name, exchange_type="topic", durable=False)
    node = Notifyd(rabbit.url, name, "--amqp-max-retry-delay", "1")
    from twisted.internet import reactor

    reactor.spawnProcess(node, node.args[0], node.args, env=node.env)
    try:
        yield node.wait_count(
            r"RabbitMQ refused notifyd's set-up: exchange .* exists with other properties "
            r".*PRECONDITION_FAILED.*set exchange_passive = true",
            3,
        )
        assert not [line for line in node.lines if "Traceback" in line or "NoTransition" in line]
    finally:
        yield node.signal("KILL")
        conn.channel().exchange_delete(name)
        conn.close()
