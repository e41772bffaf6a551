"""
Delivery receipts and the undelivered fallback (``docs/presence.md``).  Off
unless ``receipts`` is set.

A backend event with ``notifyd-receipt: true`` (and a ``message_id``) gets
JSON receipts on the receipts exchange (a durable topic exchange), routing
key = its ``message_id``:

* ``delivered``: a node sent it to at least one session (once per node);
* ``displayed``: ``notifyd.js`` showed it in a visible tab (CALL
  ``notifyd.receipt.displayed``); accepted only from a session the event
  was sent to, so a receipt never speaks of a session the event was not for.

An event with ``notifyd-fallback-after: <seconds>`` also gets receipts and
one decision, made by exactly one node of the cluster:

* the events exchange feeds the headers exchange ``<receipts_exchange>.waits``;
  the durable queue ``<receipts_exchange>.decide`` (single active consumer)
  takes from it every event that has the header; a node that publishes a
  ``displayed`` receipt for such an event also sends it straight to that
  queue (so the copy of the event always comes first);
* every node with receipts on consumes that queue; RabbitMQ makes one of
  them the active consumer: the **decider**.  It holds each such event
  unacked until its deadline (its ``timestamp`` property + the delay, or
  when it first saw it + the delay without one);
* a ``displayed`` receipt for it before the deadline: the event is acked
  (then the receipt), nothing else happens;
* at the deadline: the event is republished, as it came (routing key,
  properties, headers, body), to the undelivered exchange with publisher
  confirms and ``mandatory``; acked once RabbitMQ confirmed.

If the decider dies, RabbitMQ hands every unacked event and receipt, in their
order, to the next consumer, which decides them the same way.  The one
duplicate left: a decider that dies between RabbitMQ's confirm of the
republished event and its ack; consumers of the undelivered exchange
deduplicate by ``message_id``.

:class:`Receipts` is a node's state (no I/O); :class:`Decider` the decision
(no I/O); :func:`attach` wires both to RabbitMQ on every (re)connect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pika.exceptions import UnroutableError
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from notifyd.compat import consume_directly
from notifyd.events import HEADER_FALLBACK_AFTER, BadEvent, InboundEvent, fallback_after
from notifyd.logs import Logger

_log = Logger()

#: the ``version`` field of every receipt
FORMAT = 1
#: receipt kinds
DELIVERED = "delivered"
DISPLAYED = "displayed"
#: receipt events remembered per session (a displayed report for an older
#: one is refused)
PER_SESSION = 64
#: message ids remembered as reported by this node (each kind once per node)
REPORTED = 100_000
#: what a decision can be: displayed in time, republished undelivered, not
#: routable there, refused (a bad header)
OUTCOMES = ("displayed", "undelivered", "unroutable", "refused")
#: the most fallback events one decider holds (its prefetch, AMQP's largest):
#: beyond, they wait in RabbitMQ and are decided, late, as earlier ones go
MAX_PENDING = 65_535
#: message ids remembered as decided by the decider (a second copy of a
#: decided event, published again by its backend, is not decided twice)
DECIDED = 100_000


def waits_exchange(receipts_exchange: str) -> str:
    """The headers exchange the events exchange feeds (fallback events)."""
    return receipts_exchange + ".waits"


def decide_queue(receipts_exchange: str) -> str:
    """The single-active-consumer queue of the fallback decisions."""
    return receipts_exchange + ".decide"


class _Recent:
    """At most ``size`` keys (each with a value), the oldest forgotten first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._keys: dict[Any, Any] = {}  # insertion order: oldest first

    def __contains__(self, key: Any) -> bool:
        return key in self._keys

    def get(self, key: Any) -> Any:
        return self._keys.get(key)

    def add(self, key: Any, value: Any = None) -> bool:
        """Remember ``key``; False if it was known already."""
        if key in self._keys:
            return False
        self._keys[key] = value
        if len(self._keys) > self._size:
            del self._keys[next(iter(self._keys))]
        return True

    def discard(self, key: Any) -> None:
        self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)


class Receipts:
    """This node's receipts: which session got which receipt event, and the
    receipts it published."""

    def __init__(
        self,
        send: Callable[[str, bytes], bool],
        clock: Any,
        node: str,
        *,
        decide: Callable[[bytes], object] | None = None,
        per_session: int = PER_SESSION,
    ) -> None:
        """``send(routing_key, body)`` publishes one receipt (fire and
        forget; False if it could not, RabbitMQ being away: the receipt can
        then be reported again); ``decide(body)`` sends a ``displayed`` receipt of a
        fallback event to the decide queue."""
        self._send = send
        self._decide = decide
        self._clock = clock
        self.node = node
        self._per_session = per_session
        #: session id -> the message ids sent to it (newest last) -> whether
        #: the event has a fallback
        self._sent: dict[int, _Recent] = {}
        self._reported = {DELIVERED: _Recent(REPORTED), DISPLAYED: _Recent(REPORTED)}
        #: receipts published, by kind
        self.published = {DELIVERED: 0, DISPLAYED: 0}

    def _publish(self, kind: str, message_id: str, fallback: bool = False) -> None:
        reported = self._reported[kind]
        if not reported.add(message_id):
            return  # this node said it already
        body = {
            "version": FORMAT,
            "message_id": message_id,
            "receipt": kind,
            "node": self.node,
            "time": self._clock.seconds(),
        }
        data = json.dumps(body, separators=(",", ":")).encode()
        if not self._send(message_id, data):
            reported.discard(message_id)  # not sent: a later report may be
            return
        self.published[kind] += 1
        if fallback and self._decide is not None:
            self._decide(data)

    def delivered(self, event: InboundEvent, sessions: Iterable[Any]) -> None:
        """``event`` (which asked for a receipt) was sent to ``sessions``."""
        message_id = event.extra["x_message_id"]
        fallback = event.fallback_after is not None
        any_session = False
        for session in sessions:
            any_session = True
            sent = self._sent.get(session.session_id)
            if sent is None:
                sent = self._sent[session.session_id] = _Recent(self._per_session)
            sent.add(message_id, fallback)
        if any_session:
            self._publish(DELIVERED, message_id)

    def displayed(self, session: Any, message_id: Any) -> bool:
        """``session``'s browser displayed ``message_id`` in a visible tab.
        False (nothing published) unless that event was sent to it."""
        sent = self._sent.get(session.session_id)
        if not isinstance(message_id, str) or sent is None or message_id not in sent:
            return False
        self._publish(DISPLAYED, message_id, sent.get(message_id))
        return True

    def forget(self, session: Any) -> None:
        """``session`` ended."""
        self._sent.pop(session.session_id, None)


@dataclass
class _Wait:
    tag: int
    message_id: str
    call: Any = None
    msg: Any = field(default=None, repr=False)
    #: the deadline passed: republishing (a late "displayed" changes nothing)
    expiring: bool = False
    #: republish attempts that failed (retried with a growing delay)
    failures: int = 0


#: seconds before a failed republish is tried again (doubling up to RETRY_MAX)
RETRY_FIRST = 2.0
RETRY_MAX = 60.0


class Decider:
    """The fallback decisions of one consumer of the decide queue (no I/O:
    ``ack(tag)``, ``reject(tag)`` and ``republish(msg)`` are given;
    ``republish`` returns a Deferred that fires on RabbitMQ's confirm)."""

    def __init__(
        self,
        clock: Any,
        ack: Callable[[int], object],
        reject: Callable[[int], object],
        republish: Callable[[Any], Deferred[Any]],
        decided: _Recent | None = None,
    ) -> None:
        self._clock = clock
        self._ack = ack
        self._reject = reject
        self._republish = republish
        #: message id -> the event waiting for its deadline
        self.pending: dict[str, _Wait] = {}
        #: message ids decided (kept across reconnects by the caller)
        self.decided = decided if decided is not None else _Recent(DECIDED)
        #: decisions made: "displayed", "undelivered", "unroutable", "refused"
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self._stopped = False

    # -- input -----------------------------------------------------------------------
    def on_message(self, tag: int, msg: Any) -> None:
        """One message of the decide queue: a waiting event (it has the
        fallback header) or a ``displayed`` receipt."""
        headers = getattr(msg.properties, "headers", None) or {}
        for name, value in headers.items():
            if name.lower() == HEADER_FALLBACK_AFTER:
                self._wait(tag, msg, value)
                return
        self._receipt(tag, msg.body)

    def _refuse(self, tag: int, why: str) -> None:
        # the nodes refuse the event too (nobody got it): dead-lettered
        _log.warn("refused a fallback event: {why}", why=why)
        self.outcomes["refused"] += 1
        self._reject(tag)

    def _wait(self, tag: int, msg: Any, value: Any) -> None:
        """``msg`` waits; ``value``: its fallback header."""
        try:
            delay = fallback_after(HEADER_FALLBACK_AFTER, value)
        except BadEvent as e:
            self._refuse(tag, str(e))
            return
        message_id = getattr(msg.properties, "message_id", None)
        if not isinstance(message_id, str) or not message_id:
            self._refuse(tag, "it has no message_id (or one that is not UTF-8)")
            return
        if message_id in self.decided or message_id in self.pending:
            self._ack(tag)  # a second copy of an event decided (or waiting) already
            return
        now = self._clock.seconds()
        start = getattr(msg.properties, "timestamp", None)
        if not isinstance(start, int) or isinstance(start, bool) or not 0 < start <= now:
            start = now
        wait = _Wait(tag, message_id, msg=msg)
        wait.call = self._clock.callLater(max(0.0, start + delay - now), self._expire, wait)
        self.pending[message_id] = wait

    def _receipt(self, tag: int, body: bytes) -> None:
        try:
            receipt = json.loads(body)
            message_id, kind = receipt["message_id"], receipt["receipt"]
        except (ValueError, TypeError, KeyError):
            self._ack(tag)  # not a receipt: nothing to decide
            return
        wait = self.pending.get(message_id) if isinstance(message_id, str) else None
        if wait is not None and kind == DISPLAYED and not wait.expiring:
            # the event first: a death between the two acks leaves only the
            # receipt, which then finds nothing waiting
            self._done(wait, "displayed")
            self._ack(wait.tag)
        self._ack(tag)

    # -- decisions ----------------------------------------------------------------------
    def _done(self, wait: _Wait, outcome: str) -> None:
        if wait.call is not None and wait.call.active():
            wait.call.cancel()
        self.pending.pop(wait.message_id, None)
        self.decided.add(wait.message_id)
        self.outcomes[outcome] += 1

    def _expire(self, wait: _Wait) -> None:
        wait.call = None
        if self._stopped:
            return
        wait.expiring = True
        d = self._republish(wait.msg)

        def confirmed(_: Any) -> None:
            # out there now: never again from this node, even if the channel
            # went before the ack (RabbitMQ then redelivers it; it is acked
            # as a copy of a decided event)
            self.decided.add(wait.message_id)
            if not self._stopped:
                self._done(wait, "undelivered")
                self._ack(wait.tag)

        def failed(f: Failure) -> None:
            if self._stopped:
                return  # the channel went: RabbitMQ gives the event to the next decider
            if f.check(UnroutableError):
                _log.error(
                    "fallback event {id} was not routable: bind a queue to the undelivered "
                    "exchange",
                    id=wait.message_id,
                )
                self._done(wait, "unroutable")
                self._ack(wait.tag)
                return
            # refused (a nack: resource alarm, max-length) or the publish
            # channel went: try again, the event stays held meanwhile
            delay = min(RETRY_MAX, RETRY_FIRST * 2**wait.failures)
            wait.failures += 1
            _log.warn(
                "fallback event {id} not republished ({why}); trying again in {delay} s",
                id=wait.message_id,
                why=f.getErrorMessage() or type(f.value).__name__,
                delay=delay,
            )
            wait.call = self._clock.callLater(delay, self._expire, wait)

        d.addCallbacks(confirmed, failed)

    def stop(self) -> None:
        """The channel is gone: forget every wait (RabbitMQ requeues them)."""
        self._stopped = True
        for wait in self.pending.values():
            if wait.call is not None and wait.call.active():
                wait.call.cancel()
        self.pending.clear()


class Decisions:
    """What outlives one connection: the decided message ids, the outcome
    counts and the decider of the current connection."""

    def __init__(self) -> None:
        self.decided = _Recent(DECIDED)
        self.current: Decider | None = None
        self._past = dict.fromkeys(OUTCOMES, 0)

    def outcomes(self) -> dict[str, int]:
        """Decisions made on this node, by outcome."""
        out = dict(self._past)
        if self.current is not None:
            for k, v in self.current.outcomes.items():
                out[k] += v
        return out

    def pending(self) -> int:
        """Fallback events this node holds until their deadline."""
        return 0 if self.current is None else len(self.current.pending)

    def replace(self, decider: Decider | None) -> None:
        old, self.current = self.current, decider
        if old is not None:
            old.stop()
            for k, v in old.outcomes.items():
                self._past[k] += v


@inlineCallbacks
def attach(
    conn: Any,
    channel: Any,
    publish_channel: Any,
    *,
    events_exchange: str,
    receipts_exchange: str,
    undelivered_exchange: str,
    decisions: Decisions,
    clock: Any,
) -> Any:
    """On every (re)connect: declare the receipts, waits and undelivered
    exchanges and the decide queue, and consume it on a channel of its own
    (prefetch :data:`MAX_PENDING`: the decider holds the waiting events).
    If RabbitMQ closes that channel or cancels its consumer, the connection
    is closed, so the node reconnects and decides again."""
    import pika

    yield channel.exchange_declare(exchange=receipts_exchange, exchange_type="topic", durable=True)
    yield channel.exchange_declare(
        exchange=undelivered_exchange, exchange_type="topic", durable=True
    )
    waits = waits_exchange(receipts_exchange)
    yield channel.exchange_declare(exchange=waits, exchange_type="headers", durable=True)
    yield channel.exchange_bind(destination=waits, source=events_exchange, routing_key="#")
    queue = decide_queue(receipts_exchange)
    yield channel.queue_declare(
        queue=queue, durable=True, arguments={"x-single-active-consumer": True}
    )
    # a void value matches the header's presence, whatever its value
    yield channel.queue_bind(
        queue=queue,
        exchange=waits,
        routing_key="",
        arguments={"x-match": "any", HEADER_FALLBACK_AFTER: None},
    )
    decide = yield conn.channel()
    yield decide.basic_qos(prefetch_count=MAX_PENDING)

    def ack(tag: int) -> None:
        if decide.is_open:
            decide.basic_ack(tag)

    def reject(tag: int) -> None:
        if decide.is_open:
            decide.basic_reject(tag, requeue=False)

    def republish(msg: Any) -> Deferred[Any]:
        props = msg.properties
        return publish_channel.basic_publish(
            exchange=undelivered_exchange,
            routing_key=msg.method.routing_key,
            body=msg.body,
            properties=pika.BasicProperties(
                content_type=props.content_type,
                content_encoding=props.content_encoding,
                headers=props.headers,
                delivery_mode=2,
                priority=props.priority,
                correlation_id=props.correlation_id,
                reply_to=props.reply_to,
                message_id=props.message_id,
                timestamp=props.timestamp,
                type=props.type,
                app_id=props.app_id,
                # not user_id: RabbitMQ checks it against notifyd's own login
            ),
            mandatory=True,
        )

    decider = Decider(clock, ack, reject, republish, decisions.decided)
    decisions.replace(decider)

    def lost(reason: Any) -> None:
        if decisions.current is decider:
            decisions.replace(None)
            if conn.is_open:  # not a stop: RabbitMQ closed the channel or cancelled us
                _log.warn(
                    "RabbitMQ ended the fallback decider ({reason}); reconnecting",
                    reason=reason,
                )
                conn.close()

    def handle(msg: Any) -> None:
        try:
            decider.on_message(msg.method.delivery_tag, msg)
        except Exception:
            _log.failure("internal error deciding a fallback; the message stays unacked")

    decide.on_closed.addBoth(lost)
    consumer, _ = yield decide.basic_consume(queue=queue, auto_ack=False)
    consume_directly(consumer, handle, lost)
