"""
The procedures a client may CALL: WAMP's session and subscription meta API,
event history, and notifyd's log position.  No I/O of its own.

notifyd has no dealer: these built-in procedures are the only ones.  Every
answer is about this node (a session on another node behind the load balancer
is not counted) and shows only subscriptions the caller could hold itself:
a subscription whose topic the caller may not subscribe to does not exist for
it (``wamp.error.no_such_subscription``, ``null`` or left out of lists).
``wamp.session.count``, ``wamp.subscription.list_subscribers`` and the
``wamp.session.kill*`` procedures reach other sessions: only roles in
``meta_api_roles`` may call them (others get ``wamp.error.not_authorized``).

=================================== =============================================
``wamp.session.count``              ``([authroles])`` → sessions on this node
``wamp.session.kill``               ``(session_id, reason=, message=)`` →
                                    ``null``; the session gets GOODBYE
                                    ``reason`` (default ``wamp.close.killed``).
                                    The caller's own id, or one not on this
                                    node: ``wamp.error.no_such_session`` (the
                                    order still goes to the other nodes)
``wamp.session.kill_by_authid``     ``(authid, reason=, message=)`` → ids of
                                    the sessions killed on this node; every
                                    node kills that authid's sessions, the
                                    caller excepted
``wamp.session.kill_by_authrole``   ``(authrole, reason=, message=)`` → the
                                    same, by authrole
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

Kills follow the WAMP meta API (as Crossbar.io answers them); they also go to
every other node through the control exchange (see
:mod:`notifyd.revocation`).

Bounded cost: every CALL takes a token from the session's CALL bucket
(:mod:`notifyd.ratelimit`).  A call whose work grows with the node (a walk
over all its subscriptions, or all subscribers of one) takes one more token
per :data:`SCAN_PER_TOKEN` entries walked, so one session spamming
``wamp.subscription.list`` on a busy node is slowed down in proportion;
answered ``notifyd.error.rate_limited`` when the bucket is short.
``wamp.subscription.match`` uses the broker's own index, not a walk.
``filter_authroles`` takes at most :data:`MAX_FILTER_ROLES` roles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import maybeDeferred

from notifyd import uris, wamp
from notifyd.authz import Identity
from notifyd.revocation import KillOrder, check_message, check_reason
from notifyd.streams import LogUnavailable
from notifyd.topics import MATCH_POLICIES, InvalidTopic, validate_pattern, validate_topic
from notifyd.uris import (
    CLOSE_KILLED,
    ERROR_BUSY,
    ERROR_HISTORY_UNAVAILABLE,
    ERROR_LOG_UNAVAILABLE,
    ERROR_NO_SUCH_SESSION,
    ERROR_RATE_LIMITED,
)

if TYPE_CHECKING:
    from notifyd.broker import Subscription
    from notifyd.router import Router


#: get_events calls one session may have running (they share the node's readers)
MAX_HISTORY_CALLS = 2
#: entries a meta call may walk per extra CALL token it takes
SCAN_PER_TOKEN = 1000
#: most roles in wamp.session.count's filter_authroles
MAX_FILTER_ROLES = 100


class Caller(Protocol):
    """The calling session as the meta API sees it (a
    :class:`notifyd.session.WampSession`, which imports this module)."""

    router: Router
    session_id: int
    authid: str | None
    authrole: str | None
    history_calls: int

    def identity(self) -> Identity: ...

    def charge_call(self, tokens: int) -> bool: ...


class CallError(wamp.WampError):
    """A CALL answered with ERROR ``uri``."""


def _arg(args: list[Any], kwargs: dict[str, Any], i: int, name: str, default: Any = ...) -> Any:
    if len(args) > i:
        return args[i]
    if name in kwargs:
        return kwargs[name]
    if default is ...:
        raise CallError(uris.ERROR_INVALID_ARGUMENT, f"missing argument {name!r}")
    return default


def _int(value: Any, name: str) -> int:
    if type(value) is not int:
        raise CallError(uris.ERROR_INVALID_ARGUMENT, f"{name} must be an integer")
    return value


class MetaApi:
    """Answers the built-in procedures for one session."""

    def __init__(self) -> None:
        self._procedures: dict[str, Callable[..., Any]] = {
            "wamp.session.count": self.session_count,
            "wamp.session.kill": self.session_kill,
            "wamp.session.kill_by_authid": self.session_kill_by_authid,
            "wamp.session.kill_by_authrole": self.session_kill_by_authrole,
            "wamp.subscription.list": self.subscription_list,
            "wamp.subscription.lookup": self.subscription_lookup,
            "wamp.subscription.match": self.subscription_match,
            "wamp.subscription.get": self.subscription_get,
            "wamp.subscription.list_subscribers": self.list_subscribers,
            "wamp.subscription.count_subscribers": self.count_subscribers,
            "wamp.subscription.get_events": self.get_events,
            "notifyd.history.position": self.position,
            "notifyd.presence.lookup": self.presence_lookup,
            "notifyd.presence.state": self.presence_state,
            "notifyd.receipt.displayed": self.receipt_displayed,
        }

    def __contains__(self, procedure: str) -> bool:
        return procedure in self._procedures

    def call(self, session: Caller, procedure: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run ``procedure``; a Deferred of the result (CallError on failure)."""
        return maybeDeferred(self._procedures[procedure], session, args, kwargs)

    # -- helpers -----------------------------------------------------------------
    @staticmethod
    def _visible(session: Caller, sub: Subscription) -> bool:
        authorizer = session.router.policy.authorizer
        return authorizer.may_subscribe(session.identity(), sub.topic, sub.match)

    def _subscription(self, session: Caller, args: list, kwargs: dict) -> Subscription:
        sid = _int(_arg(args, kwargs, 0, "subscription"), "subscription")
        sub = session.router.broker.get(sid)
        if sub is None or not self._visible(session, sub):
            raise CallError(uris.ERROR_NO_SUCH_SUBSCRIPTION, f"no subscription {sid}")
        return sub

    @staticmethod
    def _charge(session: Caller, entries: int) -> None:
        """A call that walks ``entries`` things takes tokens in proportion."""
        extra = entries // SCAN_PER_TOKEN
        if extra and not session.charge_call(extra):
            session.router.stats.inc_labelled("rate_limited", "call")
            raise CallError(ERROR_RATE_LIMITED, "too many expensive CALLs; slow down")

    # -- procedures -----------------------------------------------------------------
    @staticmethod
    def _may_see_sessions(session: Caller) -> None:
        if session.authrole not in session.router.policy.meta_roles:
            raise CallError(
                uris.ERROR_NOT_AUTHORIZED,
                f"{session.authrole!r} may not see other sessions (meta_api_roles)",
            )

    def presence_lookup(self, session: Caller, args: list, kwargs: dict) -> dict:
        """Who is online in the whole cluster (docs/presence.md): kwargs
        ``authid``, or ``claim`` and ``value``; meta roles only."""
        self._may_see_sessions(session)
        presence = session.router.presence
        if presence is None:
            raise CallError(uris.ERROR_PRESENCE_OFF, "presence is off on this node (presence)")
        table = presence.cluster
        self._charge(session, sum(len(s) for s in table.nodes.values()))
        try:
            return table.answer(dict(kwargs))
        except ValueError as e:
            raise CallError(uris.ERROR_INVALID_ARGUMENT, str(e)) from None

    def presence_state(self, session: Caller, args: list, kwargs: dict) -> bool:
        """The caller's browser says how present its user is: ``active``,
        ``idle`` or ``hidden`` (any session, about itself only)."""
        presence = session.router.presence
        if presence is None:
            raise CallError(uris.ERROR_PRESENCE_OFF, "presence is off on this node (presence)")
        state = _arg(args, kwargs, 0, "state")
        try:
            return presence.state(session, state)
        except ValueError as e:
            raise CallError(uris.ERROR_INVALID_ARGUMENT, str(e)) from None

    def receipt_displayed(self, session: Caller, args: list, kwargs: dict) -> bool:
        """The caller's browser displayed the event with ``message_id`` (its
        ``details.x_message_id``) in a visible tab (any session, for events
        it was sent only)."""
        receipts = session.router.receipts
        if receipts is None:
            raise CallError(uris.ERROR_RECEIPTS_OFF, "receipts are off on this node (receipts)")
        message_id = _arg(args, kwargs, 0, "message_id")
        if not isinstance(message_id, str):
            raise CallError(uris.ERROR_INVALID_ARGUMENT, "message_id must be a string")
        if not receipts.displayed(session, message_id):
            raise CallError(
                uris.ERROR_NO_RECEIPT,
                "no event with this message_id and a receipt was sent to this session",
            )
        return True

    def session_count(self, session: Caller, args: list, kwargs: dict) -> int:
        self._may_see_sessions(session)
        roles = _arg(args, kwargs, 0, "filter_authroles", None)
        sessions = session.router.sessions
        if roles is None:
            return len(sessions)
        if (
            not isinstance(roles, list)
            or len(roles) > MAX_FILTER_ROLES
            or not all(isinstance(r, str) for r in roles)
        ):
            raise CallError(
                uris.ERROR_INVALID_ARGUMENT,
                f"filter_authroles must be a list of at most {MAX_FILTER_ROLES} strings",
            )
        self._charge(session, len(sessions))
        wanted = set(roles)
        return sum(1 for s in sessions.values() if s.authrole in wanted)

    # kills: WAMP meta API names, Crossbar.io's answers
    @staticmethod
    def _may_kill(session: Caller) -> None:
        if session.authrole not in session.router.policy.meta_roles:
            raise CallError(
                uris.ERROR_NOT_AUTHORIZED,
                f"{session.authrole!r} may not kill sessions (meta_api_roles)",
            )

    @staticmethod
    def _close_args(args: list, kwargs: dict) -> tuple[str, str | None]:
        reason = _arg(args, kwargs, 1, "reason", None)
        try:
            return (
                check_reason(CLOSE_KILLED if reason is None else reason),
                check_message(_arg(args, kwargs, 2, "message", None)),
            )
        except ValueError as e:
            raise CallError(uris.ERROR_INVALID_ARGUMENT, str(e))

    @staticmethod
    def _name(args: list, kwargs: dict, name: str) -> str:
        value = _arg(args, kwargs, 0, name)
        if not isinstance(value, str) or not value:
            raise CallError(uris.ERROR_INVALID_ARGUMENT, f"{name} must be a non-empty string")
        return value

    def session_kill(self, session: Caller, args: list, kwargs: dict) -> None:
        self._may_kill(session)
        target = _int(_arg(args, kwargs, 0, "session_id"), "session_id")
        reason, text = self._close_args(args, kwargs)
        if target == session.session_id:
            # as the WAMP spec says: a session cannot kill itself this way
            raise CallError(ERROR_NO_SUCH_SESSION, f"no session with ID {target} to kill")
        killed = session.router.kill(KillOrder(session=target, reason=reason, message=text))
        if not killed:
            raise CallError(
                ERROR_NO_SUCH_SESSION, f"no session with ID {target} exists on this node"
            )
        return None

    def session_kill_by_authid(self, session: Caller, args: list, kwargs: dict) -> list:
        self._may_kill(session)
        authid = self._name(args, kwargs, "authid")
        reason, text = self._close_args(args, kwargs)
        order = KillOrder(authid=authid, reason=reason, message=text, exclude=session.session_id)
        return session.router.kill(order)

    def session_kill_by_authrole(self, session: Caller, args: list, kwargs: dict) -> list:
        self._may_kill(session)
        authrole = self._name(args, kwargs, "authrole")
        reason, text = self._close_args(args, kwargs)
        order = KillOrder(
            authrole=authrole, reason=reason, message=text, exclude=session.session_id
        )
        return session.router.kill(order)

    def subscription_list(self, session: Caller, args: list, kwargs: dict) -> dict:
        subs = session.router.broker.subscriptions()
        self._charge(session, len(subs))
        visible = session.router.policy.authorizer.subscribe_checker(session.identity())
        out: dict[str, list[int]] = {m: [] for m in MATCH_POLICIES}
        for sub in subs:
            if visible(sub.topic, sub.match):
                out[sub.match].append(sub.id)
        return out

    def subscription_lookup(self, session: Caller, args: list, kwargs: dict) -> int | None:
        topic = _arg(args, kwargs, 0, "topic")
        options = _arg(args, kwargs, 1, "options", None) or {}
        if not isinstance(options, dict):
            raise CallError(uris.ERROR_INVALID_ARGUMENT, "options must be an object")
        match = options.get("match", "exact")
        try:
            validate_pattern(topic, match)
        except InvalidTopic as e:
            raise CallError(uris.ERROR_INVALID_ARGUMENT, str(e))
        sub = session.router.broker.lookup(topic, match)
        return sub.id if sub is not None and self._visible(session, sub) else None

    def subscription_match(self, session: Caller, args: list, kwargs: dict) -> Any:
        topic = _arg(args, kwargs, 0, "topic")
        try:
            validate_topic(topic)
        except InvalidTopic as e:
            raise CallError(uris.ERROR_INVALID_ARGUMENT, str(e))
        subs = session.router.broker.match(topic, ready=False)
        self._charge(session, len(subs))
        visible = session.router.policy.authorizer.subscribe_checker(session.identity())
        ids = [sub.id for sub in subs if visible(sub.topic, sub.match)]
        return ids or None

    def subscription_get(self, session: Caller, args: list, kwargs: dict) -> dict:
        sub = self._subscription(session, args, kwargs)
        return {"id": sub.id, "created": sub.created, "uri": sub.topic, "match": sub.match}

    def list_subscribers(self, session: Caller, args: list, kwargs: dict) -> list[int]:
        self._may_see_sessions(session)
        sub = self._subscription(session, args, kwargs)
        self._charge(session, sub.count())
        return sub.subscriber_ids()

    def count_subscribers(self, session: Caller, args: list, kwargs: dict) -> int:
        return self._subscription(session, args, kwargs).count()

    def get_events(self, session: Caller, args: list, kwargs: dict) -> Any:
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

    def position(self, session: Caller, args: list, kwargs: dict) -> Any:
        history = session.router.history
        if history is None:
            raise CallError(ERROR_HISTORY_UNAVAILABLE, "this router keeps no event history")

        def unavailable(f: Any) -> Any:
            f.trap(LogUnavailable)
            raise CallError(ERROR_LOG_UNAVAILABLE, "the event log is not reachable right now")

        return history.position().addErrback(unavailable)
