"""Binding compaction end to end (docs/scaling.md): a real RabbitMQ, a
notifyd with a small compaction threshold and Autobahn|JS clients.  While a
steady stream of events flows to one subscriber, other sessions push the
group over the threshold (the node swaps its per-topic bindings for the
group key) and back under it (and swaps back), twice: the subscriber gets
every event exactly once, in order, and the events nobody wants are dropped
before decoding."""

from __future__ import annotations

import json
import threading
import time

import pika
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.test_operations import m, metrics
from tests.test_receipts_e2e import until


class Stream:
    """Publishes seq 0, 1, 2, ... to ``topic`` (and the same to a topic
    nobody subscribes to) from a thread until stopped."""

    def __init__(self, url: str, exchange: str, topic: str, noise: str) -> None:
        self.url, self.exchange, self.topic, self.noise = url, exchange, topic, noise
        self.sent = 0
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(self.url))
            ch = conn.channel()
            ch.exchange_declare(self.exchange, "topic", durable=True)
            ch.confirm_delivery()
            props = pika.BasicProperties(content_type="application/json")
            while not self.stop.is_set():
                body = json.dumps({"seq": self.sent}).encode()
                ch.basic_publish(self.exchange, self.topic, body, props)
                ch.basic_publish(self.exchange, self.noise, body, props)
                self.sent += 1
                time.sleep(0.002)
            conn.close()
        except Exception as e:  # reported by the test
            self.error = e


@pytest_twisted.inlineCallbacks
def test_swapping_bindings_under_a_steady_stream_loses_and_repeats_nothing(spawn, rabbit, exchange):
    node = yield spawn.notifyd("--binding-compaction", "4")

    def state():
        return deferToThread(metrics, node.port).addCallback(
            lambda v: (
                m(v, "notifyd_amqp_compacted_groups"),
                m(v, "notifyd_amqp_bindings"),
                m(v, "notifyd_amqp_binding_keys"),
            )
        )

    watcher = yield spawn.js(node.url)
    r = yield watcher.subscribe("s", "user.1.invoice")
    assert r["ev"] == "subscribed", r
    others = yield spawn.js(node.url, "msgpack")
    stream = Stream(rabbit.url, exchange, "user.1.invoice", "user.999.invoice")
    #: events published by each swap's end: the stream flowed through each
    marks = [0]
    try:
        for round_ in range(2):
            # five more keys of group "user.#": 6 > 4, compacted
            for i in range(2, 7):
                r = yield others.subscribe(f"o{round_}-{i}", f"user.{i}.", "prefix")
                assert r["ev"] == "subscribed", r
            yield until(
                lambda: state().addCallback(lambda s: s == (1, 1, 6)),
                "one group binding for six keys",
            )
            yield until(lambda: stream.sent > marks[-1] + 20, "events during the swap")
            marks.append(stream.sent)
            # back to one key: 1 < 2, split again
            for i in range(2, 7):
                others.send(op="unsubscribe", tag=f"o{round_}-{i}")
                yield others.wait_report(
                    lambda r, t=f"o{round_}-{i}": r["ev"] == "unsubscribed" and r["tag"] == t
                )
            yield until(
                lambda: state().addCallback(lambda s: s == (0, 1, 1)),
                "one binding of its own again",
            )
            yield until(lambda: stream.sent > marks[-1] + 20, "events during the swap")
            marks.append(stream.sent)
    finally:
        stream.stop.set()
        yield deferToThread(stream.thread.join, 10)
    assert stream.error is None
    yield watcher.wait_events("s", stream.sent, timeout=60)
    seqs = [e["args"][0]["seq"] for e in watcher.events("s")]
    assert seqs == list(range(stream.sent)), "lost, repeated or reordered events"
    values = yield deferToThread(metrics, node.port)
    # the noise topic reached the node only while the group was compacted
    assert m(values, "notifyd_events_unwanted_total") > 0
    assert m(values, "notifyd_amqp_rejected_total", reason="bad_json") == 0
