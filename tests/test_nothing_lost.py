"""Nothing lost (issue 12): RabbitMQ restarted under a steady stream with the
documented publisher, restarted during replays, and a log entry that cannot
be decoded.  Real RabbitMQ, real notifyd, autobahn-python and Autobahn|JS."""

from __future__ import annotations

import json
import threading
from typing import Any

import pika
import pytest_twisted
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.types import ComponentConfig, SubscribeOptions
from twisted.internet import reactor, threads
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ClientEndpoint

from notifyd.ingest import CHECKED_HEADER, LOG_HEADER, log_exchange
from notifyd.publisher import Publisher
from tests.harness import hello, raw_peer, with_timeout
from tests.test_history import history_args, stream  # noqa: F401

TOPIC = "invoice.sent"


class Watcher(ApplicationSession):
    """An autobahn-python session that records the seq of every event."""

    def __init__(self, config: ComponentConfig, joined: Deferred) -> None:
        super().__init__(config)
        self._joined = joined
        self.seqs: list[int] = []
        self.last_publication = 0
        self.left: list[Any] = []
        self._waits: list[tuple[int, Deferred]] = []

    def onJoin(self, details: Any) -> None:
        self._joined.callback(self)

    def onLeave(self, details: Any) -> None:
        self.left.append(details)
        super().onLeave(details)

    def on_event(self, value: Any, details: Any = None) -> None:
        self.seqs.append(value["seq"])
        self.last_publication = details.publication
        for n, d in list(self._waits):
            if len(set(self.seqs)) >= n and not d.called:
                self._waits.remove((n, d))
                d.callback(None)

    def wait_distinct(self, n: int, timeout: float = 120) -> Deferred:
        d: Deferred = Deferred()
        if len(set(self.seqs)) >= n:
            d.callback(None)
        else:
            self._waits.append((n, d))
        return with_timeout(d, timeout)


def watcher(node: Any) -> Deferred:
    joined: Deferred = Deferred()
    factory = WampWebSocketClientFactory(
        lambda: Watcher(ComponentConfig("realm1"), joined), url=node.url
    )
    TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory)
    return with_timeout(joined)


def in_order_once(seqs: list[int], n: int) -> tuple[bool, int]:
    """Every seq 0..n-1 arrived, first arrivals in order; and the number of
    repeats (a repeat is at least once, never a loss)."""
    first: list[int] = []
    seen: set[int] = set()
    for s in seqs:
        if s not in seen:
            seen.add(s)
            first.append(s)
    return first == list(range(n)), len(seqs) - len(first)


def steady_stream(rabbit: Any, exchange: str, n: int, rate: float, marks: dict) -> Any:
    """Publish seq 0..n-1 at ``rate``/s with the documented publisher (it
    retries through a broker restart); ``marks[k]`` is set once k are out."""

    def run() -> int:
        pub = Publisher(rabbit.url, exchange, logged=["#"], retry_for=180)
        interval = 1.0 / rate
        wake = threading.Event()
        for i in range(n):
            pub.publish(TOPIC, {"seq": i})
            if i + 1 in marks:
                marks[i + 1].set()
            wake.wait(interval)
        pub.close()
        return pub.retries

    return threads.deferToThread(run)


@pytest_twisted.inlineCallbacks
def test_rabbitmq_restart_under_a_steady_stream_loses_nothing(spawn, rabbit, exchange, stream):  # noqa: F811
    node = yield spawn.notifyd(
        *history_args(stream, "--amqp-max-retry-delay", "1"), "--history", "#"
    )
    watchers = yield DeferredList([watcher(node) for _ in range(50)], fireOnOneErrback=True)
    watchers = [w for _ok, w in watchers]
    for w in watchers:
        yield w.subscribe(w.on_event, TOPIC, options=SubscribeOptions(details=True))
    n = 2400
    marks = {400: threading.Event()}
    publishing = steady_stream(rabbit, exchange, n, 200, marks)
    yield threads.deferToThread(marks[400].wait, 60)
    start = watchers[0].last_publication
    mark = len(node.lines)
    yield threads.deferToThread(rabbit.stop)
    yield node.wait_line(r"lost the RabbitMQ connection", start=mark)
    yield threads.deferToThread(rabbit.start)
    yield node.wait_line(r"notifyd ready", start=mark, timeout=120)
    retries = yield publishing
    for w in watchers:
        yield w.wait_distinct(n)
    repeats = 0
    for w in watchers:
        ok, again = in_order_once(w.seqs, n)
        assert ok, w.seqs[:50]
        assert not w.left, w.left
        repeats += again
    # a client resuming afterwards, from before the restart, misses nothing
    late = yield spawn.js(node.url, "msgpack")
    r = yield late.subscribe("s", TOPIC, options={"_resume_after": start})
    assert r["ev"] == "subscribed", r
    yield late.wait_report(
        lambda r: len(late.events("s")) and late.events("s")[-1]["args"][0]["seq"] == n - 1,
        timeout=120,
    )
    got = [e["args"][0]["seq"] for e in late.events("s")]
    ok, again = in_order_once([x - got[0] for x in got], n - got[0])
    assert ok and got[0] <= 400, got[:20]
    print(f"\npublisher retries {retries}, repeated deliveries {repeats} over 50 clients")


@pytest_twisted.inlineCallbacks
def test_replays_survive_a_rabbitmq_restart(spawn, rabbit, exchange, stream):  # noqa: F811
    node = yield spawn.notifyd(*history_args(stream, "--amqp-max-retry-delay", "1"))
    n = 3000
    pub = Publisher(rabbit.url, exchange, logged=["invoice.#"])

    def publish_all() -> None:
        for i in range(n):
            pub.publish(TOPIC, {"seq": i})
        pub.close()

    first = yield watcher(node)
    yield first.subscribe(first.on_event, TOPIC, options=SubscribeOptions(details=True))
    yield threads.deferToThread(publish_all)
    yield first.wait_distinct(n)
    # five clients resume from the start and stop reading their sockets, so
    # that their replays (paced by the socket) are still running when
    # RabbitMQ goes away
    base = first.last_publication - n
    replays = []
    for _ in range(5):
        peer = yield raw_peer(node.port)
        yield hello(peer)
        peer.sendMessage(json.dumps([32, 1, {"_resume_after": base}, TOPIC]).encode())
        yield peer.wait_message(lambda m: m[0] == 33)
        peer.transport.pauseProducing()
        replays.append(peer)
    mark = len(node.lines)
    yield threads.deferToThread(rabbit.stop)
    yield node.wait_line(r"lost the RabbitMQ connection", start=mark)
    yield threads.deferToThread(rabbit.start)
    yield node.wait_line(r"notifyd ready", start=mark, timeout=120)
    for peer in replays:
        peer.transport.resumeProducing()
    for peer in replays:
        # WELCOME, SUBSCRIBED and n EVENTs (counting frames: parsing them all
        # on every arrival would cost more than the replay)
        try:
            yield peer._w.wait(lambda p=peer: len(p.received) >= n + 2, timeout=120)
        except Exception:
            got = [m[4][0]["seq"] for m in peer.json_messages() if m[0] == 36]
            raise AssertionError(f"{len(got)} events, last {got[-3:]}; {node.lines[-15:]}")
        msgs = peer.json_messages()
        assert [m[4][0]["seq"] for m in msgs if m[0] == 36] == list(range(n))
        assert not [m for m in msgs if m[0] in (3, 6)], [m for m in msgs if m[0] in (3, 6)]
    assert node.count("resume failed") == 0


@pytest_twisted.inlineCallbacks
def test_an_undecodable_log_entry_is_skipped_by_replay_and_get_events(
    spawn,
    rabbit,
    exchange,
    stream,  # noqa: F811
):
    node = yield spawn.notifyd(*history_args(stream, "--meta-api-roles", "anonymous"))
    first = yield watcher(node)
    sub = yield first.subscribe(first.on_event, TOPIC, options=SubscribeOptions(details=True))
    pub = Publisher(rabbit.url, exchange, logged=["invoice.#"])
    pub.publish(TOPIC, {"seq": 0})
    yield first.wait_distinct(1)
    # an entry in the log that passed no check: written straight to the
    # ingest step's exchange, as a broken or hostile writer could
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    ch = conn.channel()
    for body in (b"{not json", b"[" * 500 + b"]" * 500):
        ch.basic_publish(
            log_exchange(exchange),
            TOPIC,
            body,
            pika.BasicProperties(headers={CHECKED_HEADER: 1, LOG_HEADER: True}),
        )
    conn.close()
    pub.publish(TOPIC, {"seq": 1})
    pub.publish(TOPIC, {"seq": 2})
    pub.close()
    yield first.wait_distinct(3)
    assert first.seqs == [0, 1, 2]
    again = yield raw_peer(node.port)
    yield hello(again)
    again.sendMessage(json.dumps([32, 1, {"_resume_after": 0}, TOPIC]).encode())
    yield again.wait_message(lambda m: m[0] == 36 and m[4][0]["seq"] == 2)
    msgs = again.json_messages()
    assert [m[4][0]["seq"] for m in msgs if m[0] == 36] == [0, 1, 2]
    assert not [m for m in msgs if m[0] in (3, 6, 8)]
    events = yield first.call("wamp.subscription.get_events", sub.id, 10)
    assert [e["args"][0]["seq"] for e in events] == [0, 1, 2]
    # the live consumer, the replay and get_events each skipped them (each
    # entry is logged once)
    yield node.wait_count("skipped event-log entry", 2)


@pytest_twisted.inlineCallbacks
def test_a_deleted_and_recreated_stream_is_detected_and_followed(spawn, rabbit, exchange, stream):  # noqa: F811
    """The log's stream is deleted under a running node (an operator's
    mistake): the node reconnects, sees that the new stream is behind the
    position it had read, says so, tells its sessions to resume (which
    reports the gap), and delivers the new stream's events instead of
    skipping them in silence."""
    node = yield spawn.notifyd(*history_args(stream, "--amqp-max-retry-delay", "1"))
    client = yield spawn.js(node.url)
    yield client.subscribe("s", TOPIC)
    pub = Publisher(rabbit.url, exchange, logged=["invoice.#"])
    for i in range(20):
        pub.publish(TOPIC, {"seq": i})
    yield client.wait_events("s", 20)
    mark = len(node.lines)

    def delete() -> None:
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        conn.channel().queue_delete(stream)
        conn.close()

    yield threads.deferToThread(delete)
    yield node.wait_line(r"RabbitMQ cancelled the consumer of stream", start=mark)
    yield node.wait_line(r"stream .* restarted: its newest entry is \d+, but this node", start=mark)
    r = yield client.wait_report(lambda r: r["ev"] == "close")
    assert r["details"]["reason"] == "notifyd.close.resume_failed", r
    yield node.wait_line(r"notifyd ready", start=mark)
    again = yield spawn.js(node.url)
    yield again.subscribe("s", TOPIC)
    pub.publish(TOPIC, {"seq": 100})
    pub.close()
    yield again.wait_events("s", 1)
    assert again.events("s")[0]["args"][0]["seq"] == 100
