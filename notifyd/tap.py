"""
``twistd notifyd``: command-line options and the service tree.

:func:`makeService` builds a :class:`NotifydService` (a ``MultiService``)
holding the AMQP service and one listening service per ``--listen`` endpoint,
all sharing one :class:`~notifyd.router.Router`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage

from notifyd import __version__, logs
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
from notifyd.history import History, HistorySettings
from notifyd.ingest import LogWriter
from notifyd.logs import Logger
from notifyd.metrics import make_registry
from notifyd.revocation import KillOrder
from notifyd.router import Policy, Router
from notifyd.stats import Stats
from notifyd.streams import StreamLog
from notifyd.testee import make_testee_site
from notifyd.topics import PatternSet
from notifyd.web import ListenService, admin_resources, make_admin_site, make_site
from notifyd.websocket import WampServerFactory


class Options(usage.Options):
    """Options of ``twistd notifyd``; see ``docs/configuration.md``."""

    synopsis = "[options]"
    longdesc = (
        "Deliver RabbitMQ events to WAMP v2 (Autobahn) clients over WebSocket. "
        "Every option can also be set in a TOML config file (--config) or as a "
        "NOTIFYD_* environment variable; flags win over the environment, which "
        "wins over the file."
    )
    optParameters = [
        ["config", "c", None, "TOML config file (default: $NOTIFYD_CONFIG)."],
    ] + [
        [s.flag, None, None, s.help + f" [default: {s.default}] (${s.env})"]
        for s in configmod.SETTINGS
        if s.kind not in (bool, list)
    ]
    optFlags = [
        [s.flag, None, s.help + f" (${s.env})"] for s in configmod.SETTINGS if s.kind is bool
    ]

    def __init__(self) -> None:
        super().__init__()
        for setting in configmod.SETTINGS:
            if setting.kind is list:
                self[setting.flag] = []

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"notifyd {__version__}")
        raise SystemExit(0)

    def overrides(self) -> dict[str, Any]:
        """The settings given on the command line."""
        out: dict[str, Any] = {}
        for s in configmod.SETTINGS:
            value = self.get(s.flag)
            if s.kind is bool:
                if value:
                    out[s.key] = True
            elif s.kind is list:
                if value:
                    out[s.key] = list(value)
            elif value is not None:
                try:
                    out[s.key] = s.kind(value)
                except ValueError:
                    raise usage.UsageError(
                        f"--{s.flag} must be {'an integer' if s.kind is int else 'a number'}, not {value!r}"
                    )
        return out

    def postOptions(self) -> None:
        try:
            self["settings"] = configmod.load(self["config"], os.environ, self.overrides())
            make_policy(self["settings"])  # check the security settings now
        except (configmod.ConfigError, AuthConfigError) as e:
            raise usage.UsageError(str(e))


def _list_option(setting: configmod.Setting) -> Any:
    def opt(self: Options, value: str) -> None:
        self[setting.flag].append(value)

    opt.__doc__ = f"{setting.help} (${setting.env}, comma-separated)"
    return opt


for _setting in configmod.SETTINGS:
    if _setting.kind is list:
        setattr(Options, "opt_" + _setting.key, _list_option(_setting))


def make_policy(settings: configmod.Config) -> Policy:
    """The realm's authentication and authorization, from the settings."""
    from notifyd.ratelimit import Limits

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
    from the settings (``count`` receives the names of counters to bump)."""
    arguments: dict[str, Any] = {
        "x-queue-type": "stream",
        "x-max-age": settings.history_max_age,
        "x-max-length-bytes": settings.history_max_bytes,
        "x-stream-max-segment-size-bytes": settings.history_segment_bytes,
    }
    if settings.history_replicas:
        arguments["x-initial-cluster-size"] = settings.history_replicas
    retained_arguments = dict(arguments, **{"x-max-age": settings.retained_max_age})
    history: History
    log = StreamLog(
        settings.history_stream,
        arguments,
        lambda o, m: None,
        prefetch=settings.prefetch,
        reactor=reactor,
    )
    history = History(
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
            lambda o, m: history.on_retained_entry(o, m),
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
            reactor=reactor,
        ),
    )
    return history


class NotifydService(MultiService):
    """The whole node: AMQP service, router and listeners."""

    _log = Logger()

    def __init__(self, settings: configmod.Config, reactor: Any = None) -> None:
        super().__init__()
        self.settings = settings
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self.bindings = Bindings()
        stats = Stats()
        self.history = make_history(settings, reactor, stats) if settings.history else None
        self.broker = Broker(self.bindings, history=self.history)
        self.router = Router(self.broker, make_policy(settings), clock=reactor, stats=stats)
        if self.router.policy.ticket is not None and not settings.jwt_audience:
            self._log.warn(
                "JWT tickets are accepted without an audience check: any token signed "
                "with this key for another purpose would log in. Set jwt_audience."
            )
        self.amqp = AMQPService(
            settings.amqp_url,
            settings.exchange,
            self.bindings,
            self.router.on_delivery,
            observe_latency=self.router.stats.latency.observe,
            exchange_passive=settings.exchange_passive,
            prefetch=settings.prefetch,
            dead_letter_exchange=settings.dead_letter_exchange,
            max_retry_delay=settings.amqp_max_retry_delay,
            control=self._control,
            reactor=reactor,
        )
        self.router.publisher = self.amqp
        self.router.broadcast_kill = self._broadcast_kill
        if self.history is not None:
            self.amqp.history = self.history
            self.router.use_history(self.history)
            self.history.log.on_entry = self._on_log_entry()
        self.amqp.setServiceParent(self)
        self.ws_factory = WampServerFactory(
            self.router,
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
        self.registry = make_registry(self)
        admin = admin_resources(
            self.status,
            self.registry,
            self.history.position if self.history is not None else None,
        )
        public = (
            {}
            if settings.admin_listen
            else admin_resources(
                self.status,
                self.registry,
                self.history.position if self.history is not None else None,
                public=True,
            )
        )
        site = make_site(self.ws_factory, settings.web_root, public)
        self.listeners = []
        for description in settings.listen:
            listener = ListenService(description, site, reactor=reactor)
            listener.setServiceParent(self)
            self.listeners.append(listener)
        if settings.admin_listen:
            admin_site = make_admin_site(admin)
            for description in settings.admin_listen:
                listener = ListenService(description, admin_site, reactor=reactor, label="admin")
                listener.setServiceParent(self)
                self.listeners.append(listener)
        for description in settings.testee_listen:
            listener = ListenService(
                description, make_testee_site(self.ws_factory), reactor=reactor, label="testee"
            )
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def _control(self, body: bytes) -> None:
        """A message of the control exchange: a kill order for this node's
        sessions (ValueError for anything else)."""
        order = KillOrder.from_body(body)
        killed = self.router.kill(order, broadcast=False)
        self._log.info(
            "kill order {order}: ended {n} sessions on this node", order=order, n=len(killed)
        )

    def _broadcast_kill(self, order: KillOrder) -> None:
        self.amqp.broadcast(order.to_body()).addErrback(
            lambda f: self._log.warn(
                "could not tell the other nodes about kill order {order}: {why}",
                order=order,
                why=f.getErrorMessage(),
            )
        )

    def _on_log_entry(self) -> Any:
        """The event log's entry handler: the ingest step remembers the entry
        (its duplicate check), the router fans it out, timed."""
        observe = self.router.stats.latency.observe
        clock = time.monotonic
        fan_out = self.router.on_log_entry
        writer = self.history.writer if self.history is not None else None
        seen = writer.seen if writer is not None else None

        def on_entry(offset: int, msg: Any) -> None:
            if seen is not None:
                seen(msg)
            started = clock()
            fan_out(offset, msg)
            observe(clock() - started)

        return on_entry

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for a log observer before it starts
        logs.install(parent, self.settings.log_format)
        logs.set_level(self.settings.log_level)

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

    @inlineCallbacks
    def stopService(self) -> Any:
        """Graceful stop: stop accepting; cancel the AMQP consumer (what was
        already taken is delivered and acked); GOODBYE
        ``wamp.close.system_shutdown`` to every session and wait for them to
        close (at most ``shutdown_timeout``); then leave RabbitMQ."""
        self._log.info("notifyd shutting down: {n} connections", n=len(self.ws_factory.connections))
        for listener in self.listeners:
            yield listener.stopService()
        yield self.amqp.stop_consuming()
        yield self.ws_factory.shutdown(self.settings.shutdown_timeout, self._reactor)
        yield MultiService.stopService(self)
        self._log.info("notifyd stopped: {n} deliveries acked in all", n=self.amqp.acked)


def makeService(options: Options, reactor: Any = None) -> NotifydService:
    """Build the notifyd service tree from parsed :class:`Options`."""
    return NotifydService(options["settings"], reactor=reactor)
