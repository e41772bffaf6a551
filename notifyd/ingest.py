"""
The ingest step: the only way into the event log and the retained store.

RabbitMQ streams (3.9–3.12) drop array- and table-valued AMQP headers at
ingest, so a stream bound straight to the events exchange would turn an event
a backend targeted with ``wamp-eligible-authid: ["alice"]`` into one for
everybody.  notifyd therefore never lets a backend's message into a stream.
Instead:

* a durable **ingest queue** (``<history_stream>.ingest``, single active
  consumer) is bound to the events exchange with the ``--history`` keys, and
  to the headers exchange ``<exchange>.ingest`` (fed from the events exchange)
  for messages with ``wamp-retain: true``;
* every node consumes it, and RabbitMQ makes exactly one of them, on
  whichever node it picks, the active consumer;
* that consumer decodes each message with the same checks as the live path
  (:func:`notifyd.events.decode_delivery`).  A message that fails them is
  rejected without requeue, so the queue's dead-letter exchange (the
  ``dead_letter_exchange`` setting) catches it;
* a message that passes is written in **canonical form**
  (:func:`notifyd.events.canonical_headers`: every list a comma-separated
  string, which streams keep, plus the header ``x-notifyd-checked``) to the
  headers exchange ``<exchange>.log``, with ``mandatory`` and publisher
  confirms.  The log stream is bound to it with ``notifyd-log: true``, the
  retained stream with ``wamp-retain: true``;
* the ingest message is acked only once RabbitMQ confirmed the write.  A
  write that fails (the stream is not up yet after a restart, a nack) closes
  the ingest channel, so RabbitMQ requeues that message and every later one
  in order; the consumer starts again after a short pause.

Readers of the log and the retained store skip entries without
``x-notifyd-checked`` (nothing but this step writes it), so an entry that did
not pass the checks is never delivered.  Order: one active consumer and one
confirm channel keep the ingest queue's order.  A write that fails after
later ones succeeded makes those later ones appear twice in the log (the
requeued copies are written again) unless this node's live consumer has
already seen them: every entry carries a digest of the event (topic,
headers, properties, body), and a redelivered message, or one with a
``message_id``, whose digest is among the last 100,000 entries is acked
without being written.  So a publisher that retries with the same
``message_id`` after a lost confirm (as :mod:`notifyd.publisher` does) does
not duplicate the event either.  What remains is at least once, never lost,
never reordered before an earlier event.

Only notifyd's RabbitMQ user should be allowed to write to ``<exchange>.log``
and the two streams (RabbitMQ permissions; see docs/security.md).
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable
from typing import Any

import pika
from pika.exceptions import ChannelClosedByBroker
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.python.failure import Failure

from notifyd.compat import consume_directly
from notifyd.events import HEADER_RETAIN, BadEvent, InboundEvent, canonical_headers, decode_delivery
from notifyd.logs import Logger
from notifyd.stats import Stats
from notifyd.streams import reconnect_when_cancelled
from notifyd.topics import PatternSet

#: header on every canonical entry (only the ingest step writes it)
CHECKED_HEADER = "x-notifyd-checked"
#: header that routes a canonical entry into the log stream
LOG_HEADER = "notifyd-log"
#: header with a digest of the event (topic, headers, properties, body): a
#: message RabbitMQ redelivers after its writer died, or one a publisher sent
#: again with the same message_id, is not written twice if the log already
#: holds it
DIGEST_HEADER = "x-notifyd-digest"
#: how long a redelivery waits for the log reader to catch up before it is
#: written anyway (at least once rather than stalling the ingest queue)
CATCH_UP_TIMEOUT = 10.0
#: digests of recent log entries remembered for that check
RECENT = 100_000
#: pause before consuming again after a failed write
RESTART_DELAY = 1.0


def log_exchange(exchange: str) -> str:
    """The headers exchange the ingest step writes canonical entries to."""
    return f"{exchange}.log"


def ingest_exchange(exchange: str) -> str:
    """The headers exchange that brings retained events to the ingest queue."""
    return f"{exchange}.ingest"


def is_checked(msg: Any) -> bool:
    """Was this stream entry written by the ingest step?"""
    headers = getattr(msg.properties, "headers", None) or {}
    return bool(headers.get(CHECKED_HEADER))


class LogWriter:
    """Consumes the ingest queue; writes checked events to the streams."""

    _log = Logger()

    def __init__(
        self,
        queue: str,
        patterns: PatternSet,
        max_message_size: int,
        *,
        queue_type: str = "classic",
        dead_letter_exchange: str | None = None,
        prefetch: int = 256,
        stats: Stats | None = None,
        catch_up: Callable[[], Deferred[int]] | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        #: the event log's probe: fires once this node's log reader has read
        #: everything written before the call (see _on_message)
        self._catch_up = catch_up
        #: this consumer's reader has caught up since it started
        self._caught_up = False
        #: messages held while the reader catches up, in order
        self._held: list[tuple[Any, Any, Any]] | None = None
        self.queue = queue
        self.patterns = patterns
        self.max_message_size = max_message_size
        self.queue_type = queue_type
        self.dead_letter_exchange = dead_letter_exchange
        self.prefetch = prefetch
        self._stats = stats if stats is not None else Stats()
        self._conn: Any = None
        self._exchange = ""
        self._restart: Any = None
        #: events written to the streams (on this node)
        self.written = 0
        #: redelivered events found in the log already (not written again)
        self.duplicates = 0
        self._recent: deque[bytes] = deque()
        self._recent_set: set[bytes] = set()

    # -- connection life cycle ---------------------------------------------------
    @inlineCallbacks
    def attach(self, conn: Any, channel: Any, exchange: str) -> Any:
        """Declare the exchanges, the ingest queue and its bindings, and
        start consuming (RabbitMQ decides which node's consumer is active)."""
        self._exchange = exchange
        log_ex, ingest_ex = log_exchange(exchange), ingest_exchange(exchange)
        for name in (log_ex, ingest_ex):
            yield channel.exchange_declare(exchange=name, exchange_type="headers", durable=True)
        yield channel.exchange_bind(destination=ingest_ex, source=exchange, routing_key="#")
        yield self._declare(conn)
        for key in self.patterns.keys:
            yield channel.queue_bind(queue=self.queue, exchange=exchange, routing_key=key)
        yield channel.queue_bind(
            queue=self.queue,
            exchange=ingest_ex,
            routing_key="",
            arguments={"x-match": "all", HEADER_RETAIN: True},
        )
        self._conn = conn
        yield self._consume()

    @inlineCallbacks
    def _declare(self, conn: Any) -> Any:
        arguments: dict[str, Any] = {
            "x-single-active-consumer": True,
            "x-queue-type": self.queue_type,
        }
        if self.dead_letter_exchange:
            arguments["x-dead-letter-exchange"] = self.dead_letter_exchange
        channel = yield conn.channel()
        try:
            yield channel.queue_declare(queue=self.queue, durable=True, arguments=arguments)
        except ChannelClosedByBroker as e:
            if e.reply_code != 406:
                raise
            self._log.warn(
                "ingest queue {name} exists with other arguments than configured ({reason}); "
                "using it as it is",
                name=self.queue,
                reason=e.reply_text,
            )
            channel = yield conn.channel()
            yield channel.queue_declare(queue=self.queue, passive=True)
        if channel.is_open:
            channel.close()

    @inlineCallbacks
    def _consume(self) -> Any:
        conn = self._conn
        writer = yield conn.channel()
        yield writer.confirm_delivery()
        consumer = yield conn.channel()
        yield consumer.basic_qos(prefetch_count=self.prefetch)
        queue, _tag = yield consumer.basic_consume(queue=self.queue, auto_ack=False)
        self._caught_up = False
        consume_directly(
            queue,
            lambda msg: self._on_message(consumer, writer, msg),
            reconnect_when_cancelled(conn, f"the ingest queue {self.queue}"),
        )

    def detach(self) -> None:
        """The connection is gone (RabbitMQ requeues what was not acked)."""
        self._conn = None
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        self._restart = None

    # -- one message ----------------------------------------------------------------
    def _on_message(self, consumer: Any, writer: Any, msg: Any) -> None:
        """One ingest message, in order.  The first redelivered message a
        consumer gets (another node's writer died before its ack) waits,
        with every message after it, until this node's log reader has read
        everything written so far: the dead writer may have written it
        already, and only then does the duplicate check know."""
        if self._held is not None:
            self._held.append((consumer, writer, msg))
            return
        if msg.method.redelivered and not self._caught_up and self._catch_up is not None:
            self._held = [(consumer, writer, msg)]
            self._catch_up().addTimeout(CATCH_UP_TIMEOUT, self._reactor).addBoth(self._release)
            return
        self._handle(consumer, writer, msg)

    def _release(self, result: Any) -> None:
        if isinstance(result, Failure):
            # the log cannot be read now: write (at least once) rather than stall
            self._log.warn(
                "could not catch up with the event log before writing redelivered "
                "events ({why}); some may be written twice",
                why=result.getErrorMessage(),
            )
        self._caught_up = True
        held, self._held = self._held or [], None
        for consumer, writer, msg in held:
            if consumer.is_open:  # else RabbitMQ requeued it
                self._handle(consumer, writer, msg)

    def _handle(self, consumer: Any, writer: Any, msg: Any) -> None:
        tag = msg.method.delivery_tag
        key = msg.method.routing_key
        try:
            event = decode_delivery(key, msg.properties, msg.body, self.max_message_size)
        except BadEvent as e:
            self._stats.inc_labelled("events_rejected", e.reason)
            self._log.warn(
                "rejected AMQP message on {key} before the event log: {reason}",
                key=key,
                reason=str(e),
            )
            if consumer.is_open:
                consumer.basic_reject(tag, requeue=False)
            return
        logged = self.patterns.matches(event.topic)
        if not logged and not event.retain:
            consumer.basic_ack(tag)  # bound for a key no longer configured
            return
        props = _canonical_properties(event, msg.properties, logged)
        again = msg.method.redelivered or "x_message_id" in event.extra
        if again and _digest_key(props.headers[DIGEST_HEADER]) in self._recent_set:
            # already in the log: a node wrote it and died before its ack, or
            # a publisher sent the same message (same message_id) again
            # after a lost confirm
            self.duplicates += 1
            consumer.basic_ack(tag)
            return
        d = writer.basic_publish(
            exchange=log_exchange(self._exchange),
            routing_key=event.topic,
            body=msg.body,
            properties=props,
            mandatory=True,
        )
        d.addCallbacks(self._written, self._failed, (consumer, tag), None, (consumer, writer))

    def seen(self, msg: Any) -> None:
        """The log's live consumer handed over an entry: remember its digest."""
        digest = (getattr(msg.properties, "headers", None) or {}).get(DIGEST_HEADER)
        if digest is None:
            return
        digest = _digest_key(digest)
        self._recent.append(digest)
        self._recent_set.add(digest)
        if len(self._recent) > RECENT:
            self._recent_set.discard(self._recent.popleft())

    def _written(self, _: Any, consumer: Any, tag: int) -> None:
        self.written += 1
        if consumer.is_open:
            consumer.basic_ack(tag)

    def _failed(self, f: Any, consumer: Any, writer: Any) -> None:
        if not consumer.is_open:
            return  # already restarting: RabbitMQ requeued this one too
        self._stats.inc("log_writes_failed")
        self._log.warn(
            "writing to the event log failed ({why}); RabbitMQ keeps the event in {queue} "
            "and notifyd writes it again",
            why=f.getErrorMessage() or f.type.__name__,
            queue=self.queue,
        )
        # unacked messages go back in order; consume again after a pause
        consumer.close()
        if writer.is_open:
            writer.close()
        if self._restart is None and self._conn is not None:
            self._restart = self._reactor.callLater(RESTART_DELAY, self._again)

    def _again(self) -> None:
        self._restart = None
        if self._conn is None or not self._conn.is_open:
            return
        self._consume().addErrback(
            lambda f: self._log.failure("restarting the ingest consumer failed", f)
        )


def _digest_key(digest: str | bytes) -> bytes:
    """A digest as the duplicate check keeps it: pika hands the log's
    headers back as text or bytes, the canonical form has text."""
    return digest.encode() if isinstance(digest, str) else bytes(digest)


def _payload_bytes(event: InboundEvent) -> bytes:
    """The payload of ``event`` as bytes, for its digest."""
    if event.raw is not None:
        return event.raw
    return repr((event.args, event.kwargs)).encode()


def _canonical_properties(event: InboundEvent, props: Any, logged: bool) -> Any:
    headers = canonical_headers(event)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(event.topic.encode())
    digest.update(repr(sorted(headers.items())).encode())
    digest.update(repr(sorted(event.extra.items())).encode())
    digest.update(_payload_bytes(event))
    headers[CHECKED_HEADER] = 1
    headers[DIGEST_HEADER] = digest.hexdigest()
    if logged:
        headers[LOG_HEADER] = True
    return pika.BasicProperties(
        content_type="application/json",
        headers=headers,
        delivery_mode=2,
        message_id=event.extra.get("x_message_id"),
        timestamp=event.extra.get("x_timestamp"),
        type=event.extra.get("x_type"),
        app_id=event.extra.get("x_app_id"),
    )
