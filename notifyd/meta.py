"""
The procedures a client may CALL: WAMP's session and subscription meta API,
event history, and notifyd's log position.  No I/O of its own.

notifyd has no dealer: these built-in procedures are the only ones.  Every
answer is about this node (a session on another node behind the load balancer
is not counted) and shows only subscriptions the caller could hold itself:
a subscription whose topic the caller may not subscribe to does not exist for
it (``wamp.error.no_such_subscription``, ``null`` or left out of lists).
``wamp.session.count`` and ``wamp.subscription.list_subscribers`` reveal
other sessions: only roles in ``meta_api_roles`` may call them.

=================================== =============================================
``wamp.session.count``              ``([authroles])`` → sessions on this node
``wamp.subscription.list``          ``()`` → ``{"exact": [id…], "prefix": […],
                                    "wildcard": […]}``
``wamp.subscription.lookup``        ``(topic, {"match": m})`` → id or ``null``
``wamp.subscription.match``         ``(topic)`` → ``[id…]`` or ``null``
``wamp.subscription.get``           ``(id)`` → ``{"id", "created", "uri",
                                    "match"}``
``wamp.subscription.list_subscribers`` ``(id)`` → ``[session id…]``
``wamp.subscription.count_subscribers`` ``(id)`` → number
``wamp.subscription.get_events``    ``(id, limit=10)`` → the newest logged
                                    events, oldest first (see docs/history.md)
``notifyd.history.position``        ``()`` → publication id of the newest
                                    logged event (resume from there)
=================================== =============================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import maybeDeferred

from notifyd import wamp
from notifyd.history import ERROR_HISTORY_UNAVAILABLE, ERROR_LOG_UNAVAILABLE
from notifyd.streams import LogUnavailable
from notifyd.topics import MATCH_POLICIES, InvalidTopic, matches, validate_pattern, validate_topic

if TYPE_CHECKING:
    from notifyd.broker import Subscription
    from notifyd.session import WampSession


#: get_events calls one session may have running (they share the node's readers)
MAX_HISTORY_CALLS = 2
ERROR_BUSY = "notifyd.error.busy"


class CallError(wamp.WampError):
    """A CALL answered with ERROR ``uri``."""


def _arg(args: list[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = ...) -> Any:
    if len(args) > i:
        return args[i]
    if name in kwargs:
        return kwargs[name]
    if default is ...:
        raise CallError(wamp.ERROR_INVALID_ARGUMENT, f"missing argument {name!r}")
    return default


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise CallError(wamp.ERROR_INVALID_ARGUMENT, f"{name} must be an integer")
    return value


class MetaApi:
    """Answers the built-in procedures for one session."""

    def __init__(self) -> None:
        self._procedures: dict[str, Callable[..., Any]] = {
            "wamp.session.count": self.session_count,
            "wamp.subscription.list": self.subscription_list,
            "wamp.subscription.lookup": self.subscription_lookup,
            "wamp.subscription.match": self.subscription_match,
            "wamp.subscription.get": self.subscription_get,
            "wamp.subscription.list_subscribers": self.list_subscribers,
            "wamp.subscription.count_subscribers": self.count_subscribers,
            "wamp.subscription.get_events": self.get_events,
            "notifyd.history.position": self.position,
        }

    def __contains__(self, procedure: str) -> bool:
        return procedure in self._procedures

    def call(
        self, session: WampSession, procedure: str, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``procedure``; a Deferred of the result (CallError on failure)."""
        return maybeDeferred(self._procedures[procedure], session, args, kwargs)

    # -- helpers -----------------------------------------------------------------
    @staticmethod
    def _visible(session: WampSession, sub: Subscription) -> bool:
        authorizer = session.router.policy.authorizer
        return authorizer.may_subscribe(session.identity(), sub.topic, sub.match)

    def _subscription(self, session: WampSession, args: list, kwargs: dict) -> Subscription:
        sid = _int(_arg(args, kwargs, 0, "subscription"), "subscription")
        sub = session.router.broker.get(sid)
        if sub is None or not self._visible(session, sub):
            raise CallError(wamp.ERROR_NO_SUCH_SUBSCRIPTION, f"no subscription {sid}")
        return sub

    # -- procedures -----------------------------------------------------------------
    @staticmethod
    def _may_see_sessions(session: WampSession) -> None:
        if session.authrole not in session.router.policy.meta_roles:
            raise CallError(
                wamp.ERROR_NOT_AUTHORIZED,
                f"{session.authrole!r} may not see other sessions (meta_api_roles)",
            )

    def session_count(self, session: WampSession, args: list, kwargs: dict) -> int:
        self._may_see_sessions(session)
        roles = _arg(args, kwargs, 0, "filter_authroles", None)
        sessions = session.router.sessions.values()
        if roles is None:
            return len(sessions)
        if not isinstance(roles, list):
            raise CallError(wamp.ERROR_INVALID_ARGUMENT, "filter_authroles must be a list")
        return sum(1 for s in sessions if s.authrole in roles)

    def subscription_list(self, session: WampSession, args: list, kwargs: dict) -> dict:
        out: dict[str, list[int]] = {m: [] for m in MATCH_POLICIES}
        for sub in session.router.broker.subscriptions():
            if self._visible(session, sub):
                out[sub.match].append(sub.id)
        return out

    def subscription_lookup(self, session: WampSession, args: list, kwargs: dict) -> int | None:
        topic = _arg(args, kwargs, 0, "topic")
        options = _arg(args, kwargs, 1, "options", None) or {}
        if not isinstance(options, dict):
            raise CallError(wamp.ERROR_INVALID_ARGUMENT, "options must be an object")
        match = options.get("match", "exact")
        try:
            validate_pattern(topic, match)
        except InvalidTopic as e:
            raise CallError(wamp.ERROR_INVALID_ARGUMENT, str(e))
        sub = session.router.broker.lookup(topic, match)
        return sub.id if sub is not None and self._visible(session, sub) else None

    def subscription_match(self, session: WampSession, args: list, kwargs: dict) -> Any:
        topic = _arg(args, kwargs, 0, "topic")
        try:
            validate_topic(topic)
        except InvalidTopic as e:
            raise CallError(wamp.ERROR_INVALID_ARGUMENT, str(e))
        ids = [
            sub.id
            for sub in session.router.broker.subscriptions()
            if matches(sub.topic, sub.match, topic) and self._visible(session, sub)
        ]
        return ids or None

    def subscription_get(self, session: WampSession, args: list, kwargs: dict) -> dict:
        sub = self._subscription(session, args, kwargs)
        return {"id": sub.id, "created": sub.created, "uri": sub.topic, "match": sub.match}

    def list_subscribers(self, session: WampSession, args: list, kwargs: dict) -> list[int]:
        self._may_see_sessions(session)
        sub = self._subscription(session, args, kwargs)
        return list(sub.subscribers)

    def count_subscribers(self, session: WampSession, args: list, kwargs: dict) -> int:
        return len(self._subscription(session, args, kwargs).subscribers)

    def get_events(self, session: WampSession, args: list, kwargs: dict) -> Any:
        sub = self._subscription(session, args, kwargs)
        limit = _int(_arg(args, kwargs, 1, "limit", 10), "limit")
        history = session.router.history
        if history is None:
            raise CallError(ERROR_HISTORY_UNAVAILABLE, "this router keeps no event history")
        if not sub.logged:
            raise CallError(
                ERROR_HISTORY_UNAVAILABLE,
                f"events of {sub.topic!r} ({sub.match}) are not (all) kept in the event log",
            )
        if session.history_calls >= MAX_HISTORY_CALLS:
            raise CallError(
                ERROR_BUSY, f"at most {MAX_HISTORY_CALLS} history calls at once per session"
            )
        session.history_calls += 1

        def done(result: Any) -> Any:
            session.history_calls -= 1
            return result

        return history.get_events(session, sub, limit).addBoth(done)

    def position(self, session: WampSession, args: list, kwargs: dict) -> Any:
        history = session.router.history
        if history is None:
            raise CallError(ERROR_HISTORY_UNAVAILABLE, "this router keeps no event history")

        def unavailable(f: Any) -> Any:
            f.trap(LogUnavailable)
            raise CallError(ERROR_LOG_UNAVAILABLE, "the event log is not reachable right now")

        return history.position().addErrback(unavailable)
