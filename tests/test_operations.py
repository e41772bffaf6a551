"""Operations against a real notifyd and RabbitMQ: metrics and readiness,
the admin endpoint, JSON logs, limits, slow clients and graceful shutdown."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.threads import deferToThread

from tests.harness import AmqpPublisher, hello, raw_peer, with_timeout


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def metrics(port: int) -> dict:
    status, body = get(port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def m(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest_twisted.inlineCallbacks
def test_metrics_move_as_events_flow(spawn, publisher):
    node = yield spawn.notifyd("--max-message-size", "4096")
    before = yield deferToThread(metrics, node.port)
    assert m(before, "notifyd_amqp_ready") == 1
    assert m(before, "notifyd_events_received_total") == 0
    a = yield spawn.js(node.url, "json")
    b = yield spawn.js(node.url, "msgpack")
    yield a.subscribe("p", "invoice.", "prefix")
    yield b.subscribe("e", "invoice.sent")
    yield b.subscribe("w", "invoice..x", "wildcard")
    publisher.publish("invoice.sent", body=b"not json")  # first: handled before the good ones
    for i in range(10):
        publisher.publish("invoice.sent", {"i": i})
    yield a.wait_events("p", 10)
    yield b.wait_events("e", 10)
    after = yield deferToThread(metrics, node.port)
    assert m(after, "notifyd_events_received_total") == 10
    assert m(after, "notifyd_events_delivered_total") == 20
    assert m(after, "notifyd_amqp_rejected_total", reason="bad_json") == 1
    assert m(after, "notifyd_sessions", serializer="json") == 1
    assert m(after, "notifyd_sessions", serializer="msgpack") == 1
    assert m(after, "notifyd_connections", serializer="msgpack") == 1
    assert m(after, "notifyd_subscriptions", match="prefix") == 1
    assert m(after, "notifyd_subscriptions", match="exact") == 1
    assert m(after, "notifyd_subscriptions", match="wildcard") == 1
    assert m(after, "notifyd_amqp_bindings") == 3
    assert (
        m(after, "notifyd_delivery_latency_seconds_count") == 10
    )  # rejected ones are not deliveries
    assert m(after, "notifyd_sessions_opened_total") == 2


@pytest_twisted.inlineCallbacks
def test_readyz_follows_rabbitmq_and_admin_endpoint(spawn, rabbit, exchange):
    node = yield spawn.notifyd(
        "--admin-listen", "tcp:0:interface=127.0.0.1", "--amqp-max-retry-delay", "1"
    )
    admin = int((yield node.wait_line(r"admin listening on 127\.0\.0\.1:(\d+)")).group(1))
    # the admin endpoints moved off the public port
    assert (yield deferToThread(get, node.port, "/metrics"))[0] == 404
    assert (yield deferToThread(get, admin, "/healthz")) == (200, b"ok\n")
    status, body = yield deferToThread(get, admin, "/readyz")
    assert status == 200 and json.loads(body)["amqp"] == "consuming"

    mark = len(node.lines)
    yield deferToThread(rabbit.stop)
    yield node.wait_line(r"lost the RabbitMQ connection", start=mark)
    status, body = yield deferToThread(get, admin, "/readyz")
    assert status == 503 and json.loads(body)["ready"] is False
    assert (yield deferToThread(get, admin, "/healthz"))[0] == 200
    yield deferToThread(rabbit.start)
    yield node.wait_line(r"notifyd ready", start=mark, timeout=60)
    assert (yield deferToThread(get, admin, "/readyz"))[0] == 200
    values = yield deferToThread(metrics, admin)
    assert m(values, "notifyd_amqp_reconnects_total") == 1


@pytest_twisted.inlineCallbacks
def test_json_logs(spawn, publisher):
    node = yield spawn.notifyd("--log-format", "json")
    client = yield spawn.js(node.url)
    yield client.subscribe("s", "a.b")
    publisher.publish("a.b", body=b"{broken")
    yield node.wait_line(r"rejected AMQP message on a\.b")
    records = [json.loads(line) for line in node.lines if line.strip()]
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
    rejected = [r for r in records if "rejected AMQP message" in r["message"]][0]
    assert rejected["level"] == "warn" and rejected["key"] == "a.b"
    assert "{broken" not in json.dumps(records)  # payloads never logged


@pytest_twisted.inlineCallbacks
def test_connection_and_subscription_limits(spawn):
    node = yield spawn.notifyd(
        "--max-connections", "2", "--max-subscriptions-per-session", "2", "--hello-timeout", "0.5"
    )
    p1 = yield raw_peer(node.port)
    yield hello(p1)
    p2 = yield raw_peer(node.port)
    try:
        yield raw_peer(node.port)
        raise AssertionError("a third connection was accepted")
    except ConnectionError as e:
        assert "503" in str(e) or "handshake" in str(e)
    yield node.wait_count("refused connection from .*: limit", 1)
    assert node.count("refused connection from .*: limit") == 1
    for i, topic in enumerate(["a.1", "a.2"], 1):
        p1.sendMessage(json.dumps([32, i, {}, topic]).encode())
    yield p1._w.wait(lambda: len([m for m in p1.json_messages() if m[0] == 33]) == 2)
    for i, topic in enumerate(["a.3", "a.1"], 3):
        p1.sendMessage(json.dumps([32, i, {}, topic]).encode())

    def results():
        out = {}
        for msg in p1.json_messages():
            if msg[0] == 33:
                out[msg[1]] = "ok"
            elif msg[0] == 8:
                out[msg[2]] = msg[4]
        return out

    yield p1._w.wait(lambda: len(results()) == 4)
    assert results() == {1: "ok", 2: "ok", 3: "notifyd.error.too_many_subscriptions", 4: "ok"}
    # p2 never sends HELLO: it is closed after hello_timeout
    yield with_timeout(p2.closed)
    assert [msg for msg in p2.json_messages() if msg[0] == 3][0][2] == "notifyd.error.hello_timeout"


@pytest_twisted.inlineCallbacks
def test_per_address_limit(spawn):
    node = yield spawn.notifyd("--max-connections-per-address", "1")
    yield raw_peer(node.port)
    try:
        yield raw_peer(node.port)
        raise AssertionError("a second connection from one address was accepted")
    except ConnectionError:
        pass
    yield node.wait_count("limit_per_address", 1)
    assert node.count("limit_per_address") == 1


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest_twisted.inlineCallbacks
def test_slow_client_is_disconnected_and_others_are_not_hurt(spawn, rabbit, exchange):
    node = yield spawn.notifyd("--max-outbound-buffer", "1048576", "--max-message-size", "131072")
    healthy = yield spawn.js(node.url, "json")
    yield healthy.subscribe("all", "bulk.", "prefix")
    slow = yield raw_peer(node.port)
    yield hello(slow)
    slow.sendMessage(json.dumps([32, 1, {"match": "prefix"}, "bulk."]).encode())
    yield slow.wait_message(lambda msg: msg[0] == 33)
    slow.transport.pauseProducing()  # stop reading the socket: a client that cannot keep up
    pid = node.transport.pid
    rss_before = rss_kib(pid)

    n, blob = 1000, "x" * 30000  # ~30 MB in all: more than the socket buffers hold
    done = threading.Event()

    def publish_all():
        p = AmqpPublisher(rabbit.url, exchange)
        for i in range(n):
            p.publish("bulk.data", {"i": i, "blob": blob, "sent": time.time()})
        p.close()
        done.set()

    yield deferToThread(publish_all)
    yield node.wait_line(
        r"slow consumer .*: more than 1048576 bytes waiting; disconnecting", timeout=120
    )
    rss_slow = rss_kib(pid)
    # a client that reads again finds out why: GOODBYE behind its backlog
    slow.transport.resumeProducing()
    bye = yield slow.wait_message(lambda msg: msg[0] == 6, timeout=60)
    assert bye[2] == "notifyd.close.slow_consumer", bye
    yield healthy.wait_events("all", n, timeout=120)
    got = [e["args"][0]["i"] for e in healthy.events("all")]
    assert got == list(range(n))  # every event, in order
    assert not [r for r in healthy.reports if r["ev"] == "close"]
    rss_after = max(rss_kib(pid), rss_slow)
    # bounded: the slow client's backlog was capped (a generous bound, not timed)
    assert rss_after - rss_before < 150 * 1024, (rss_before, rss_after)
    values = yield deferToThread(metrics, node.port)
    assert m(values, "notifyd_slow_consumer_disconnects_total") == 1
    assert m(values, "notifyd_events_dropped_total", reason="slow_consumer") >= 1
    lags = [e["received"] - e["args"][0]["sent"] for e in healthy.events("all") if "received" in e]
    if lags:
        print(f"healthy client lag: first {lags[0] * 1000:.1f} ms, last {lags[-1] * 1000:.1f} ms")
    slow.transport.abortConnection()


@pytest_twisted.inlineCallbacks
def test_graceful_shutdown_loses_nothing_it_acked(spawn, rabbit, exchange):
    node = yield spawn.notifyd("--shutdown-timeout", "10")
    clients = []
    for ser in ("json", "msgpack", "cbor"):
        c = yield spawn.js(node.url, ser)
        yield c.subscribe("all", "stream.", "prefix")
        clients.append(c)
    stop = threading.Event()
    sent = []

    def stream():
        p = AmqpPublisher(rabbit.url, exchange)
        i = 0
        while not stop.is_set() and i < 100000:
            p.publish("stream.tick", {"i": i})
            sent.append(i)
            i += 1
        p.close()

    publishing = deferToThread(stream)
    yield clients[0].wait_events("all", 200)
    yield node.signal("TERM")
    stop.set()
    yield publishing
    # twistd re-raises the signal after a clean stop, so the exit status
    # says "terminated by SIGTERM"; the log says the stop was complete
    assert node.exit_code == 0 or node.exit_signal == 15
    acked = int((yield node.wait_line(r"notifyd stopped: (\d+) deliveries acked")).group(1))
    assert 200 <= acked <= len(sent)
    for c in clients:
        close = yield c.wait_report(lambda r: r["ev"] == "close")
        assert close["details"]["reason"] == "wamp.close.system_shutdown"
        got = [e["args"][0]["i"] for e in c.events("all")]
        # every event the node acked reached every client, in order, no gaps
        assert got == list(range(acked)), (c.serializer, len(got), acked)
