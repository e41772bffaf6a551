"""
The router: one realm, its sessions, its broker and the way out to AMQP.

This is the state every WAMP session shares.  It never imports the WebSocket
or AMQP code: the AMQP service hands it deliveries through
:meth:`Router.on_delivery` and it publishes through the :class:`Publisher` it
was given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.util import id as random_id
from twisted.internet.defer import Deferred

from notifyd.auth import CraAuthenticator, TicketAuthenticator
from notifyd.authz import Authorizer
from notifyd.broker import Broker, Subscription
from notifyd.events import BadEvent, InboundEvent, Publication, decode_delivery, publication_id
from notifyd.logs import Logger
from notifyd.ratelimit import Limits

if TYPE_CHECKING:
    from notifyd.history import History
    from notifyd.revocation import KillOrder
from notifyd.stats import Stats
from notifyd.uris import CLOSE_RESUME_FAILED


class SessionHandle(Protocol):
    """What the router needs of a session (a
    :class:`notifyd.session.SessionHandle`; the router never imports it)."""

    session_id: int
    authid: str | None
    authrole: str | None
    authextra: dict[str, Any]

    def shutdown(self, reason: str = ...) -> None: ...

    def kill(self, reason: str, message: str | None = None) -> None: ...


class SessionWatcher(Protocol):
    """Told when a session joins and leaves (:class:`notifyd.presence.Presence`);
    ``cluster`` answers who is online anywhere."""

    cluster: Any

    def state(self, session: SessionHandle, state: str) -> bool: ...

    def joined(self, session: SessionHandle) -> None: ...

    def left(self, session: SessionHandle) -> None: ...


class ReceiptWatcher(Protocol):
    """Told which sessions got an event that asked for a receipt
    (:class:`notifyd.receipts.Receipts`)."""

    def delivered(self, event: InboundEvent, sessions: list[Any]) -> None: ...

    def displayed(self, session: SessionHandle, message_id: Any) -> bool: ...

    def forget(self, session: SessionHandle) -> None: ...


class PublishUnavailable(Exception):
    """RabbitMQ is not reachable right now."""


class PublishRejected(Exception):
    """RabbitMQ refused the message (a negative publisher confirm)."""


class Publisher(Protocol):
    """The AMQP side as seen by the router."""

    def publish(self, publication: Publication) -> Deferred[None]: ...


@dataclass
class Policy:
    """Who may join this realm and what sessions may do."""

    realm: str = "realm1"
    allow_anonymous: bool = False
    allow_publish: tuple[str, ...] = ()
    max_message_size: int = 1024 * 1024
    max_subscriptions: int = 200
    authorizer: Authorizer | None = None
    ticket: TicketAuthenticator | None = None
    cra: CraAuthenticator | None = None
    anonymous_role: str = "anonymous"
    #: roles that may see other sessions through the meta API
    meta_roles: tuple[str, ...] = ()
    #: per-session rate limits (a notifyd.ratelimit.Limits; None: its defaults)
    limits: Limits | None = None

    def __post_init__(self) -> None:
        if self.authorizer is None:
            self.authorizer = Authorizer(None, self.allow_publish)

    @property
    def methods(self) -> list[str]:
        """The authentication methods this router offers."""
        out = []
        if self.ticket is not None:
            out.append("ticket")
        if self.cra is not None:
            out.append("wampcra")
        if self.allow_anonymous:
            out.append("anonymous")
        return out


class Router:
    """Sessions, broker and publisher of one realm on one node."""

    _log = Logger()

    def __init__(
        self,
        broker: Broker,
        policy: Policy,
        publisher: Publisher | None = None,
        clock: Any = None,
        stats: Stats | None = None,
        *,
        history: History | None = None,
        broadcast_kill: Callable[[KillOrder], object] | None = None,
        presence: SessionWatcher | None = None,
        receipts: ReceiptWatcher | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.broker = broker
        self.policy = policy
        self.publisher = publisher
        self.sessions: dict[int, SessionHandle] = {}
        self.stats = stats if stats is not None else Stats()
        #: the event log, if topics keep history: their events come from the
        #: log's consumer (with their log position as publication id), not
        #: from this node's queue
        self.history = history
        self._logged = history.patterns.matches if history is not None else None
        #: tells every other node to end the sessions a kill order selects
        #: (the AMQP control exchange); None: this node only
        self.broadcast_kill = broadcast_kill
        #: told of every session's join and leave (notifyd.presence)
        self.presence = presence
        #: told which sessions got each event that asked for a receipt
        self.receipts = receipts
        if history is not None:
            history.deliver_to(self._timed_log_entry, self.log_gap)
            if receipts is not None:
                history.on_receipt = receipts.delivered

    @property
    def realm(self) -> str:
        return self.policy.realm

    def new_session_id(self) -> int:
        while True:
            sid = random_id()
            if sid not in self.sessions:
                return sid

    def attach(self, session: SessionHandle) -> None:
        self.sessions[session.session_id] = session
        self.stats.inc("sessions_opened")
        if self.presence is not None:
            self.presence.joined(session)

    def detach(self, session: SessionHandle) -> None:
        if self.sessions.pop(session.session_id, None) is not None:
            self.broker.detach(session)
            self.stats.inc("sessions_closed")
            if self.presence is not None:
                self.presence.left(session)
            if self.receipts is not None:
                self.receipts.forget(session)

    def kill(self, order: KillOrder, broadcast: bool = True) -> list[int]:
        """End this node's sessions that ``order`` (a
        :class:`notifyd.revocation.KillOrder`) selects, with GOODBYE
        ``order.reason``; with ``broadcast``, tell the other nodes too.
        Returns the ids of the sessions ended here."""
        killed = [sid for sid, session in list(self.sessions.items()) if order.selects(session)]
        for sid in killed:
            session = self.sessions.get(sid)
            if session is not None:
                session.kill(order.reason, order.message)
        if killed:
            self.stats.inc("sessions_killed", len(killed))
        if broadcast and self.broadcast_kill is not None:
            self.broadcast_kill(order)
        return killed

    def log_gap(self, expected: int, got: int) -> None:
        """Retention removed log entries before this node read them (it was
        cut off from RabbitMQ for longer than the retention): its sessions
        may have missed events.  Each subscribed session gets GOODBYE
        ``notifyd.close.resume_failed``; on reconnect its resume reports the
        gap to the client."""
        self.stats.inc("log_gaps")
        overlaps = self.history.patterns.overlaps
        affected = {
            sid
            for sub in self.broker.subscriptions()
            if sub.logged or overlaps(sub.key)
            for sid in sub.session_ids()
        }
        for sid in affected:
            session = self.sessions.get(sid)
            if session is not None:
                session.shutdown(CLOSE_RESUME_FAILED)

    def on_delivery(self, routing_key: str, properties: Any, body: bytes) -> int:
        """Fan one AMQP delivery out; raise :class:`BadEvent` to reject it.

        With history, topics the log keeps are skipped here: the log's
        consumer delivers them (with their log position as publication id).
        """
        subs = None
        if type(routing_key) is str:
            logged = self._logged
            if logged is not None and logged(routing_key):
                return 0  # the event log's consumer delivers it
            # before any decoding: a delivery no subscription here wants (a
            # compacted group binding brings the group's every topic, or the
            # subscription just went) costs a lookup, nothing more
            subs = self.broker.match(routing_key)
            for sub in subs:
                if sub.has_subscribers:
                    break
            else:
                self.stats.inc("events_unwanted")
                return 0
        try:
            event = decode_delivery(routing_key, properties, body, self.policy.max_message_size)
        except BadEvent as e:
            self.stats.inc_labelled("events_rejected", e.reason)
            raise
        if not event.publication:  # no wamp-publication header
            event.publication = publication_id()
        return self._fan_out(event, subs)

    def _timed_log_entry(self, offset: int, topic: str, entry: object) -> None:
        started = perf_counter()
        self.on_log_entry(offset, topic, entry)
        self.stats.latency.observe(perf_counter() - started)

    def on_log_entry(self, offset: int, topic: str, entry: object) -> int:
        """Fan one event-log entry out (publication id: offset + 1); the
        event log decodes ``entry`` only if a subscription wants ``topic``."""
        subs = [sub for sub in self.broker.match(topic, ready=False) if sub.has_subscribers]
        if not subs:
            self.stats.inc("log_entries_skipped")
            return 0
        event = self.history.event_of(offset, entry)
        if event is None:
            return 0
        return self._fan_out(event, subs)

    def _fan_out(self, event: InboundEvent, subs: list[Subscription] | None = None) -> int:
        self.stats.inc("events_received")
        if event.receipt and self.receipts is not None:
            sent: list[Any] = []
            n = self.broker.dispatch(event, subs, sent)
            self.receipts.delivered(event, sent)
        else:
            n = self.broker.dispatch(event, subs)
        self.stats.inc("events_delivered", n)
        return n
