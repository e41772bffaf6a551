"""
The broker: subscriptions and fan-out.  No network I/O.

Semantics (WAMP v2 basic and advanced profile, as Crossbar.io does them):

* One subscription per (topic, match policy) on this node, with one id shared
  by every session subscribed to it; a session subscribing twice gets the same
  id.  The last subscriber leaving deletes the subscription and releases its
  AMQP binding key.
* Exact subscriptions are found with one dict lookup; wildcard subscriptions
  are indexed by their number of components; prefix subscriptions are tested
  with ``str.startswith``.
* A subscriber joins the fan-out only once its subscription's binding is
  confirmed by RabbitMQ (``subscribe()``'s Deferred fires then), so it never
  gets an EVENT for a subscription it has not seen SUBSCRIBED for.
* :meth:`Broker.dispatch` builds one EVENT per matching subscription and
  hands the same message object to every subscriber; the transport encodes it
  once per serializer.  Events are dispatched in the order they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from autobahn.util import id as random_id
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from notifyd.bindings import Bindings
from notifyd.events import InboundEvent
from notifyd.logs import Logger
from notifyd.topics import MATCH_EXACT, MATCH_PREFIX, MATCH_WILDCARD, binding_key, wildcard_matches
from notifyd.wamp import NotifydEvent, make_event


class Subscriber(Protocol):
    """What the broker needs of a session."""

    session_id: int
    authid: str | None
    authrole: str | None
    authextra: dict[str, Any] | None

    def send_event(self, event: NotifydEvent) -> None: ...


class LogCoverage(Protocol):
    """What the broker needs of the event log (a
    :class:`notifyd.history.History`): which subscriptions it serves
    entirely, and the bindings standing for them."""

    bindings: Bindings

    def covers(self, key: str) -> bool: ...


class NoSuchSubscription(KeyError):
    """The session holds no subscription with that id."""


@dataclass(eq=False)
class Subscription:
    """One (topic, match) on this node and its subscribers."""

    id: int
    topic: str
    match: str
    key: str
    #: session id -> who receives its events (the session, or a stand-in)
    _live: dict[int, Subscriber] = field(default_factory=dict)
    #: the same for sessions waiting for the subscription's binding
    _pending: dict[int, Subscriber] = field(default_factory=dict)
    ready: bool = False
    parts: tuple[str, ...] = ()
    created: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="milliseconds")
    )
    #: all its events are in the event log (no binding of this node's queue)
    logged: bool = False
    _bindings: Bindings | None = None
    _bound: Deferred[None] | None = None
    _waiters: list[Deferred[Subscription]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self._live and not self._pending

    @property
    def has_subscribers(self) -> bool:
        """Does anybody receive its events now?"""
        return bool(self._live)

    def count(self) -> int:
        """How many sessions receive its events now."""
        return len(self._live)

    def subscriber_ids(self) -> list[int]:
        """The sessions receiving its events now."""
        return list(self._live)

    def session_ids(self) -> set[int]:
        """Every session holding it, also those waiting for its binding."""
        return {*self._live, *self._pending}

    def slot(self, session_id: int) -> Subscriber | None:
        """Who stands in the slot of session ``session_id`` (the session
        itself or its stand-in), live or waiting; None if it holds none."""
        return self._pending.get(session_id) or self._live.get(session_id)

    def holds(self, session_id: int, entry: Subscriber, *, waiting: bool = True) -> bool:
        """Is ``entry`` in the slot of ``session_id`` (with ``waiting=False``:
        and receiving events already)?"""
        if self._live.get(session_id) is entry:
            return True
        return waiting and self._pending.get(session_id) is entry

    def hand_back(self, session_id: int, stand_in: Subscriber, session: Subscriber) -> None:
        """A stand-in's work is done: ``session`` receives the events
        itself from now on (nothing happens if ``stand_in`` left meanwhile)."""
        if self._live.get(session_id) is stand_in:
            self._live[session_id] = session


class Broker:
    """All subscriptions of one node."""

    _log = Logger()

    def __init__(
        self,
        bindings: Bindings,
        new_id: Callable[[], int] = random_id,
        history: LogCoverage | None = None,
    ) -> None:
        self.bindings = bindings
        self.history = history
        self._new_id = new_id
        self._by_id: dict[int, Subscription] = {}
        self._by_key: dict[tuple[str, str], Subscription] = {}
        self._exact: dict[str, Subscription] = {}
        self._prefix: dict[str, Subscription] = {}
        self._wildcard: dict[int, dict[str, Subscription]] = {}
        self._of_session: dict[int, dict[int, Subscription]] = {}
        bindings.on_detach.append(self._bindings_lost)
        if history is not None:
            history.bindings.on_detach.append(self._bindings_lost)

    # -- queries ---------------------------------------------------------
    def subscriptions(self) -> list[Subscription]:
        return list(self._by_id.values())

    def get(self, subscription_id: int) -> Subscription | None:
        return self._by_id.get(subscription_id)

    def lookup(self, topic: str, match: str) -> Subscription | None:
        return self._by_key.get((topic, match))

    def of_session(self, session_id: int) -> list[Subscription]:
        return list(self._of_session.get(session_id, {}).values())

    def match(self, topic: str, ready: bool = True) -> list[Subscription]:
        """Every subscription that receives ``topic``: only ready ones (whose
        binding RabbitMQ confirmed), or with ``ready=False`` also those
        waiting for a re-bind.  The event log's deliveries use the latter:
        their sessions got SUBSCRIBED already and the log, unlike this
        node's queue, kept every event while the binding was away."""
        found: list[Subscription] = []
        sub = self._exact.get(topic)
        if sub is not None and (sub.ready or not ready):
            found.append(sub)
        prefixes = self._prefix
        if prefixes:
            if len(prefixes) > len(topic):
                # many prefix subscriptions (per user): look up each prefix
                # of the topic instead of testing every subscription
                for end in range(len(topic) + 1):
                    sub = prefixes.get(topic[:end])
                    if sub is not None and (sub.ready or not ready):
                        found.append(sub)
            else:
                for prefix, sub in prefixes.items():
                    if (sub.ready or not ready) and topic.startswith(prefix):
                        found.append(sub)
        if self._wildcard:
            parts = topic.split(".")
            for sub in self._wildcard.get(len(parts), {}).values():
                if (sub.ready or not ready) and wildcard_matches(sub.parts, parts):
                    found.append(sub)
        return found

    # -- subscribe / unsubscribe ----------------------------------------------
    def subscribe(
        self,
        session: Subscriber,
        topic: str,
        match: str,
        stand_in: Subscriber | None = None,
    ) -> Deferred[Subscription]:
        """Subscribe ``session``; fires with the subscription once it is live.

        ``topic`` must already be validated for ``match``.  ``stand_in``, if
        given, takes the session's place in the fan-out (a resuming session's
        :class:`notifyd.resume.Catchup`).
        """
        sub = self._by_key.get((topic, match))
        if sub is None:
            sub = self._create(topic, match)
        sid = session.session_id
        d: Deferred[Subscription] = Deferred(lambda d: self._cancel_wait(sub, d))
        if sid in sub._live and sub.ready:
            d.callback(sub)
            return d
        if stand_in is not None:
            sub._live.pop(sid, None)
            sub._pending[sid] = stand_in
        elif sid not in sub._live:
            sub._pending[sid] = session
        self._of_session.setdefault(sid, {})[sub.id] = sub
        if sub.ready:
            self._activate(sub, sid)
            d.callback(sub)
        else:
            sub._waiters.append(d)
        return d

    def unsubscribe(self, session: Subscriber, subscription_id: int) -> Subscription:
        """Remove ``session`` from a subscription it holds."""
        sid = session.session_id
        subs = self._of_session.get(sid, {})
        sub = subs.get(subscription_id)
        if sub is None or sid not in sub._live:
            raise NoSuchSubscription(subscription_id)
        self._remove(sub, sid)
        return sub

    def detach(self, session: Subscriber) -> int:
        """Drop every subscription of a closed session; return how many."""
        subs = self._of_session.pop(session.session_id, {})
        for sub in subs.values():
            self._remove(sub, session.session_id, index=False)
        return len(subs)

    # -- fan-out -----------------------------------------------------------
    def dispatch(
        self,
        event: InboundEvent,
        subs: list[Subscription] | None = None,
        sent: list[Any] | None = None,
    ) -> int:
        """Send ``event`` to every entitled subscriber; return how many.
        ``subs``: ``match(event.topic)`` if the caller has it already;
        ``sent``: a list to append every session it went to (receipts)."""
        if sent is not None:
            return self._dispatch_recorded(event, subs, sent)
        delivered = 0
        filtered = event.filtered
        for sub in self.match(event.topic) if subs is None else subs:
            msg = make_event(sub, event)
            if filtered:
                for session in sub._live.values():
                    if event.receives(session):
                        session.send_event(msg)
                        delivered += 1
            else:
                for session in sub._live.values():
                    session.send_event(msg)
                delivered += len(sub._live)
        return delivered

    def _dispatch_recorded(
        self, event: InboundEvent, subs: list[Subscription] | None, sent: list[Any]
    ) -> int:
        for sub in self.match(event.topic) if subs is None else subs:
            msg = make_event(sub, event)
            for session in sub._live.values():
                if event.receives(session):
                    session.send_event(msg)
                    sent.append(session)
        return len(sent)

    # -- internals -----------------------------------------------------------
    def _create(self, topic: str, match: str) -> Subscription:
        sub = Subscription(
            id=self._new_id(), topic=topic, match=match, key=binding_key(topic, match)
        )
        while sub.id in self._by_id:
            sub.id = self._new_id()
        self._by_id[sub.id] = sub
        self._by_key[(topic, match)] = sub
        if match == MATCH_EXACT:
            self._exact[topic] = sub
        elif match == MATCH_PREFIX:
            self._prefix[topic] = sub
        elif match == MATCH_WILDCARD:
            sub.parts = tuple(topic.split("."))
            self._wildcard.setdefault(len(sub.parts), {})[topic] = sub
        bindings = self.bindings
        if self.history is not None and self.history.covers(sub.key):
            sub.logged = True
            bindings = self.history.bindings
        sub._bindings = bindings
        sub._bound = bindings.acquire(sub.key)
        sub._bound.addCallbacks(lambda _: self._became_ready(sub), self._ignore_cancel)
        return sub

    def _bindings_lost(self) -> None:
        """RabbitMQ is gone: every subscription waits for its re-bind, so a
        SUBSCRIBE made meanwhile gets SUBSCRIBED only once events can flow."""
        for sub in self._by_id.values():
            if sub.ready:
                sub.ready = False
                sub._bound = sub._bindings.wait(sub.key)
                sub._bound.addCallbacks(
                    lambda _, sub=sub: self._became_ready(sub), self._ignore_cancel
                )

    @staticmethod
    def _ignore_cancel(f: Failure) -> None:
        f.trap(CancelledError)

    def _became_ready(self, sub: Subscription) -> None:
        sub.ready = True
        sub._bound = None
        waiters, sub._waiters = sub._waiters, []
        for sid in list(sub._pending):
            self._activate(sub, sid)
        for d in waiters:
            d.callback(sub)

    def _activate(self, sub: Subscription, sid: int) -> None:
        session = sub._pending.pop(sid, None)
        if session is not None:
            sub._live[sid] = session

    def _cancel_wait(self, sub: Subscription, d: Deferred[Subscription]) -> None:
        if d in sub._waiters:
            sub._waiters.remove(d)

    def _remove(self, sub: Subscription, sid: int, index: bool = True) -> None:
        sub._live.pop(sid, None)
        sub._pending.pop(sid, None)
        if index:
            subs = self._of_session.get(sid)
            if subs is not None:
                subs.pop(sub.id, None)
                if not subs:
                    del self._of_session[sid]
        if sub.empty:
            self._delete(sub)

    def _delete(self, sub: Subscription) -> None:
        del self._by_id[sub.id]
        del self._by_key[(sub.topic, sub.match)]
        if sub.match == MATCH_EXACT:
            del self._exact[sub.topic]
        elif sub.match == MATCH_PREFIX:
            del self._prefix[sub.topic]
        else:
            group = self._wildcard[len(sub.parts)]
            del group[sub.topic]
            if not group:
                del self._wildcard[len(sub.parts)]
        if sub._bound is not None:
            sub._bound.cancel()
            sub._bound = None
        for d in sub._waiters:
            d.cancel()
        sub._waiters = []
        sub._bindings.release(sub.key)
