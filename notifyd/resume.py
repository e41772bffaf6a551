"""
Resume: a SUBSCRIBE with ``_resume_after`` gets what it missed, then live
events, each once and in order.  No network I/O.

A SUBSCRIBE with the option ``_resume_after: X`` (X: the last publication id
the client saw) puts a :class:`Catchup` in the subscription where the session
would be.  It drops live events while the event log
(:meth:`notifyd.history.History.resume`) replays from X's successor; the
replay ends once it reaches the live consumer's position, and from then on the
Catchup passes live events with an id above the last one replayed, then hands
the slot back to the session.  If the log no longer holds X's successor, the
SUBSCRIBE fails with ``notifyd.error.not_recovered`` and nothing is delivered.

Further SUBSCRIBEs of the same (topic, match) while the resume runs
(:func:`join`) get its outcome: SUBSCRIBED once it is known, or, if it failed,
the same ERROR (or a plain subscription if they did not ask for a resume).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from autobahn.wamp import message
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

from notifyd.broker import Broker, Subscriber, Subscription
from notifyd.history import RETAINED_ID_BASE, History, HistoryError
from notifyd.logs import Logger
from notifyd.stats import Stats
from notifyd.topics import binding_key
from notifyd.uris import (
    CLOSE_RESUME_FAILED,
    ERROR_HISTORY_UNAVAILABLE,
    ERROR_INVALID_ARGUMENT,
    ERROR_LOG_UNAVAILABLE,
    ERROR_TOO_MANY_SUBSCRIPTIONS,
)
from notifyd.wamp import NotifydEvent

#: SUBSCRIBE option: replay the event log after this publication id first
OPTION_RESUME_AFTER = "_resume_after"

_log = Logger()


class ResumingSession(Subscriber, Protocol):
    """What a resume needs of its session (a
    :class:`notifyd.session.WampSession`)."""

    @property
    def is_open(self) -> bool: ...

    def send(self, msg: message.Message) -> None: ...

    def writable(self) -> Deferred[None] | None: ...

    def error(self, request_type: int, request: int, uri: str, text: str) -> None: ...

    def track(
        self, d: Deferred[Subscription], subscribed: Callable[[Subscription], object]
    ) -> None: ...

    def subscribe_plain(self, request: int, topic: str, match: str, get_retained: bool) -> None: ...

    def send_retained(self, events: list[NotifydEvent]) -> None: ...

    def shutdown(self, reason: str = ...) -> None: ...


class Catchup:
    """Stands in for a session in a subscription while it resumes."""

    __slots__ = (
        "session",
        "sub",
        "last",
        "replaying",
        "answered",
        "followers",
        "session_id",
        "authid",
        "authrole",
        "authextra",
    )

    def __init__(self, session: ResumingSession, sub: Subscription | None, last: int) -> None:
        self.session = session
        self.sub = sub
        #: the newest publication id the session has (or had before resuming)
        self.last = last
        self.replaying = True
        #: SUBSCRIBED was sent
        self.answered = False
        #: (request, asked for a resume) of the SUBSCRIBEs waiting for the outcome
        self.followers: list[tuple[int, bool]] = []
        self.session_id = session.session_id
        self.authid = session.authid
        self.authrole = session.authrole
        self.authextra = session.authextra

    def send_event(self, event: NotifydEvent) -> None:
        """A live event: passed on only once the replay is over, and only if
        the replay has not sent it already."""
        if self.replaying or event.publication <= self.last:
            return
        self.session.send_event(event)
        # from here on live events are all new: hand the slot back
        if self.sub is not None:
            self.sub.hand_back(self.session_id, self, self.session)


def join(
    session: ResumingSession,
    broker: Broker,
    limit: int,
    topic: str,
    match: str,
    request: int,
    resuming: bool,
) -> bool:
    """A SUBSCRIBE for a (topic, match) ``session`` is still resuming: answer
    it with the resume's outcome (the replay already covers it) and return
    True; False if no resume of it runs (then it is an ordinary SUBSCRIBE)."""
    sub = broker.lookup(topic, match)
    if sub is None:
        return False
    entry = sub.slot(session.session_id)
    # a Catchup that failed has left the subscription; one that still
    # replays has not handed over to live delivery yet
    if not isinstance(entry, Catchup) or not entry.replaying:
        return False
    if entry.answered:
        session.send(message.Subscribed(request, sub.id))
    elif len(entry.followers) >= limit:
        session.error(
            message.Subscribe.MESSAGE_TYPE,
            request,
            ERROR_TOO_MANY_SUBSCRIPTIONS,
            "too many SUBSCRIBEs waiting for the same resume",
        )
    else:
        entry.followers.append((request, resuming))
    return True


def start(
    session: ResumingSession,
    broker: Broker,
    history: History | None,
    stats: Stats,
    msg: message.Subscribe,
    match: str,
    after: Any,
) -> None:
    """SUBSCRIBE ``msg`` with ``_resume_after: after``: replay the event
    log, then live."""
    request = msg.request
    if type(after) is not int or not 0 <= after < RETAINED_ID_BASE:
        session.error(
            msg.MESSAGE_TYPE,
            request,
            ERROR_INVALID_ARGUMENT,
            f"{OPTION_RESUME_AFTER} must be a publication id from the event log",
        )
        return
    if history is None or not history.covers(binding_key(msg.topic, match)):
        session.error(
            msg.MESSAGE_TYPE,
            request,
            ERROR_HISTORY_UNAVAILABLE,
            "this router keeps no event history"
            if history is None
            else f"events of {msg.topic!r} ({match}) are not (all) kept in the event log",
        )
        return
    catchup = Catchup(session, None, after)
    catchup.followers.append((request, True))

    def ready(sub: Subscription, retained: list[NotifydEvent]) -> None:
        catchup.answered = True
        if session.is_open:
            for req, _ in catchup.followers:
                session.send(message.Subscribed(req, sub.id))
            # the retained events first: the replay is newer than they are
            session.send_retained(retained)

    def subscribed(sub: Subscription) -> None:
        catchup.sub = sub
        retained = history.retained_for(session, sub) if msg.get_retained else succeed([])
        retained.addCallback(replay, sub).addErrback(failed, sub)

    def replay(events: list[NotifydEvent], sub: Subscription) -> None:
        resumed = history.resume(catchup, sub, after, lambda: ready(sub, events))
        resumed.addCallbacks(done, failed, errbackArgs=(sub,))

    def done(n: int) -> None:
        stats.inc("events_replayed", n)

    def failed(f: Failure, sub: Subscription) -> None:
        if not session.is_open or not sub.holds(session.session_id, catchup):
            return  # closed or unsubscribed meanwhile: nobody to tell
        if not f.check(HistoryError):
            _log.failure("resume failed", f)
            f = Failure(HistoryError(ERROR_LOG_UNAVAILABLE, "the replay failed; try again"))
        e = f.value
        broker.unsubscribe(session, sub.id)
        stats.inc("resumes_failed")
        if catchup.answered:  # SUBSCRIBED is out: only a new session can be told
            session.shutdown(CLOSE_RESUME_FAILED)
            return
        for req, resuming in catchup.followers:
            if resuming:
                session.send(
                    message.Error(
                        msg.MESSAGE_TYPE, req, e.uri, args=[e.text], kwargs=e.details or None
                    )
                )
            else:  # it never asked for a resume: it gets a plain subscription
                session.subscribe_plain(req, msg.topic, match, False)

    session.track(broker.subscribe(session, msg.topic, match, stand_in=catchup), subscribed)
