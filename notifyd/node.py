"""
Building a node: every object of one notifyd node and every callback
between them, wired in one place, from the settings and the reactor.

:func:`build_node` is what ``twistd notifyd`` and ``notifyd.tac`` run (through
:class:`notifyd.tap.NotifydService`); :func:`make_router` is the part without
network I/O, which unit tests build the same way with fakes.  Each
constructor gets its collaborators and callbacks; nothing is patched in
afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from autobahn.util import id as random_id
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred

from notifyd import config as configmod
from notifyd.amqp import AMQPService
from notifyd.auth import (
    AuthConfigError,
    CraAuthenticator,
    TicketAuthenticator,
    load_jwks,
    read_bytes,
)
from notifyd.authz import Authorizer, load_authz
from notifyd.bindings import Bindings
from notifyd.broker import Broker
from notifyd.compaction import CompactingBindings
from notifyd.events import Publication
from notifyd.history import History, HistorySettings
from notifyd.ingest import LogWriter
from notifyd.logs import Logger
from notifyd.metrics import make_registry
from notifyd.presence import Presence, node_name
from notifyd.presence import attach as presence_attach
from notifyd.ratelimit import Limits
from notifyd.receipts import Decisions, Receipts, decide_queue
from notifyd.receipts import attach as receipts_attach
from notifyd.revocation import KillOrder
from notifyd.router import Policy, Publisher, Router
from notifyd.stats import Stats
from notifyd.streams import StreamLog
from notifyd.topics import PatternSet
from notifyd.websocket import WampServerFactory

_log = Logger()


def make_policy(settings: configmod.Config) -> Policy:
    """The realm's authentication and authorization, from the settings."""
    roles = None
    users: dict = {}
    if settings.authz_file:
        roles, users = load_authz(settings.authz_file)
    ticket = None
    jwt_keys = settings.jwt_secret_file or settings.jwt_public_key_file or settings.jwks_file
    if jwt_keys or settings.jwt_algorithm:
        if not settings.authz_file:
            raise AuthConfigError(
                "JWT tickets need authz_file (--authz-file): without rules every "
                "authenticated user could subscribe to every account's events"
            )
        ticket = TicketAuthenticator(
            list(settings.jwt_algorithm),
            secret=read_bytes("jwt_secret_file", settings.jwt_secret_file)
            if settings.jwt_secret_file
            else None,
            public_key=read_bytes("jwt_public_key_file", settings.jwt_public_key_file)
            if settings.jwt_public_key_file
            else None,
            jwks=load_jwks(settings.jwks_file) if settings.jwks_file else None,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            role_claim=settings.jwt_role_claim,
            default_role=settings.jwt_default_role,
            extra_claims=tuple(settings.jwt_extra_claims),
            max_lifetime=settings.jwt_max_lifetime,
            # JWT and WAMP-CRA identities never overlap (see notifyd.auth)
            reserved_authids=tuple(users),
        )
    return Policy(
        realm=settings.realm,
        allow_anonymous=settings.allow_anonymous,
        allow_publish=tuple(settings.allow_publish),
        max_message_size=settings.max_message_size,
        max_subscriptions=settings.max_subscriptions_per_session,
        authorizer=Authorizer(roles, tuple(settings.allow_publish), users),
        ticket=ticket,
        cra=CraAuthenticator(users) if users else None,
        meta_roles=tuple(settings.meta_api_roles),
        limits=Limits(
            subscribe_rate=settings.subscribe_rate,
            subscribe_burst=settings.subscribe_burst,
            call_rate=settings.call_rate,
            call_burst=settings.call_burst,
            publish_rate=settings.publish_rate,
            publish_burst=settings.publish_burst,
            publish_log_rate=settings.publish_log_bytes_per_second,
            publish_log_burst=settings.publish_log_bytes_burst,
        ),
    )


def make_history(settings: configmod.Config, reactor: Any, stats: Stats | None = None) -> History:
    """The event log, the retained store and the ingest step feeding them,
    from the settings (counting into ``stats``)."""
    arguments: dict[str, Any] = {
        "x-queue-type": "stream",
        "x-max-age": settings.history_max_age,
        "x-max-length-bytes": settings.history_max_bytes,
        "x-stream-max-segment-size-bytes": settings.history_segment_bytes,
    }
    if settings.history_replicas:
        arguments["x-initial-cluster-size"] = settings.history_replicas
    retained_arguments = dict(arguments, **{"x-max-age": settings.retained_max_age})
    log = StreamLog(
        settings.history_stream,
        arguments,
        prefetch=settings.prefetch,
        memory=settings.history_memory,
        reactor=reactor,
    )
    return History(
        HistorySettings(
            patterns=PatternSet(settings.history),
            max_message_size=settings.max_message_size,
            max_events=settings.history_max_events,
            scan_limit=settings.history_scan_limit,
            readers=settings.history_readers,
            retained_max_age=configmod.age_seconds(settings.retained_max_age),
        ),
        log,
        StreamLog(
            settings.retained_stream,
            retained_arguments,
            first_start="first",
            prefetch=settings.prefetch,
            # every connect reads up to a fresh marker, so the table is
            # complete before get_retained is answered; that may take a while
            probe_on_attach=True,
            probe_timeout=600.0,
            reactor=reactor,
        ),
        clock=reactor,
        writer=LogWriter(
            settings.history_stream + ".ingest",
            PatternSet(settings.history),
            settings.max_message_size,
            queue_type=settings.history_ingest_queue_type,
            dead_letter_exchange=settings.dead_letter_exchange,
            prefetch=settings.prefetch,
            stats=stats,
            catch_up=log.probe,
            reactor=reactor,
        ),
    )


class _LatePublisher:
    """The router's way out to RabbitMQ, for the AMQP service built after
    it (the two call each other): forwards each publication to it."""

    def __init__(self, service: Callable[[], Publisher]) -> None:
        self._service = service

    def publish(self, publication: Publication) -> Deferred[None]:
        return self._service().publish(publication)


def make_router(
    policy: Policy,
    *,
    bindings: Bindings | None = None,
    history: History | None = None,
    publisher: Publisher | None = None,
    broadcast_kill: Callable[[KillOrder], object] | None = None,
    stats: Stats | None = None,
    clock: Any = None,
    new_id: Callable[[], int] = random_id,
    presence: Presence | None = None,
    receipts: Receipts | None = None,
) -> Router:
    """The state a node's sessions share: its broker (subscriptions bound
    through ``bindings``, or through the event log for logged topics) and
    its router, which follows ``history``'s log."""
    broker = Broker(
        bindings if bindings is not None else Bindings(), new_id=new_id, history=history
    )
    return Router(
        broker,
        policy,
        publisher,
        clock=clock,
        stats=stats,
        history=history,
        broadcast_kill=broadcast_kill,
        presence=presence,
        receipts=receipts,
    )


@dataclass
class Node:
    """The parts of one node (what ``/readyz`` and ``/metrics`` read)."""

    settings: configmod.Config
    bindings: Bindings | CompactingBindings
    broker: Broker
    router: Router
    history: History | None
    amqp: AMQPService
    ws_factory: WampServerFactory
    registry: CollectorRegistry
    #: with ``presence`` on: the sessions published to the presence exchange
    presence: Presence | None = None
    #: with ``receipts`` on: the receipts and the fallback decisions
    receipts: Receipts | None = None
    decisions: Decisions | None = None

    def status(self) -> dict[str, Any]:
        """What ``/readyz`` reports."""
        return {
            "ready": self.amqp.ready,
            "amqp": "consuming" if self.amqp.ready else "disconnected",
            "queue": self.amqp.queue if self.amqp.ready else None,
            "sessions": len(self.router.sessions),
            "subscriptions": len(self.broker.subscriptions()),
            "bindings": len(self.bindings.bound),
            **(
                {"history": "following" if self.history.log.ready else "waiting"}
                if self.history is not None
                else {}
            ),
        }


def build_node(settings: configmod.Config, reactor: Any) -> Node:
    """Every part of a node, wired: AMQP consumer and publisher, event log,
    broker, router and the WebSocket factory.  (The listening services are
    added by :class:`notifyd.tap.NotifydService`.)"""
    stats = Stats()
    bindings: Bindings | CompactingBindings = Bindings()
    if settings.binding_compaction:
        bindings = CompactingBindings(bindings, settings.binding_compaction, clock=reactor)
    policy = make_policy(settings)
    if policy.ticket is not None and not settings.jwt_audience:
        _log.warn(
            "JWT tickets are accepted without an audience check: any token signed "
            "with this key for another purpose would log in. Set jwt_audience."
        )
    history = make_history(settings, reactor, stats) if settings.history else None
    amqp: AMQPService  # the router and the AMQP service call each other

    def broadcast_kill(order: KillOrder) -> None:
        amqp.broadcast(order.to_body()).addErrback(
            lambda f: _log.warn(
                "could not tell the other nodes about kill order {order}: {why}",
                order=order,
                why=f.getErrorMessage(),
            )
        )

    def control(body: bytes) -> None:
        """A message of the control exchange: a kill order for this node's
        sessions (ValueError for anything else)."""
        order = KillOrder.from_body(body)
        killed = router.kill(order, broadcast=False)
        _log.info("kill order {order}: ended {n} sessions on this node", order=order, n=len(killed))

    presence = None
    if settings.presence:
        presence = Presence(
            lambda key, body: amqp.send(settings.presence_exchange, key, body),
            reactor,
            claims=settings.presence_claims,
            interval=settings.presence_heartbeat,
        )
    receipts = decisions = None
    if settings.receipts:
        receipts = Receipts(
            lambda key, body: amqp.send(settings.receipts_exchange, key, body),
            reactor,
            presence.node if presence is not None else node_name(),
            decide=lambda body: amqp.send("", decide_queue(settings.receipts_exchange), body),
        )
        decisions = Decisions()
    attach: list[Any] = []
    if presence is not None:
        attach.append(
            partial(presence_attach, exchange=settings.presence_exchange, table=presence.cluster)
        )
    if decisions is not None:
        attach.append(
            partial(
                receipts_attach,
                events_exchange=settings.exchange,
                receipts_exchange=settings.receipts_exchange,
                undelivered_exchange=settings.undelivered_exchange,
                decisions=decisions,
                clock=reactor,
            )
        )
    router = make_router(
        policy,
        bindings=bindings,
        history=history,
        publisher=_LatePublisher(lambda: amqp),
        broadcast_kill=broadcast_kill,
        stats=stats,
        clock=reactor,
        presence=presence,
        receipts=receipts,
    )
    amqp = AMQPService(
        settings.amqp_url,
        settings.exchange,
        bindings,
        router.on_delivery,
        observe_latency=stats.latency.observe,
        control=control,
        history=history,
        exchange_passive=settings.exchange_passive,
        prefetch=settings.prefetch,
        dead_letter_exchange=settings.dead_letter_exchange,
        max_retry_delay=settings.amqp_max_retry_delay,
        read_batch=settings.amqp_read_batch,
        exchanges=(settings.presence_exchange,) if presence is not None else (),
        # a snapshot after every (re)connect: consumers are right again at once
        on_ready=presence.heartbeat if presence is not None else None,
        attach=attach,
        reactor=reactor,
    )
    ws_factory = WampServerFactory(
        router,
        max_message_size=settings.max_message_size,
        max_message_size_before_welcome=settings.max_message_size_before_welcome,
        allowed_origins=settings.allowed_origins,
        max_connections=settings.max_connections,
        max_connections_per_address=settings.max_connections_per_address,
        max_outbound_buffer=settings.max_outbound_buffer,
        handshake_timeout=settings.handshake_timeout,
        hello_timeout=settings.hello_timeout,
        auto_ping_interval=settings.auto_ping_interval,
        auto_ping_timeout=settings.auto_ping_timeout,
        compression=settings.compression,
        clock=reactor,
    )
    node = Node(
        settings,
        bindings,
        router.broker,
        router,
        history,
        amqp,
        ws_factory,
        CollectorRegistry(),
        presence,
        receipts,
        decisions,
    )
    node.registry = make_registry(node)
    return node
