"""
One WAMP session, as a plain state machine.  No network I/O.

The WebSocket protocol (:mod:`notifyd.websocket`) parses frames into
``autobahn.wamp.message`` objects and calls :meth:`WampSession.on_message`;
the session answers through the :class:`Transport` it was given.

States and what is accepted in each:

========== =================================================================
NEW        HELLO → WELCOME (anonymous), CHALLENGE (ticket, wampcra — also
           for an unknown wampcra authid) or ABORT
           (``wamp.error.no_such_realm``, ``wamp.error.no_auth_method``,
           ``wamp.error.not_authorized``,
           ``wamp.error.authentication_failed`` for a wampcra authid no user
           can have).  ABORT from the client closes.  Anything else: ABORT
           ``wamp.error.protocol_violation``.
CHALLENGED AUTHENTICATE → WELCOME or ABORT ``wamp.error.authentication_failed``
           (the same text for an unknown wampcra user as for a wrong
           secret; the log line says why, never with the secret).
OPEN       SUBSCRIBE, UNSUBSCRIBE, PUBLISH, CALL (the meta procedures of
           :mod:`notifyd.meta`; others → ERROR
           ``wamp.error.no_such_procedure``), REGISTER/UNREGISTER (→ ERROR
           ``wamp.error.feature_not_supported``), CANCEL (ignored), GOODBYE
           (→ GOODBYE ``wamp.close.goodbye_and_out``, then close), ABORT.
           SUBSCRIBE, CALL and PUBLISH over the session's rate limits (see
           :mod:`notifyd.ratelimit`) → ERROR ``notifyd.error.rate_limited``
           (PUBLISH: only with ``acknowledge``), the session stays open.
           Messages only a router sends (WELCOME, EVENT, …) or a second HELLO:
           ABORT ``wamp.error.protocol_violation``.
CLOSING    we sent GOODBYE; the client's GOODBYE closes the transport.
CLOSED     everything is ignored.
========== =================================================================

Router-initiated ends of an OPEN session:

=========================== ==================================================
:meth:`WampSession.shutdown` GOODBYE (``wamp.close.system_shutdown``), waits for
                            the client's GOODBYE (CLOSING).
ticket expiry               GOODBYE ``wamp.close.auth_expired``, then close.
:meth:`WampSession.kill`    (a kill order, :mod:`notifyd.revocation`): GOODBYE
                            with the order's reason (``wamp.close.killed``)
                            and message, then close at once.
=========================== ==================================================

In all three the subscriptions end at once: no EVENT follows the GOODBYE.

A protocol violation ends only this session: ABORT, then the WebSocket is
closed.  Other sessions and the process carry on.

A session authenticated with a ticket ends when the ticket expires: at
``exp`` its subscriptions are dropped at once and it gets GOODBYE
``wamp.close.auth_expired`` before the connection is closed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, Protocol

from autobahn.util import generate_token
from autobahn.wamp import message
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from notifyd import resume, uris, wamp
from notifyd.auth import AuthFailed, Principal
from notifyd.authz import Identity
from notifyd.broker import NoSuchSubscription, Subscription
from notifyd.events import PayloadError, encode_publication, publication_id
from notifyd.logs import Logger
from notifyd.meta import MetaApi
from notifyd.ratelimit import Limits, SessionLimits, TokenBucket
from notifyd.router import PublishRejected, PublishUnavailable, Router
from notifyd.topics import InvalidTopic, validate_pattern, validate_topic
from notifyd.uris import (
    CLOSE_AUTH_EXPIRED,
    CLOSE_KILLED,
    CLOSE_SLOW_CONSUMER,
    ERROR_RATE_LIMITED,
    ERROR_TOO_MANY_SUBSCRIPTIONS,
)


class Transport(Protocol):
    """What a session needs from its connection."""

    def send(self, msg: message.Message) -> None: ...

    def send_event(self, event: wamp.NotifydEvent) -> None: ...

    def close(self) -> None: ...

    def writable(self) -> Deferred[None] | None: ...


def _goodbye(reason: str, text: str | None) -> message.Goodbye:
    return message.Goodbye(reason=reason, message=text)


class State(enum.Enum):
    NEW = "new"
    CHALLENGED = "challenged"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


_REQUEST_TYPES = {
    message.Subscribe.MESSAGE_TYPE,
    message.Unsubscribe.MESSAGE_TYPE,
    message.Publish.MESSAGE_TYPE,
    message.Call.MESSAGE_TYPE,
    message.Register.MESSAGE_TYPE,
    message.Unregister.MESSAGE_TYPE,
}


class WampSession:
    """The router side of one WAMP session."""

    _log = Logger()
    _meta = MetaApi()

    def __init__(self, router: Router, transport: Transport, peer: str = "") -> None:
        self.router = router
        self.transport = transport
        self.peer = peer
        self.state = State.NEW
        self.session_id: int = 0
        self.authid: str | None = None
        self.authrole: str | None = None
        self.authmethod: str | None = None
        self.authextra: dict[str, Any] = {}
        self._pending: set[Deferred[Subscription]] = set()
        #: wamp.subscription.get_events calls running (see notifyd.meta)
        self.history_calls = 0
        self._challenge: tuple[str, Any] | None = None
        # the broker calls this once per delivery: no extra frame in between
        self.send_event = transport.send_event
        self._expiry: IDelayedCall | None = None
        #: this session's token buckets (set at WELCOME)
        self.limits: SessionLimits | None = None

    # -- entry points from the transport ---------------------------------------
    def on_message(self, msg: message.Message, raw: list[Any] | None = None) -> None:
        """Handle one parsed WAMP message (``raw``: the list it was parsed from)."""
        if self.state is State.CLOSED:
            return
        handler = getattr(self, f"_on_{type(msg).__name__.lower()}", None)
        if self.state in (State.NEW, State.CHALLENGED):
            if isinstance(msg, message.Hello) and self.state is State.NEW:
                self._on_hello(msg)
            elif isinstance(msg, message.Authenticate) and self.state is State.CHALLENGED:
                self._on_authenticate(msg)
            elif isinstance(msg, message.Abort):
                self._close()
            else:
                self.protocol_violation(
                    f"{type(msg).__name__.upper()} received before the session was established"
                )
            return
        if isinstance(msg, (message.Hello, message.Authenticate)) or handler is None:
            self.protocol_violation(
                f"{type(msg).__name__.upper()} is not valid from a client in an open session"
            )
            return
        if self.state is State.CLOSING and not isinstance(msg, (message.Goodbye, message.Abort)):
            return
        request = getattr(msg, "request", None)
        if type(msg).MESSAGE_TYPE in _REQUEST_TYPES and (type(request) is not int or request < 1):
            # autobahn's id check lets 0 through; WAMP ids are 1..2^53
            self.protocol_violation(f"request id {request!r} is not in 1..2^53")
            return
        if isinstance(msg, (message.Publish, message.Subscribe)):
            # autobahn's classes drop options they do not know: read them raw
            options = raw[2] if raw and len(raw) > 2 and isinstance(raw[2], dict) else {}
            handler(msg, options)
        else:
            handler(msg)

    def invalid_uri(self, raw: list[Any], reason: str) -> None:
        """A request whose URI autobahn refused to parse."""
        if self.state in (State.NEW, State.CHALLENGED):
            self.protocol_violation(reason)
            return
        if self.state is not State.OPEN:
            return
        kind = raw[0]
        request = raw[1] if len(raw) > 1 else None
        if kind not in _REQUEST_TYPES or type(request) is not int or request < 1:
            self.protocol_violation(reason)
            return
        if kind == message.Publish.MESSAGE_TYPE:
            options = raw[2] if len(raw) > 2 and isinstance(raw[2], dict) else {}
            if options.get("acknowledge") is not True:
                return
        self.error(kind, request, uris.ERROR_INVALID_URI, reason)

    def protocol_violation(self, reason: str) -> None:
        """End this session: ABORT ``wamp.error.protocol_violation``."""
        if self.state is State.CLOSED:
            return
        self._log.info("protocol violation by {peer}: {reason}", peer=self.peer, reason=reason)
        self.router.stats.inc("protocol_violations")
        self.abort(uris.ERROR_PROTOCOL_VIOLATION, reason)

    def abort(self, reason: str, text: str | None = None) -> None:
        """Send ABORT and close the transport."""
        if self.state is State.CLOSED:
            return
        self.transport.send(message.Abort(reason, message=text))
        self._close()

    def leave_slow(self) -> message.Goodbye | None:
        """The transport cannot keep up: every subscription ends now, and
        the GOODBYE it should get (``notifyd.close.slow_consumer``) is
        returned for the transport to queue behind its backlog."""
        if self.state is not State.OPEN:
            return None
        self._detach()
        self.state = State.CLOSING
        return message.Goodbye(
            reason=CLOSE_SLOW_CONSUMER,
            message="this client fell too far behind; reconnect (and resume)",
        )

    def shutdown(self, reason: str = uris.CLOSE_SYSTEM_SHUTDOWN) -> None:
        """Router-initiated close: GOODBYE, then wait for the client's."""
        if self.state is State.OPEN:
            self._detach()
            self.state = State.CLOSING
            self.transport.send(message.Goodbye(reason=reason))
        elif self.state in (State.NEW, State.CHALLENGED):
            self._close()

    def kill(self, reason: str = CLOSE_KILLED, message: str | None = None) -> None:
        """End this session now (a kill order): its subscriptions end at
        once, GOODBYE ``reason`` with ``message``, then the connection is
        closed without waiting for the client's GOODBYE."""
        if self.state is State.OPEN:
            self._log.info(
                "killing session {session} of {authid}: {reason}",
                session=self.session_id,
                authid=self.authid,
                reason=reason,
            )
            self._detach()
            self.state = State.CLOSING
            self.transport.send(_goodbye(reason, message))
            self._close()
        elif self.state in (State.NEW, State.CHALLENGED, State.CLOSING):
            self._close()

    def _expired(self) -> None:
        self._expiry = None
        if self.state is State.OPEN:
            self._log.info(
                "ticket of {authid} expired: closing session {session}",
                authid=self.authid,
                session=self.session_id,
            )
            self.router.stats.inc("sessions_expired")
            self._detach()
            self.state = State.CLOSING
            self.transport.send(
                message.Goodbye(
                    reason=CLOSE_AUTH_EXPIRED, message="the authentication ticket expired"
                )
            )
            self._close()

    def on_close(self) -> None:
        """The transport is gone."""
        self._detach()
        self.state = State.CLOSED
        self._cancel_expiry()
        for d in list(self._pending):
            d.cancel()

    # -- handlers ----------------------------------------------------------------
    def _on_hello(self, msg: message.Hello) -> None:
        policy = self.router.policy
        if msg.realm != policy.realm:
            self._refuse(uris.ERROR_NO_SUCH_REALM, f"no realm {msg.realm!r} on this router")
            return
        offered = msg.authmethods or ["anonymous"]
        self.session_id = self.router.new_session_id()
        for method in offered:
            if method not in policy.methods:
                continue
            if method == "anonymous":
                self._welcome(
                    Principal(
                        authid=generate_token(2, 5),
                        authrole=policy.anonymous_role,
                        authmethod="anonymous",
                    )
                )
                return
            if method == "ticket":
                self._challenge = ("ticket", None)
                self.state = State.CHALLENGED
                self.transport.send(message.Challenge("ticket", {}))
                return
            if method == "wampcra":
                assert policy.cra is not None
                try:
                    extra, expected = policy.cra.challenge(
                        msg.authid, self.session_id, self.router.clock.seconds()
                    )
                except AuthFailed as e:
                    self._auth_failed("wampcra", msg.authid, e)
                    return
                self._challenge = ("wampcra", (msg.authid, expected))
                self.state = State.CHALLENGED
                self.transport.send(message.Challenge("wampcra", extra))
                return
        if "anonymous" in offered and not policy.allow_anonymous and len(offered) == 1:
            self._refuse(uris.ERROR_NOT_AUTHORIZED, "anonymous access is disabled on this router")
        else:
            self._refuse(
                uris.ERROR_NO_AUTH_METHOD,
                f"none of the offered authentication methods {offered!r} is enabled "
                f"(this router offers {policy.methods!r})",
            )

    def _on_authenticate(self, msg: message.Authenticate) -> None:
        policy = self.router.policy
        method, state = self._challenge or ("", None)
        self._challenge = None
        try:
            if method == "ticket":
                assert policy.ticket is not None
                principal = policy.ticket.verify(msg.signature)
            else:
                assert policy.cra is not None
                authid, expected = state
                principal = policy.cra.check(authid, expected, msg.signature)
        except AuthFailed as e:
            self._auth_failed(method, state[0] if method == "wampcra" else None, e)
            return
        self._welcome(principal)

    def _auth_failed(self, method: str, authid: object, e: AuthFailed) -> None:
        self._log.info(
            "authentication ({method}) failed for {peer}{who}: {reason}",
            method=method,
            peer=self.peer,
            who=f" as {authid!r}" if isinstance(authid, str) else "",
            reason=e.detail,
        )
        self.router.stats.inc("auth_failures")
        self._refuse(e.uri, e.reason)

    def _refuse(self, uri: str, text: str) -> None:
        self.router.stats.inc("sessions_refused")
        self.abort(uri, text)

    def _welcome(self, principal: Principal) -> None:
        policy = self.router.policy
        self.authid = principal.authid
        self.authrole = principal.authrole
        self.authmethod = principal.authmethod
        self.authextra = dict(principal.authextra)
        self.state = State.OPEN
        self.limits = SessionLimits(
            policy.limits or Limits(), self.router.clock.seconds(), policy.max_message_size
        )
        self.router.attach(self)
        if principal.expires_at is not None:
            delay = max(0.0, principal.expires_at - self.router.clock.seconds())
            self._expiry = self.router.clock.callLater(delay, self._expired)
        self.transport.send(
            message.Welcome(
                self.session_id,
                {"broker": wamp.broker_features(self.router.history is not None)},
                realm=policy.realm,
                authid=self.authid,
                authrole=self.authrole,
                authmethod=self.authmethod,
                authprovider=principal.authprovider,
                authextra=self.authextra or None,
            )
        )

    def _cancel_expiry(self) -> None:
        if self._expiry is not None and self._expiry.active():
            self._expiry.cancel()
        self._expiry = None

    def _on_abort(self, msg: message.Abort) -> None:
        self._close()

    def _on_goodbye(self, msg: message.Goodbye) -> None:
        if self.state is State.OPEN:
            self._detach()
            self.transport.send(message.Goodbye(reason=uris.CLOSE_GOODBYE_AND_OUT))
        self._close()

    def _on_subscribe(self, msg: message.Subscribe, options: dict[str, Any] | None = None) -> None:
        if not self._take(self.limits.subscribe if self.limits else None):
            self.router.stats.inc_labelled("rate_limited", "subscribe")
            self.error(msg.MESSAGE_TYPE, msg.request, ERROR_RATE_LIMITED, "too many SUBSCRIBEs")
            return
        try:
            validate_pattern(msg.topic, msg.match or "exact")
        except InvalidTopic as e:
            self.error(msg.MESSAGE_TYPE, msg.request, uris.ERROR_INVALID_URI, str(e))
            return
        match = msg.match or "exact"
        held = self.router.broker.of_session(self.session_id)
        limit = self.router.policy.max_subscriptions
        holds = any(s.topic == msg.topic and s.match == match for s in held)
        # SUBSCRIBEs still waiting for their binding count too, so a client
        # cannot pile up unanswered requests while RabbitMQ is away
        if len(self._pending) >= limit or (len(held) >= limit and not holds):
            self.error(
                msg.MESSAGE_TYPE,
                msg.request,
                ERROR_TOO_MANY_SUBSCRIPTIONS,
                f"a session may hold at most {limit} subscriptions",
            )
            return
        if not self.router.policy.authorizer.may_subscribe(self.identity(), msg.topic, match):
            self.router.stats.inc("subscribes_refused")
            self.error(
                msg.MESSAGE_TYPE,
                msg.request,
                uris.ERROR_NOT_AUTHORIZED,
                f"{self.authrole!r} may not subscribe to {msg.topic!r} ({match})",
            )
            return
        router = self.router
        after = (options or {}).get(resume.OPTION_RESUME_AFTER)
        if holds and resume.join(
            self, router.broker, limit, msg.topic, match, msg.request, after is not None
        ):
            return
        if after is not None and not holds:
            resume.start(self, router.broker, router.history, router.stats, msg, match, after)
            return
        self.subscribe_plain(msg.request, msg.topic, match, bool(msg.get_retained))

    def subscribe_plain(self, request: int, topic: str, match: str, get_retained: bool) -> None:
        """Subscribe (no resume); SUBSCRIBED once events will arrive, then
        the retained events if ``get_retained``."""
        history = self.router.history
        retained = get_retained and history is not None

        def subscribed(sub: Subscription) -> None:
            if self.state is State.OPEN:
                self.transport.send(message.Subscribed(request, sub.id))
                if retained:
                    history.retained_for(self, sub).addCallbacks(
                        self.send_retained, self._log_failure
                    )

        self.track(self.router.broker.subscribe(self, topic, match), subscribed)

    def track(
        self, d: Deferred[Subscription], subscribed: Callable[[Subscription], object]
    ) -> None:
        """Call ``subscribed`` once the subscription ``d`` waits for is
        live; until then it counts against the session's limit, and closing
        the session cancels it."""
        if not d.called:
            self._pending.add(d)

        def done(sub: Subscription) -> object:
            self._pending.discard(d)
            return subscribed(sub)

        def failed(f: Failure) -> None:
            self._pending.discard(d)
            if not f.check(CancelledError):
                self._log.failure("subscribe failed", f)

        d.addCallbacks(done, failed)

    def _log_failure(self, f: Failure) -> None:
        if not f.check(CancelledError):
            self._log.failure("internal error", f)

    def send_retained(self, events: list[Any]) -> None:
        """Send retained events (their EVENTs are built already)."""
        if self.state is State.OPEN:
            for event in events:
                self.send_event(event)

    def _on_unsubscribe(self, msg: message.Unsubscribe) -> None:
        try:
            self.router.broker.unsubscribe(self, msg.subscription)
        except NoSuchSubscription:
            self.error(
                msg.MESSAGE_TYPE,
                msg.request,
                uris.ERROR_NO_SUCH_SUBSCRIPTION,
                f"no subscription {msg.subscription} in this session",
            )
            return
        self.transport.send(message.Unsubscribed(msg.request))

    def _on_publish(self, msg: message.Publish, options: dict[str, Any] | None = None) -> None:
        ack = bool(msg.acknowledge)
        # autobahn's Publish does not parse disclose_me: read it from the options
        disclose_me = (options or {}).get("disclose_me", False)
        request = msg.request

        def refuse(uri: str, text: str) -> None:
            self.router.stats.inc_labelled("client_publishes", "refused")
            if ack:
                self.error(msg.MESSAGE_TYPE, request, uri, text)

        if not self._take(self.limits.publish if self.limits else None):
            self.router.stats.inc_labelled("rate_limited", "publish")
            return refuse(ERROR_RATE_LIMITED, "too many PUBLISHes")
        try:
            validate_topic(msg.topic)
        except InvalidTopic as e:
            return refuse(uris.ERROR_INVALID_URI, str(e))
        if msg.topic.startswith("wamp."):  # reserved for the router (as Crossbar)
            return refuse(
                uris.ERROR_INVALID_URI, f"{msg.topic!r} is in the reserved wamp namespace"
            )
        if not self.router.policy.authorizer.may_publish(self.identity(), msg.topic):
            return refuse(uris.ERROR_NOT_AUTHORIZED, f"publishing to {msg.topic!r} is not allowed")
        if type(disclose_me) is not bool:
            return refuse(uris.ERROR_INVALID_ARGUMENT, "disclose_me must be a boolean")
        if msg.payload is not None:
            return refuse(uris.ERROR_INVALID_ARGUMENT, "payload transparency is not supported")
        publisher = self.router.publisher
        if publisher is None:
            return refuse(uris.ERROR_PUBLISH_UNAVAILABLE, "publishing is not configured")
        publication = publication_id()
        try:
            pub = encode_publication(
                msg.topic,
                msg.args,
                msg.kwargs,
                publication=publication,
                publisher=self.session_id,
                exclude_me=msg.exclude_me is not False,
                disclose_me=disclose_me,
                eligible=msg.eligible,
                exclude=msg.exclude,
                publisher_authid=self.authid,
                publisher_authrole=self.authrole,
                eligible_authid=msg.eligible_authid,
                exclude_authid=msg.exclude_authid,
                eligible_authrole=msg.eligible_authrole,
                exclude_authrole=msg.exclude_authrole,
                retain=bool(msg.retain),
                max_size=self.router.policy.max_message_size,
            )
        except PayloadError as e:
            return refuse(uris.ERROR_INVALID_ARGUMENT, str(e))
        history = self.router.history
        if (
            history is not None
            and self.limits is not None
            and history.patterns.matches(msg.topic)
            and not self._take(self.limits.publish_log, len(pub.body))
        ):
            # one session must not roll the shared event log over
            self.router.stats.inc_labelled("rate_limited", "publish_bytes")
            return refuse(
                ERROR_RATE_LIMITED, "too many bytes published to logged topics; slow down"
            )

        def done(_: object) -> None:
            self.router.stats.inc_labelled("client_publishes", "ok")
            if ack and self.state is State.OPEN:
                self.transport.send(message.Published(request, publication))

        def failed(f: Failure) -> None:
            if f.check(PublishRejected):
                refuse(uris.ERROR_PUBLISH_REJECTED, "RabbitMQ refused the publication")
            elif f.check(PublishUnavailable):
                refuse(uris.ERROR_PUBLISH_UNAVAILABLE, "RabbitMQ is not reachable")
            else:
                self._log.failure("publish failed", f)
                refuse(uris.ERROR_PUBLISH_UNAVAILABLE, "the publication failed")

        publisher.publish(pub).addCallbacks(done, failed)

    def _on_call(self, msg: message.Call) -> None:
        if not self._take(self.limits.call if self.limits else None):
            self.router.stats.inc_labelled("rate_limited", "call")
            self.error(msg.MESSAGE_TYPE, msg.request, ERROR_RATE_LIMITED, "too many CALLs")
            return
        if msg.procedure not in self._meta:
            self.error(
                msg.MESSAGE_TYPE,
                msg.request,
                uris.ERROR_NO_SUCH_PROCEDURE,
                f"no procedure {msg.procedure!r}",
            )
            return
        request = msg.request

        def done(result: Any) -> None:
            if self.state is State.OPEN:
                self.transport.send(message.Result(request, args=[result]))

        def failed(f: Failure) -> None:
            if self.state is not State.OPEN:
                return
            if f.check(wamp.WampError):
                e = f.value
                uri, text, details = e.uri, e.text, e.details
            else:
                self._log.failure("{procedure} failed", f, procedure=msg.procedure)
                uri, text, details = uris.ERROR_RUNTIME_ERROR, "internal error", {}
            self.transport.send(
                message.Error(msg.MESSAGE_TYPE, request, uri, args=[text], kwargs=details or None)
            )

        self._meta.call(self, msg.procedure, msg.args or [], msg.kwargs or {}).addCallbacks(
            done, failed
        )

    def _on_register(self, msg: message.Register) -> None:
        self.error(
            msg.MESSAGE_TYPE,
            msg.request,
            uris.ERROR_FEATURE_NOT_SUPPORTED,
            "notifyd is a broker only: it has no dealer role",
        )

    def _on_unregister(self, msg: message.Unregister) -> None:
        self.error(
            msg.MESSAGE_TYPE,
            msg.request,
            uris.ERROR_FEATURE_NOT_SUPPORTED,
            "notifyd is a broker only: it has no dealer role",
        )

    def _on_cancel(self, msg: message.Cancel) -> None:
        pass  # no call is ever pending: there is nothing to cancel

    # -- helpers -------------------------------------------------------------------
    def _take(self, bucket: TokenBucket | None, n: float = 1) -> bool:
        return bucket is None or bucket.take(self.router.clock.seconds(), n)

    def charge_call(self, n: float) -> bool:
        """Take ``n`` more CALL tokens for an expensive call (the CALL took
        one already; at most the burst in all, so a call always passes when
        the bucket was full); False if the session has not that many left."""
        bucket = self.limits.call if self.limits else None
        return bucket is None or self._take(bucket, min(n, max(0.0, bucket.burst - 1)))

    @property
    def is_open(self) -> bool:
        """Established and not closing."""
        return self.state is State.OPEN

    def send(self, msg: message.Message) -> None:
        """Send one WAMP message."""
        self.transport.send(msg)

    def writable(self) -> Deferred[None] | None:
        """None if the connection takes more now; else a Deferred firing
        once it does (long replays pace themselves on it)."""
        return self.transport.writable()

    def error(self, request_type: int, request: int, uri: str, text: str) -> None:
        """Answer a request with ERROR ``uri`` (while the session is open)."""
        if self.state is State.OPEN:
            self.transport.send(message.Error(request_type, request, uri, args=[text]))

    def identity(self) -> Identity:
        """Who this session is, for authorization."""
        return Identity(self.authid, self.authrole, self.authextra)

    def _detach(self) -> None:
        if self.session_id and self.state in (State.OPEN, State.CLOSING):
            self.router.detach(self)

    def _close(self) -> None:
        self._detach()
        self.state = State.CLOSED
        self._cancel_expiry()
        for d in list(self._pending):
            d.cancel()
        self.transport.close()
