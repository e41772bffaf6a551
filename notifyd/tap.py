"""
``twistd notifyd``: command-line options and the service tree.

:func:`makeService` builds a :class:`NotifydService` (a ``MultiService``)
holding the AMQP service and one listening service per ``--listen`` endpoint,
around one node built by :func:`notifyd.node.build_node`; with ``--workers``
above 1 it builds the parent of that many nodes instead
(:class:`notifyd.workers.Supervisor`).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage

from notifyd import __version__, logs, workers
from notifyd import config as configmod
from notifyd.auth import (
    AuthConfigError,
)
from notifyd.logs import Logger
from notifyd.node import build_node, make_policy
from notifyd.presence import PresenceService
from notifyd.testee import make_testee_site
from notifyd.web import ListenService, admin_resources, make_admin_site, make_site


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
            workers.check(self["settings"])
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


class NotifydService(MultiService):
    """The whole node as a service: the AMQP service and the listeners
    (the parts are built by :func:`notifyd.node.build_node`)."""

    _log = Logger()

    def __init__(
        self,
        settings: configmod.Config,
        reactor: Any = None,
        listen_endpoints: list[tuple[str, Any]] | None = None,
        admin_access_log: bool = True,
    ) -> None:
        """``listen_endpoints``: (description, endpoint) pairs to serve the
        public site on instead of ``settings.listen`` (a worker's sockets,
        adopted from its parent); ``admin_access_log=False``: no log line per
        admin request (a worker's, asked by its parent)."""
        super().__init__()
        self.settings = settings
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        #: every part of the node (notifyd.node builds and wires them)
        self.node = node = build_node(settings, reactor)
        node.amqp.setServiceParent(self)
        if node.presence is not None:
            # stopped before the AMQP service (children stop in reverse), so
            # its last word reaches RabbitMQ
            PresenceService(node.presence, reactor).setServiceParent(self)
        position = node.history.position if node.history is not None else None
        admin = admin_resources(node.status, node.registry, position)
        public = (
            {}
            if settings.admin_listen
            else admin_resources(node.status, node.registry, position, public=True)
        )
        site = make_site(node.ws_factory, settings.web_root, public)
        self.listeners = []
        if listen_endpoints is None:
            listen_endpoints = [(description, None) for description in settings.listen]
        for description, endpoint in listen_endpoints:
            listener = ListenService(description, site, reactor=reactor, endpoint=endpoint)
            listener.setServiceParent(self)
            self.listeners.append(listener)
        if settings.admin_listen:
            admin_site = make_admin_site(admin, access_log=admin_access_log)
            for description in settings.admin_listen:
                listener = ListenService(description, admin_site, reactor=reactor, label="admin")
                listener.setServiceParent(self)
                self.listeners.append(listener)
        for description in settings.testee_listen:
            listener = ListenService(
                description, make_testee_site(node.ws_factory), reactor=reactor, label="testee"
            )
            listener.setServiceParent(self)
            self.listeners.append(listener)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for a log observer before it starts
        logs.configure(parent, self.settings.log_format, self.settings.log_level)

    @inlineCallbacks
    def stopService(self) -> Any:
        """Graceful stop: stop accepting; cancel the AMQP consumer (what was
        already taken is delivered and acked); GOODBYE
        ``wamp.close.system_shutdown`` to every session and wait for them to
        close (at most ``shutdown_timeout``); then leave RabbitMQ."""
        node = self.node
        self._log.info("notifyd shutting down: {n} connections", n=len(node.ws_factory.connections))
        for listener in self.listeners:
            yield listener.stopService()
        yield node.amqp.stop_consuming()
        yield node.ws_factory.shutdown(self.settings.shutdown_timeout, self._reactor)
        yield MultiService.stopService(self)
        self._log.info("notifyd stopped: {n} deliveries acked in all", n=node.amqp.acked)


def make_service(settings: configmod.Config, reactor: Any = None) -> MultiService:
    """One node (:class:`NotifydService`), or with ``workers`` above 1 the
    parent of that many (:class:`notifyd.workers.Supervisor`)."""
    workers.check(settings)
    if workers.count(settings) > 1:
        return workers.Supervisor(settings, reactor=reactor)
    return NotifydService(settings, reactor=reactor)


def makeService(options: Options, reactor: Any = None) -> MultiService:
    """Build the notifyd service tree from parsed :class:`Options`."""
    return make_service(options["settings"], reactor=reactor)
