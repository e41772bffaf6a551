"""
RabbitMQ streams over AMQP 0-9-1: the event log's network side.

A :class:`StreamLog` owns one stream queue on the current AMQP connection:

* it declares the stream (``x-queue-type: stream`` with the retention
  arguments) and its bindings, on every (re)connect;
* it runs one *live* consumer that hands every entry, in offset order, to a
  callback.  After a reconnect the consumer resumes at the offset after the
  last one it handled, so a broker restart or a failover to another cluster
  node loses nothing and repeats nothing;
* :meth:`StreamLog.read` runs a short-lived consumer from an offset, for
  replays and history queries;
* :meth:`StreamLog.tail` answers "what is the newest offset?".  Streams do
  not tell an AMQP 0-9-1 client, so the log publishes a *marker* (a message
  with the header ``x-notifyd-marker``, skipped by every reader) and waits
  for its own live consumer to see it: the marker's offset is the tail.  A
  node does this once per connection; afterwards the live consumer keeps the
  tail up to date.

Facts this relies on (RabbitMQ 3.9+): a stream consumer needs ``basic.qos``
and manual acks (acks are credit, nothing is removed); ``x-stream-offset`` in
``basic.consume`` arguments picks the start (``first``, ``next`` or an
offset); delivery starts at the beginning of the chunk holding that offset,
so a reader skips entries below it; every delivery carries its offset in the
``x-stream-offset`` header.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import pika
from pika.exceptions import ChannelClosedByBroker, ConsumerCancelled
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.python.failure import Failure

from notifyd.compat import consume_directly
from notifyd.logs import Logger

MARKER_HEADER = "x-notifyd-marker"
PROBE_TIMEOUT = 30.0
#: at most one marker per this many seconds per node
PROBE_INTERVAL = 1.0
OFFSET_HEADER = "x-stream-offset"


_log = Logger()


class LogUnavailable(Exception):
    """RabbitMQ (or the stream) is not reachable right now."""


def reconnect_when_cancelled(conn: Any, what: str) -> Callable[[Any], None]:
    """A ``cancelled`` callback for :func:`notifyd.compat.consume_directly`:
    when RabbitMQ cancels the consumer (its queue was deleted, say), log it
    and close the connection, so that the service reconnects and declares
    again.  (A queue closed with its channel needs nothing: the connection's
    own loss is handled elsewhere.)"""

    def cancelled(reason: Any) -> None:
        if not isinstance(reason, ConsumerCancelled):
            return
        _log.warn("RabbitMQ cancelled the consumer of {what}; reconnecting", what=what)
        if conn.is_open:
            conn.close()

    return cancelled


class AckBatcher:
    """Acks deliveries in batches: one ``basic.ack(multiple=True)`` once
    ``batch`` deliveries are waiting, or ``delay`` seconds after the first
    of them, whichever comes first.

    An ack written per delivery costs a system call, a reactor turn and work
    in RabbitMQ each time; at a few thousand targeted events a second that
    was a fifth of the node's CPU.  Waiting a few milliseconds costs nothing
    a client sees (events are written before they are acked) and at most
    ``batch`` redeliveries if the node dies.  ``batch`` must stay below the
    channel's prefetch, or deliveries would stop while acks wait."""

    def __init__(self, reactor: Any, batch: int = 64, delay: float = 0.01) -> None:
        self._reactor = reactor
        self.batch = max(1, batch)
        self.delay = delay
        self._upto: tuple[Any, int] | None = None
        self._call: Any = None
        self._waiting = 0
        #: deliveries acked (or waiting to be)
        self.count = 0

    def later(self, channel: Any, tag: int) -> None:
        self.count += 1
        self._upto = (channel, tag)
        self._waiting += 1
        if self._waiting >= self.batch:
            self.flush()
        elif self._call is None:
            self._call = self._reactor.callLater(self.delay, self.flush)

    def flush(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._waiting = 0
        pending, self._upto = self._upto, None
        if pending is not None:
            channel, tag = pending
            if channel.is_open:
                channel.basic_ack(tag, multiple=True)


class RecentEntries:
    """The newest entries the live consumer read (markers as None), in
    memory and in offset order, so a read that starts among them needs no
    stream consumer: after a node dies, thousands of its clients resume on
    the others at once, each from a position seconds old."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: deque[Any] = deque(maxlen=size or None)
        #: the offset of the oldest entry kept
        self._first = 0
        #: routing key -> offsets of its entries kept, oldest first
        self._topics: dict[Any, deque[int]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def append(self, offset: int, msg: Any) -> None:
        if not self.size:
            return
        entries = self._entries
        if entries and offset != self._first + len(entries):
            self.clear()  # not the next offset (a gap, a new stream): start over
        if not entries:
            self._first = offset
        elif len(entries) == self.size:
            self._forget(entries[0])
            self._first += 1
        entries.append(msg)
        if msg is not None:
            topic = msg.method.routing_key
            offsets = self._topics.get(topic)
            if offsets is None:
                offsets = self._topics[topic] = deque()
            offsets.append(offset)

    def _forget(self, msg: Any) -> None:
        """The oldest entry leaves: so does its offset from its topic's."""
        if msg is None:
            return
        topic = msg.method.routing_key
        offsets = self._topics[topic]
        offsets.popleft()
        if not offsets:
            del self._topics[topic]

    def clear(self) -> None:
        self._entries.clear()
        self._topics.clear()

    def holds(self, offset: int) -> bool:
        return self._first <= offset < self._first + len(self._entries)

    def of_topic(self, topic: str, offset: int) -> list[tuple[int, Any]]:
        """``(offset, message)`` of the entries kept with routing key
        ``topic``, from ``offset`` on."""
        offsets = self._topics.get(topic)
        if not offsets:
            return []
        # from the newest back: the cost is what is handed on, not the topic's
        # whole history (a storm of resumes near the tail of a busy topic)
        wanted = []
        for o in reversed(offsets):
            if o < offset:
                break
            wanted.append(o)
        wanted.reverse()
        first, entries = self._first, self._entries
        return [(o, entries[o - first]) for o in wanted]

    def since(self, offset: int) -> list[tuple[int, Any]]:
        """``(offset, message)`` of every entry kept from ``offset`` on."""
        skip = max(0, offset - self._first)
        count = len(self._entries) - skip
        if count <= 0:
            return []
        # walk from the newest end: reads start near it
        newest = list(islice(reversed(self._entries), count))
        newest.reverse()
        return list(enumerate(newest, self._first + skip))


Entry = Callable[[int, Any], Any]
"""A log entry handler: ``(offset, message)`` where ``message`` has
``method.routing_key``, ``properties`` and ``body``."""


def _ignore(offset: int, msg: Any) -> None:
    """Entries of a log nobody follows (yet)."""


class StreamLog:
    """One stream queue: declare, follow live, read ranges, find the tail."""

    _log = Logger()

    def __init__(
        self,
        name: str,
        arguments: dict[str, Any],
        *,
        first_start: str = "next",
        prefetch: int = 512,
        probe_timeout: float = PROBE_TIMEOUT,
        probe_on_attach: bool = False,
        memory: int = 0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.name = name
        self.arguments = arguments
        #: called with (offset, message) for every entry, in order (deliver_to)
        self.on_entry: Entry = _ignore
        self._first_start = first_start
        self.prefetch = prefetch
        #: offset of the newest entry the live consumer has handled
        self.live_pos: int | None = None
        #: the newest ``memory`` entries, for reads that start among them
        self.recent = RecentEntries(memory)
        #: reads served from memory, and those that needed a stream consumer
        self.reads_from_memory = 0
        self.reads_from_stream = 0
        #: called with (expected, got) when the live consumer, resuming after
        #: a reconnect, finds that retention removed entries it had not seen
        self.on_gap: Callable[[int, int], Any] | None = None
        self._expect: int | None = None
        self._conn: Any = None
        self._publish_channel: Any = None
        self._probes: dict[str, Deferred[int]] = {}
        self._acks = AckBatcher(reactor, batch=prefetch // 4)
        #: callers of probe() waiting for the next marker / the one on its way
        self._want: list[Deferred[int]] = []
        self._probing: list[Deferred[int]] | None = None
        self._probe_call: Any = None
        self._probed_at = -1e9
        self.probe_timeout = probe_timeout
        self.probe_on_attach = probe_on_attach
        self.ready = False
        #: how many times the log was attached (a new connection each time)
        self.generation = 0
        #: times the stream was found restarted (below this node's position)
        self.restarts = 0
        self._waiting_ready: list[Deferred[None]] = []

    def deliver_to(self, on_entry: Entry, on_gap: Callable[[int, int], Any] | None = None) -> None:
        """Hand every entry the live consumer reads to ``on_entry`` (offset,
        message), in order, and retention gaps it finds to ``on_gap``
        (expected offset, offset found).  Called once, before the log is
        attached."""
        self.on_entry = on_entry
        self.on_gap = on_gap

    # -- connection life cycle -------------------------------------------------
    @inlineCallbacks
    def attach(
        self, conn: Any, channel: Any, publish_channel: Any, binds: list[tuple[str, str, Any]]
    ) -> Any:
        """Declare the stream and ``binds`` (exchange, key, arguments), start
        the live consumer, and learn the tail.  Fires once following."""
        yield self._declare(conn)
        for exchange, key, arguments in binds:
            yield channel.queue_bind(
                queue=self.name, exchange=exchange, routing_key=key, arguments=arguments
            )
        if self.live_pos is not None:
            yield self._check_position(conn, publish_channel)
        live = yield conn.channel()
        yield live.basic_qos(prefetch_count=self.prefetch)
        start: Any = self._first_start if self.live_pos is None else self.live_pos + 1
        self._expect = None if self.live_pos is None else self.live_pos + 1
        queue, _tag = yield live.basic_consume(
            queue=self.name, auto_ack=False, arguments={OFFSET_HEADER: start}
        )
        self._conn = conn
        self._publish_channel = publish_channel
        self._follow(live, queue)
        if self.live_pos is None or self.probe_on_attach:
            # the marker comes back after everything before it: then the
            # tail is known (and a table built from the stream is complete)
            self._probed_at = -1e9
            yield self.probe()
        self.generation += 1
        self.ready = True
        waiting, self._waiting_ready = self._waiting_ready, []
        for d in waiting:
            d.callback(None)

    @inlineCallbacks
    def _check_position(self, conn: Any, publish_channel: Any) -> Any:
        """After a reconnect: is the stream still the one this node read?  A
        stream deleted and declared again starts at offset 0, and following
        it from the old position would skip every new entry in silence.  A
        marker shows the real end; if it lies below the position this node
        had reached, that is logged, counted, reported as a gap (sessions
        with logged subscriptions are told to resume, which reports it), and
        the node follows the new stream from its end."""
        tail = yield self._tail_now(conn, publish_channel)
        if tail >= self.live_pos:
            return
        self.restarts += 1
        self.recent.clear()
        self._log.error(
            "stream {name} restarted: its newest entry is {tail}, but this node had read up "
            "to {pos} (was it deleted and declared again?); events of the old stream after "
            "{pos} are lost, and resumes from older positions will be refused",
            name=self.name,
            tail=tail,
            pos=self.live_pos,
        )
        expected = self.live_pos + 1
        self.live_pos = tail
        if self.on_gap is not None:
            self.on_gap(expected, tail + 1)

    @inlineCallbacks
    def _tail_now(self, conn: Any, publish_channel: Any) -> Any:
        """Write a marker and read the stream from its last chunk, on a
        channel of its own: the marker's offset if the stream ends below
        this node's position, else the position itself (nothing to report).
        Reading from the last chunk keeps this cheap on a busy stream."""
        token = uuid.uuid4().hex
        position = self.live_pos
        yield publish_channel.basic_publish(
            exchange="",
            routing_key=self.name,
            body=b"",
            properties=pika.BasicProperties(headers={MARKER_HEADER: token}),
        )
        channel = yield conn.channel()
        try:
            yield channel.basic_qos(prefetch_count=self.prefetch)
            queue, _tag = yield channel.basic_consume(
                queue=self.name, auto_ack=False, arguments={OFFSET_HEADER: "last"}
            )
            while True:
                msg = yield queue.get().addTimeout(self.probe_timeout, self._reactor)
                channel.basic_ack(msg.method.delivery_tag)
                headers = msg.properties.headers or {}
                offset = headers.get(OFFSET_HEADER, -1)
                if offset >= position:
                    return position  # the stream reaches where this node was
                if headers.get(MARKER_HEADER) in (token, token.encode()):
                    return offset  # it ends below: a new stream
        finally:
            if channel.is_open:
                channel.close()

    @inlineCallbacks
    def _declare(self, conn: Any) -> Any:
        channel = yield conn.channel()
        try:
            yield channel.queue_declare(queue=self.name, durable=True, arguments=self.arguments)
        except ChannelClosedByBroker as e:
            if e.reply_code != 406:
                raise
            # the stream exists with other arguments (set by hand, or the
            # retention settings changed): use it as it is
            self._log.warn(
                "stream {name} exists with other arguments than configured ({reason}); "
                "using it as it is (change retention with a RabbitMQ policy)",
                name=self.name,
                reason=e.reply_text,
            )
            channel = yield conn.channel()
            yield channel.queue_declare(queue=self.name, passive=True)
        if channel.is_open:
            channel.close()

    def detach(self) -> None:
        """The connection is gone: readers and probes fail, following stops."""
        self._conn = None
        self._publish_channel = None
        self.ready = False
        probes, self._probes = self._probes, {}
        for d in probes.values():
            d.errback(LogUnavailable())
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        self._probe_call = None
        waiting, self._want = self._want, []
        for d in waiting:
            d.errback(LogUnavailable())

    def wait_attached(self, after: int) -> Deferred[None]:
        """Fires once the log is followed on a connection newer than
        generation ``after`` (a reader that lost generation ``after``'s
        connection waits for the next one; cancel to stop waiting)."""
        if self.ready and self.generation > after:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting_ready.remove(d))
        self._waiting_ready.append(d)
        return d

    def wait_ready(self) -> Deferred[None]:
        """Fires once the log is followed and its tail is known."""
        if self.ready:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._waiting_ready.remove(d))
        self._waiting_ready.append(d)
        return d

    # -- following -------------------------------------------------------------------
    def _follow(self, channel: Any, queue: Any) -> None:
        consume_directly(
            queue,
            lambda msg: self._entry(channel, msg),
            reconnect_when_cancelled(self._conn, f"stream {self.name}"),
        )

    def _entry(self, channel: Any, msg: Any) -> None:
        self._acks.later(channel, msg.method.delivery_tag)
        headers = msg.properties.headers or {}
        offset = headers.get(OFFSET_HEADER)
        if offset is None or (self.live_pos is not None and offset <= self.live_pos):
            return
        if self._expect is not None:
            expected, self._expect = self._expect, None
            if offset > expected and self.on_gap is not None:
                self._log.error(
                    "stream {name}: entries {a}..{b} were removed by retention before "
                    "this node read them",
                    name=self.name,
                    a=expected,
                    b=offset - 1,
                )
                self.on_gap(expected, offset)
        self.live_pos = offset
        marker = headers.get(MARKER_HEADER)
        self.recent.append(offset, None if marker is not None else msg)
        if marker is not None:
            d = self._probes.pop(marker.decode() if isinstance(marker, bytes) else marker, None)
            if d is not None:
                d.callback(offset)
            return
        try:
            self.on_entry(offset, msg)
        except Exception:
            self._log.failure("internal error handling stream entry {offset}", offset=offset)

    def served_from_memory(self) -> None:
        """Count a read a caller served from :attr:`recent` itself (a
        resume that looks only at its topic's entries)."""
        self.reads_from_memory += 1

    @inlineCallbacks
    def _read_recent(self, start: int, handler: Entry) -> Any:
        """Hand entries from memory on; None once the handler is done, else
        the offset to go on from (memory moved past it while the handler
        waited, or holds nothing newer yet)."""
        after = start
        while self.recent.holds(after):
            for offset, msg in self.recent.since(after):
                result = handler(offset, msg)
                after = offset + 1
                if result is True:
                    return None
                if isinstance(result, Deferred):
                    yield result
                    break  # memory may have moved on meanwhile: look again
        return after

    # -- queries ------------------------------------------------------------------------
    def tail(self) -> Deferred[int]:
        """The offset of the newest entry (a marker if need be)."""
        if self.live_pos is not None:
            return succeed(self.live_pos)
        return self.probe()

    def probe(self) -> Deferred[int]:
        """Append a marker; fire with its offset once the live consumer saw it.

        The answer is always at least as new as the call: a caller that
        arrives while a marker is on its way waits for the next one.  Markers
        are written at most once a second, and every caller waiting for the
        next one shares it, so no client can make the node write markers at
        will (a caller may wait up to a second)."""
        if self._publish_channel is None or not self._publish_channel.is_open:
            return fail(LogUnavailable())
        d: Deferred[int] = Deferred()
        self._want.append(d)
        if self._probing is None and self._probe_call is None:
            self._schedule_probe()
        return d

    def _schedule_probe(self) -> None:
        wait = self._probed_at + PROBE_INTERVAL - self._reactor.seconds()
        if wait > 0:
            self._probe_call = self._reactor.callLater(wait, self._send_probe)
        else:
            self._send_probe()

    def _send_probe(self) -> None:
        self._probe_call = None
        waiting, self._want = self._want, []
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            for w in waiting:
                w.errback(LogUnavailable())
            return
        self._probing = waiting
        self._probed_at = self._reactor.seconds()
        token = uuid.uuid4().hex
        d: Deferred[int] = Deferred(lambda _: self._probes.pop(token, None))
        self._probes[token] = d
        published = channel.basic_publish(
            exchange="",
            routing_key=self.name,
            body=b"",
            properties=pika.BasicProperties(headers={MARKER_HEADER: token}),
        )

        def failed(f: Any) -> None:
            probe = self._probes.pop(token, None)
            if probe is not None:
                probe.errback(LogUnavailable())

        published.addErrback(failed)
        # a marker that never comes back means the stream is not working
        # (no leader in a cluster, say): fail, so the connection is retried
        d.addTimeout(self.probe_timeout, self._reactor)

        def answer(result: Any) -> None:
            answered, self._probing = self._probing or [], None
            for w in answered:
                if isinstance(result, Failure):
                    w.errback(result.value if result.check(LogUnavailable) else LogUnavailable())
                else:
                    w.callback(result)
            if self._want and self._probe_call is None:
                self._schedule_probe()

        d.addBoth(answer)

    @inlineCallbacks
    def read(self, start: int, handler: Entry) -> Any:
        """Hand entries from offset ``start`` on to ``handler`` until it
        returns true; a Deferred makes the read wait for it, then go on.
        Markers reach the handler as ``None`` messages.  The first offset
        the handler sees is the first the stream has from ``start`` on, so
        one above ``start`` means retention removed the rest.

        Entries still in memory (:class:`RecentEntries`) are handed on from
        there; a stream consumer reads only what memory does not hold."""
        if self.recent.holds(start):
            self.reads_from_memory += 1
            start = yield self._read_recent(start, handler)
            if start is None:
                return
        self.reads_from_stream += 1
        conn = self._conn
        if conn is None or not conn.is_open:
            raise LogUnavailable()
        try:
            channel = yield conn.channel()
        except Exception:  # the connection went away meanwhile
            raise LogUnavailable()
        acks = AckBatcher(self._reactor, batch=self.prefetch // 4)
        try:
            try:
                yield channel.basic_qos(prefetch_count=self.prefetch)
                queue, _tag = yield channel.basic_consume(
                    queue=self.name, auto_ack=False, arguments={OFFSET_HEADER: start}
                )
            except Exception:
                raise LogUnavailable()
            while True:
                try:
                    msg = yield queue.get()
                except Exception:
                    raise LogUnavailable()
                acks.later(channel, msg.method.delivery_tag)
                headers = msg.properties.headers or {}
                offset = headers.get(OFFSET_HEADER, -1)
                if offset < start:
                    continue
                if MARKER_HEADER in headers:
                    msg = None
                more = handler(offset, msg)
                if isinstance(more, Deferred):
                    yield more  # the handler's consumer is full: wait for it
                elif more:
                    return
        finally:
            acks.flush()
            if channel.is_open:
                channel.close()
