"""Delivery receipts and the undelivered fallback end to end
(docs/presence.md): two real notifyd nodes, a real RabbitMQ, Autobahn|JS
clients, and a backend that follows the receipts and undelivered exchanges.

* an event seen on node B while node A has no subscriber: one delivered
  receipt (B's), a displayed receipt, and no fallback;
* a receipt never speaks for a session the event was not for;
* an event nobody displays reaches the undelivered exchange exactly once,
  with its routing key, headers and body, also when the node deciding it is
  SIGKILLed while it waits."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pika
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread

from tests.test_history import history_args, stream  # noqa: F401
from tests.test_operations import m, metrics


class Backend:
    """A backend consumer of the receipts and undelivered exchanges (a
    thread with a blocking pika connection)."""

    def __init__(self, url: str, receipts: str, undelivered: str) -> None:
        self.receipts: list[dict] = []
        self.undelivered: list[tuple[str, Any, bytes]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.error: Exception | None = None
        self._args = (url, receipts, undelivered)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(30), f"backend consumer not ready: {self.error}"

    def _run(self) -> None:
        url, receipts, undelivered = self._args
        try:
            conn = pika.BlockingConnection(pika.URLParameters(url))
            ch = conn.channel()
            for name, into in ((receipts, self._receipt), (undelivered, self._undelivered)):
                ch.exchange_declare(name, "topic", durable=True)
                q = ch.queue_declare("", exclusive=True).method.queue
                ch.queue_bind(q, name, "#")
                ch.basic_consume(q, into, auto_ack=True)
            self.ready.set()
            while not self.stop.is_set():
                conn.process_data_events(time_limit=0.1)
            conn.close()
        except Exception as e:  # reported by the waits
            self.error = e
            self.ready.set()

    def _receipt(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        with self.lock:
            self.receipts.append({"key": method.routing_key, **json.loads(body)})

    def _undelivered(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        with self.lock:
            self.undelivered.append((method.routing_key, props, body))

    def of(self, message_id: str, kind: str | None = None) -> list[dict]:
        with self.lock:
            return [
                r
                for r in self.receipts
                if r["message_id"] == message_id and kind in (None, r["receipt"])
            ]

    def fallbacks(self, message_id: str) -> list[tuple[str, Any, bytes]]:
        with self.lock:
            return [u for u in self.undelivered if u[1].message_id == message_id]


@defer.inlineCallbacks
def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = reactor.seconds() + timeout
    while True:
        value = check()
        if isinstance(value, defer.Deferred):
            value = yield value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)


def receipt_args(receipts: str, undelivered: str) -> list[str]:
    return ["--receipts", "--receipts-exchange", receipts, "--undelivered-exchange", undelivered]


@defer.inlineCallbacks
def decisions(*nodes: Any) -> Any:
    """Fallback decisions and pending waits summed over ``nodes``."""
    out: dict[str, float] = {}
    for node in nodes:
        values = yield deferToThread(metrics, node.port)
        for outcome in ("displayed", "undelivered", "unroutable", "refused"):
            key = outcome
            out[key] = out.get(key, 0) + m(
                values, "notifyd_fallback_decisions_total", outcome=outcome
            )
        out["pending"] = out.get("pending", 0) + m(values, "notifyd_fallback_pending")
    return out


@pytest_twisted.inlineCallbacks
def test_receipts_across_two_nodes_and_one_decision_per_event(spawn, rabbit, exchange, publisher):
    receipts, undelivered = exchange + ".receipts", exchange + ".undelivered"
    backend = Backend(rabbit.url, receipts, undelivered)
    try:
        a = yield spawn.notifyd(*receipt_args(receipts, undelivered))
        b = yield spawn.notifyd(*receipt_args(receipts, undelivered))
        seer = yield spawn.js(b.url)  # on B; node A has no subscriber
        other = yield spawn.js(a.url)  # another user, on A, subscribed to nothing
        r = yield seer.subscribe("s", "invoice.sent")
        assert r["ev"] == "subscribed", r

        def publish(message_id: str, topic: str = "invoice.sent", **headers: Any) -> Any:
            return deferToThread(
                publisher.publish,
                topic,
                {"invoice": message_id},
                headers=headers,
                message_id=message_id,
                timestamp=int(time.time()),
            )

        # 1. seen on B, displayed there: one delivered (B's), one displayed,
        #    and the decider drops its wait
        yield publish("e1", **{"notifyd-receipt": True, "notifyd-fallback-after": 30})
        yield seer.wait_events("s", 1)
        delivered = yield until(lambda: backend.of("e1", "delivered"), "delivered receipt")
        assert len(delivered) == 1 and delivered[0]["key"] == "e1"
        # the other user cannot report an event that was not for him
        r = yield other.call("x", "notifyd.receipt.displayed", "e1")
        assert r["ev"] == "error" and r["error"] == "notifyd.error.no_receipt", r
        r = yield seer.call("d", "notifyd.receipt.displayed", "e1")
        assert r["ev"] == "result", r
        yield until(lambda: backend.of("e1", "displayed"), "displayed receipt")
        assert backend.of("e1", "displayed")[0]["node"] == delivered[0]["node"]
        yield until(
            lambda: decisions(a, b).addCallback(
                lambda d: d["displayed"] == 1 and d["pending"] == 0
            ),
            "the wait dropped",
        )

        # 2. for a user nobody is: no delivered receipt, and after 2 s one
        #    copy on the undelivered exchange, as published
        yield publish(
            "e2",
            "invoice.paid",
            **{"notifyd-fallback-after": "2", "wamp-eligible-authid": "nobody"},
        )
        yield until(lambda: backend.fallbacks("e2"), "e2 undelivered", timeout=20)
        key, props, body = backend.fallbacks("e2")[0]
        assert key == "invoice.paid" and json.loads(body) == {"invoice": "e2"}
        assert props.headers["wamp-eligible-authid"] == "nobody"
        assert props.headers["notifyd-fallback-after"] == "2"
        assert backend.of("e2") == []

        # 3. the decider SIGKILLed while it waits: the other node decides,
        #    once
        yield publish("e3", "invoice.overdue", **{"notifyd-fallback-after": 4})
        pending = {}

        @defer.inlineCallbacks
        def holder() -> Any:
            for node in (a, b):
                values = yield deferToThread(metrics, node.port)
                pending[node] = m(values, "notifyd_fallback_pending")
            return sum(pending.values()) == 1

        yield until(holder, "one node holds e3")
        decider = next(n for n, p in pending.items() if p == 1)
        survivor = a if decider is b else b
        yield decider.signal("KILL")
        yield until(lambda: backend.fallbacks("e3"), "e3 undelivered", timeout=30)
        yield until(
            lambda: decisions(survivor).addCallback(lambda d: d["pending"] == 0),
            "the survivor done",
        )
        # a last event through the same queue, decided after e3: by then any
        # second copy of e3 would have been republished first
        yield publish("e4", "invoice.overdue", **{"notifyd-fallback-after": 1})
        yield until(lambda: backend.fallbacks("e4"), "e4 undelivered", timeout=20)
        assert len(backend.fallbacks("e3")) == 1
        assert len(backend.fallbacks("e2")) == 1
        assert backend.fallbacks("e1") == []

        # an operator deletes the decide queue: RabbitMQ cancels the
        # decider, the node reconnects, declares it again and decides again
        def delete_queue() -> None:
            conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
            conn.channel().queue_delete(receipts + ".decide")
            conn.close()

        yield deferToThread(delete_queue)
        yield survivor.wait_count("RabbitMQ ended the fallback decider", 1)
        yield survivor.wait_count("notifyd ready", 2)
        yield publish("e5", "invoice.overdue", **{"notifyd-fallback-after": 1})
        yield until(lambda: backend.fallbacks("e5"), "e5 undelivered", timeout=20)
        assert backend.error is None
    finally:
        backend.stop.set()


@pytest_twisted.inlineCallbacks
def test_receipts_on_a_logged_topic_live_and_replayed(
    spawn,
    rabbit,
    exchange,
    publisher,
    stream,  # noqa: F811
):
    """Through the event log (ingest, stream, follower) the receipt header
    and message_id survive; a resume's replay counts as a delivery too, and
    the replayed session may report it displayed."""
    receipts, undelivered = exchange + ".receipts", exchange + ".undelivered"
    backend = Backend(rabbit.url, receipts, undelivered)
    try:
        node = yield spawn.notifyd(*history_args(stream, *receipt_args(receipts, undelivered)))
        live = yield spawn.js(node.url)
        r = yield live.subscribe("s", "invoice.sent")
        assert r["ev"] == "subscribed", r
        yield deferToThread(
            publisher.publish,
            "invoice.sent",
            {"seq": 1},
            headers={"notifyd-receipt": True},
            message_id="logged-1",
        )
        yield live.wait_events("s", 1)
        position = live.events("s")[0]["publication"]
        yield until(lambda: backend.of("logged-1", "delivered"), "delivered from the log")
        r = yield live.call("d", "notifyd.receipt.displayed", "logged-1")
        assert r["ev"] == "result", r

        # a session that resumes from before it gets it by replay
        late = yield spawn.js(node.url)
        r = yield late.subscribe("s", "invoice.sent", options={"_resume_after": position - 1})
        assert r["ev"] == "subscribed", r
        yield late.wait_events("s", 1)
        r = yield late.call("d", "notifyd.receipt.displayed", "logged-1")
        assert r["ev"] == "result", r
        assert len(backend.of("logged-1", "delivered")) == 1  # once per node
    finally:
        backend.stop.set()
