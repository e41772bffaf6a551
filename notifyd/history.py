"""
Event history: resume, ``get_events`` and retained events, on the stream log.

Publication ids of logged events are stream offsets plus one, so they mean
the same on every node.  (Events of topics without history keep random ids,
drawn at or above :data:`RANDOM_ID_FLOOR`, so the two never meet.)

*Resume* (see :mod:`notifyd.resume`): :meth:`History.resume` replays the log
after a publication id into a stand-in for the session, at the pace of the
client's socket, until it reaches the live consumer's position.

*Retained events* live in a second stream fed by a headers exchange (only
messages with ``wamp-retain: true``); every node reads it from the start and
keeps the newest retained event per topic, so a restart rebuilds the table
from RabbitMQ.

History and retained events go through the same checks as live events: the
topic must match the subscription and the event's targeting headers must
admit the session.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred, inlineCallbacks, succeed

from notifyd.bindings import Bindings
from notifyd.events import HEADER_RETAIN, BadEvent, InboundEvent, decode_delivery
from notifyd.ingest import LOG_HEADER, LogWriter, is_checked, log_exchange
from notifyd.logs import Logger
from notifyd.streams import LogUnavailable, StreamLog
from notifyd.topics import MATCH_EXACT, PatternSet, matches
from notifyd.uris import ERROR_LOG_UNAVAILABLE, ERROR_NOT_RECOVERED
from notifyd.wamp import NotifydEvent, WampError, make_event

if TYPE_CHECKING:
    from notifyd.broker import Subscriber, Subscription

#: retained events carry ids from this range (retained-stream offset + base)
RETAINED_ID_BASE = 2**51


class HistoryError(WampError):
    """A history request that cannot be served; ``uri`` is the WAMP error."""


class _LogBinder:
    """Keys served by the log need no binding of their own."""

    def bind(self, key: str) -> Deferred[None]:
        return succeed(None)

    def unbind(self, key: str) -> Deferred[None]:
        return succeed(None)


class ReplayReader(Protocol):
    """The session a replay is for (a :class:`notifyd.session.WampSession`)."""

    def send_event(self, event: NotifydEvent) -> None: ...

    def writable(self) -> Deferred[None] | None: ...


class ReplayTarget(Protocol):
    """Who a replay writes to (a :class:`notifyd.resume.Catchup`): it
    stands in for ``session`` in the subscription (and is checked against
    the events' targeting in its place) and tracks how far the replay got."""

    session_id: int
    authid: str | None
    authrole: str | None
    authextra: dict[str, Any] | None
    session: ReplayReader
    #: the newest publication id the session has
    last: int
    #: False once the replay reached the live consumer
    replaying: bool


class FairReaders:
    """At most ``limit`` log readers at once, handed out round-robin between
    the sessions waiting for one: a session asking for thirty replays gets
    one turn in each round, not thirty turns before anybody else."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.running = 0
        #: owner -> its waiting requests, in the order owners first asked
        self._waiting: dict[Any, list[Deferred[None]]] = {}

    def acquire(self, owner: Any) -> Deferred[None]:
        """Fires when ``owner`` may read; cancel it to stop waiting."""
        if self.running < self.limit and not self._waiting:
            self.running += 1
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            queue = self._waiting.get(owner, [])
            if d in queue:
                queue.remove(d)
                if not queue:
                    del self._waiting[owner]

        d: Deferred[None] = Deferred(cancel)
        self._waiting.setdefault(owner, []).append(d)
        return d

    def release(self) -> None:
        """A reader is done: the next owner in turn gets its slot."""
        self.running -= 1
        while self._waiting and self.running < self.limit:
            owner = next(iter(self._waiting))
            queue = self._waiting.pop(owner)
            d = queue.pop(0)
            if queue:  # back of the line for the owner's next request
                self._waiting[owner] = queue
            self.running += 1
            d.callback(None)


@dataclass
class HistorySettings:
    """What :class:`History` needs from the configuration."""

    patterns: PatternSet
    max_message_size: int
    max_events: int = 1000
    scan_limit: int = 10_000
    readers: int = 8
    #: a replay whose client does not read for this long is given up
    stall_timeout: float = 60.0
    #: retained events older than this (seconds) are not delivered
    retained_max_age: float = 30 * 86400.0
    #: most topics in the retained table (the oldest updates go first)
    max_retained: int = 100_000
    #: a replay or get_events cut off by a lost connection waits this long
    #: for the log to be followed again, then fails with log_unavailable
    reconnect_wait: float = 30.0


def _decode(offset: int, msg: Any, max_size: int, base: int = 1) -> InboundEvent:
    """The event of a log entry; BadEvent for one that did not come through
    the ingest step or cannot be decoded."""
    if not is_checked(msg):
        raise BadEvent("unchecked", "entry was not written by notifyd's ingest step")
    event = decode_delivery(msg.method.routing_key, msg.properties, msg.body, max_size)
    event.publication = offset + base
    return event


class History:
    """Resume, history queries and retained events of one node."""

    _log = Logger()

    def __init__(
        self,
        settings: HistorySettings,
        log: StreamLog,
        retained: StreamLog,
        clock: Any = None,
        writer: LogWriter | None = None,
    ) -> None:
        self.settings = settings
        #: the ingest step feeding both streams (None in unit tests)
        self.writer = writer
        self.patterns = settings.patterns
        self.log = log
        self.retained_log = retained
        #: binding keys of subscriptions the log serves entirely: "bound"
        #: while the log is followed, with no binding of this node's queue
        self.bindings = Bindings()
        #: topic -> (newest retained event, its time), oldest update first
        self.retained: dict[str, tuple[InboundEvent, float]] = {}
        self._readers = FairReaders(settings.readers)
        #: replays and get_events calls that lost the log and waited for it
        self.interrupted = 0
        #: told which session a replay sent an event that asked for a
        #: receipt (notifyd.receipts.Receipts.delivered; set by the router)
        self.on_receipt: Callable[[InboundEvent, list[Any]], None] | None = None
        #: undecodable entries skipped, by reason
        self.skipped: Counter[str] = Counter()
        self._reported: set[tuple[int, int]] = set()
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        retained.deliver_to(self.on_retained_entry)

    def deliver_to(
        self, on_entry: Callable[[int, str, Any], object], on_gap: Callable[[int, int], object]
    ) -> None:
        """Hand the event log's live entries to ``on_entry`` (offset, topic,
        the entry for :meth:`event_of`), after the ingest step's duplicate
        check has seen them, and the gaps the log finds to ``on_gap``.
        Called once, by the router."""
        seen = self.writer.seen if self.writer is not None else None

        def entry(offset: int, msg: Any) -> None:
            if seen is not None:
                seen(msg)
            topic = msg.method.routing_key
            # not UTF-8: matches no subscription
            on_entry(offset, topic if type(topic) is str else "", msg)

        self.log.deliver_to(entry, on_gap)

    # -- connection life cycle (called by the AMQP service) ---------------------------
    @inlineCallbacks
    def attach(self, conn: Any, channel: Any, publish_channel: Any, exchange: str) -> Any:
        """Declare the log and the retained store, and follow both.  Both
        streams are fed only by the ingest step (:mod:`notifyd.ingest`),
        through the headers exchange ``<exchange>.log``."""
        log_ex = log_exchange(exchange)
        yield channel.exchange_declare(exchange=log_ex, exchange_type="headers", durable=True)
        yield self.log.attach(
            conn, channel, publish_channel, [(log_ex, "", {"x-match": "all", LOG_HEADER: True})]
        )
        yield self.retained_log.attach(
            conn,
            channel,
            publish_channel,
            [(log_ex, "", {"x-match": "all", HEADER_RETAIN: True})],
        )
        yield self._drop_direct_routes(channel, exchange)
        if self.writer is not None:
            yield self.writer.attach(conn, channel, exchange)
        yield self.bindings.attach(_LogBinder())

    @inlineCallbacks
    def _drop_direct_routes(self, channel: Any, exchange: str) -> Any:
        """Versions before the ingest step bound the streams to the events
        exchange directly, past every check: remove those routes."""
        for key in self.patterns.keys:
            yield channel.queue_unbind(queue=self.log.name, exchange=exchange, routing_key=key)
        old = f"{exchange}.retained"
        yield channel.exchange_declare(exchange=old, exchange_type="headers", durable=True)
        yield channel.exchange_unbind(destination=old, source=exchange, routing_key="#")
        yield channel.queue_unbind(
            queue=self.retained_log.name,
            exchange=old,
            routing_key="",
            arguments={"x-match": "all", HEADER_RETAIN: True},
        )

    def detach(self) -> None:
        """RabbitMQ is gone."""
        if self.writer is not None:
            self.writer.detach()
        self.log.detach()
        self.retained_log.detach()
        self.bindings.detach()

    def event_of(self, offset: int, msg: Any, base: int = 1) -> InboundEvent | None:
        """The event of the entry at ``offset``, or None: an entry that cannot
        be decoded is skipped (counted; logged once), never fatal to a
        replay, a live fan-out or ``get_events``."""
        try:
            return _decode(offset, msg, self.settings.max_message_size, base)
        except BadEvent as e:
            self.skipped[e.reason] += 1
            key = (base, offset)
            if key not in self._reported:
                if len(self._reported) >= 10_000:
                    self._reported.clear()
                self._reported.add(key)
                self._log.warn(
                    "skipped {which} entry {offset}: {reason}",
                    which="event-log" if base == 1 else "retained",
                    offset=offset,
                    reason=str(e),
                )
            return None

    def covers(self, key: str) -> bool:
        """Are all events a subscription with binding key ``key`` gets logged?"""
        return self.patterns.covers(key)

    def on_retained_entry(self, offset: int, msg: Any) -> None:
        """The retained stream's live consumer: keep the newest per topic."""
        event = self.event_of(offset, msg, RETAINED_ID_BASE + 1)
        if event is not None:
            event.retained = True
            stamp = event.extra.get("x_timestamp") or self._clock.seconds()
            table = self.retained
            table.pop(event.topic, None)  # re-insert: the order is by update
            table[event.topic] = (event, stamp)
            while len(table) > self.settings.max_retained:
                del table[next(iter(table))]

    # -- positions -----------------------------------------------------------------
    @inlineCallbacks
    def position(self) -> Any:
        """The publication id of the newest logged entry.  Fails at once
        (:class:`LogUnavailable`) while the log is not followed, so a page
        render asking for it never hangs on a RabbitMQ outage."""
        if not self.log.ready:
            raise LogUnavailable()
        tail = yield self.log.tail()
        return tail + 1

    # -- resume --------------------------------------------------------------------------
    @inlineCallbacks
    def resume(
        self, catchup: ReplayTarget, sub: Subscription, after: int, on_ready: Callable[[], None]
    ) -> Any:
        """Replay the log after publication id ``after`` into ``catchup``.

        ``on_ready()`` is called once the replay is known to be complete (so
        SUBSCRIBED goes out before the first replayed EVENT); on failure a
        :class:`HistoryError` is raised before ``on_ready`` was called.
        """
        try:
            tail_id = yield self.position()
            if after > tail_id:
                # the client may come from a node whose consumer is ahead of
                # this one: find the log's real end before calling it unknown
                tail_id = (yield self.log.probe()) + 1
        except LogUnavailable:
            raise HistoryError(ERROR_LOG_UNAVAILABLE, "the event log is not reachable right now")
        if after > tail_id:
            raise HistoryError(
                ERROR_NOT_RECOVERED,
                f"publication {after} is not in the event log (newest is {tail_id})",
                requested=after,
                position=tail_id,
            )
        if after == tail_id:
            catchup.last = after
            catchup.replaying = False
            on_ready()
            return 0
        yield self._readers.acquire(catchup.session_id)
        try:
            sent = [0]  # EVENTs replayed, over every attempt
            ready: list[bool] = []

            def ready_once() -> None:
                if not ready:
                    ready.append(True)
                    on_ready()

            while True:
                generation = self.log.generation
                try:
                    yield self._replay(catchup, sub, catchup.last, ready_once, sent)
                    return sent[0]
                except LogUnavailable:
                    # RabbitMQ went away mid-replay (a restart, a failover):
                    # go on from the entry it reached once the log is back
                    yield self._log_back(generation)
                    if not sub.holds(catchup.session_id, catchup, waiting=False):
                        return sent[0]  # unsubscribed or gone meanwhile
        finally:
            self._readers.release()

    @inlineCallbacks
    def _log_back(self, generation: int) -> Any:
        """Wait (at most ``reconnect_wait``) until the log is followed on a
        connection newer than ``generation`` (the one a read lost); else
        :class:`HistoryError` ``log_unavailable``."""
        self.interrupted += 1
        waiting = self.log.wait_attached(generation)
        try:
            yield waiting.addTimeout(self.settings.reconnect_wait, self._clock)
        except defer.TimeoutError:
            raise HistoryError(
                ERROR_LOG_UNAVAILABLE,
                f"the event log was not back within {self.settings.reconnect_wait:g} s",
            )

    @inlineCallbacks
    def _replay(
        self,
        catchup: ReplayTarget,
        sub: Subscription,
        after: int,
        on_ready: Callable[[], None],
        sent: list[int],
    ) -> Any:
        start = after  # the offset of publication id after + 1
        session = catchup.session
        state: dict[str, Any] = {"first": True, "gap": None}
        log = self.log

        def handle(offset: int, msg: Any) -> Any:
            if not sub.holds(catchup.session_id, catchup, waiting=False):
                return True  # unsubscribed or gone meanwhile
            if state["first"]:
                state["first"] = False
                # after 0 means "all the log still has": no gap to report
                if offset > start and start != 0:
                    state["gap"] = offset + 1
                    return True
                on_ready()
            if msg is not None and matches(sub.topic, sub.match, msg.method.routing_key):
                self._replay_entry(catchup, sub, offset, msg, sent)
            catchup.last = offset + 1
            if log.live_pos is not None and offset >= log.live_pos:
                catchup.replaying = False
                return True
            return self._paced(session)

        try:
            if sub.match == MATCH_EXACT and log.recent.holds(start) and log.live_pos is not None:
                if (yield self._replay_recent(catchup, sub, on_ready, sent)):
                    return
                start = catchup.last  # memory moved past it: the stream goes on from there
            yield log.read(start, handle)
        except defer.TimeoutError:
            raise HistoryError(
                ERROR_LOG_UNAVAILABLE,
                f"the client read nothing for {self.settings.stall_timeout:g} s during its replay",
            )
        if state["gap"] is not None:
            raise HistoryError(
                ERROR_NOT_RECOVERED,
                f"events after publication {after} are no longer in the event log "
                f"(the oldest kept is {state['gap']})",
                requested=after,
                first=state["gap"],
                position=(log.live_pos or 0) + 1,
            )

    def _replay_entry(
        self, catchup: ReplayTarget, sub: Subscription, offset: int, msg: Any, sent: list[int]
    ) -> None:
        """Send the log entry at ``offset`` to the resuming session, if its
        targeting admits the session."""
        event = self.event_of(offset, msg)
        if event is not None and (not event.filtered or event.receives(catchup)):
            catchup.session.send_event(make_event(sub, event))
            sent[0] += 1
            if event.receipt and self.on_receipt is not None:
                self.on_receipt(event, [catchup])

    def _paced(self, session: ReplayReader) -> Deferred[None] | None:
        """None if the client's socket takes more; else a Deferred that fires
        once it does (failing after ``stall_timeout``): a long replay goes at
        the pace of the client's socket."""
        waiting = session.writable()
        if waiting is not None:
            waiting.addTimeout(self.settings.stall_timeout, self._clock)
        return waiting

    @inlineCallbacks
    def _replay_recent(
        self,
        catchup: ReplayTarget,
        sub: Subscription,
        on_ready: Callable[[], None],
        sent: list[int],
    ) -> Any:
        """The replay of an exact subscription whose start the log's memory
        holds: only the entries of its topic are looked at, so thousands of
        resumes at once (a node died) cost little each.  True once done (or
        the session left); False if memory moved past the replay while the
        client's socket was full (the caller goes on from the stream)."""
        log = self.log
        recent = log.recent
        session = catchup.session
        log.served_from_memory()
        on_ready()
        while True:
            after = catchup.last  # the next offset to look at
            if not recent.holds(after) and after <= (log.live_pos or 0):
                return False
            for offset, msg in recent.of_topic(sub.topic, after):
                if not sub.holds(catchup.session_id, catchup, waiting=False):
                    return True  # unsubscribed or gone meanwhile
                self._replay_entry(catchup, sub, offset, msg, sent)
                catchup.last = offset + 1
                waiting = self._paced(session)
                if waiting is not None:
                    yield waiting
                    break  # entries came and went meanwhile: look again
            else:
                # every entry up to the live consumer's position is handled
                catchup.last = (log.live_pos or 0) + 1
                catchup.replaying = False
                return True

    # -- get_events ------------------------------------------------------------------------
    @inlineCallbacks
    def get_events(self, session: Subscriber, sub: Subscription, limit: int) -> Any:
        """Up to ``limit`` newest logged events of ``sub`` that ``session``
        may see, oldest first, as dicts (``publication``, ``topic``,
        ``timestamp``, ``args``, ``kwargs``)."""
        limit = max(0, min(limit, self.settings.max_events))
        if limit == 0:
            return []
        try:
            tail_id = yield self.position()
        except LogUnavailable:
            raise HistoryError(ERROR_LOG_UNAVAILABLE, "the event log is not reachable right now")
        yield self._readers.acquire(session.session_id)
        try:
            found: list[dict[str, Any]] = []
            end = tail_id - 1  # newest offset
            window = max(256, 4 * limit)
            scanned = 0
            while end >= 0 and len(found) < limit and scanned < self.settings.scan_limit:
                window = min(window, self.settings.scan_limit - scanned)
                start = max(0, end - window + 1)
                generation = self.log.generation
                try:
                    batch, first = yield self._scan(session, sub, start, end)
                except LogUnavailable:
                    # RabbitMQ restarted: read the window again
                    yield self._log_back(generation)
                    continue
                found[:0] = batch
                scanned += end - start + 1
                if first is not None and first > start:
                    break  # retention removed what lies before
                end = start - 1
                window *= 4
            return found[-limit:]
        finally:
            self._readers.release()

    @inlineCallbacks
    def _scan(self, session: Subscriber, sub: Subscription, start: int, end: int) -> Any:
        """The events of ``sub`` for ``session`` at offsets ``start..end``,
        and the first offset the log had from ``start`` on."""
        batch: list[dict[str, Any]] = []
        first: list[int] = []

        def handle(offset: int, msg: Any) -> bool:
            if not first:
                first.append(offset)
            if offset > end:
                return True
            if msg is not None and matches(sub.topic, sub.match, msg.method.routing_key):
                event = self.event_of(offset, msg)
                if event is not None and (not event.filtered or event.receives(session)):
                    batch.append(_as_dict(event, sub))
            return offset >= end

        yield self.log.read(start, handle)
        return batch, first[0] if first else None

    # -- retained ---------------------------------------------------------------------------
    @inlineCallbacks
    def retained_for(self, session: Subscriber, sub: Subscription) -> Any:
        """The retained events ``session`` gets on subscribing to ``sub``."""
        if not self.retained_log.ready:
            yield self.retained_log.wait_ready()
        if sub.match == "exact":
            entry = self.retained.get(sub.topic)
            candidates = [entry] if entry is not None else []
        else:
            candidates = [e for t, e in self.retained.items() if matches(sub.topic, sub.match, t)]
        oldest = self._clock.seconds() - self.settings.retained_max_age
        events = [
            e
            for e, stamp in candidates
            if stamp >= oldest and (not e.filtered or e.receives(session))
        ]
        if self.on_receipt is not None:
            for e in events:
                if e.receipt:
                    self.on_receipt(e, [session])
        return [make_event(sub, e) for e in events]


def _as_dict(event: InboundEvent, sub: Subscription) -> dict[str, Any]:
    out: dict[str, Any] = {
        "publication": event.publication,
        "topic": event.topic,
        "subscription": sub.id,
        "args": event.args or [],
        "kwargs": event.kwargs or {},
    }
    timestamp = event.extra.get("x_timestamp") if event.extra else None
    if timestamp is not None:
        out["timestamp"] = timestamp
    return out
