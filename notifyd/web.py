"""
The HTTP side: one resource tree per listening port.

=============  =================================================================
``/``          the static files of the web root (the demo page and
               ``notifyd.js``), if one is configured
``/ws``        the WAMP v2 WebSocket endpoint
``/healthz``   200 ``ok`` while the process runs
``/readyz``    200 when consuming from RabbitMQ, 503 otherwise (JSON body)
``/metrics``   Prometheus metrics (:mod:`notifyd.metrics`)
=============  =================================================================

With ``--admin-listen``, ``/healthz``, ``/readyz`` and ``/metrics`` move to
that endpoint only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File


class StaticFiles(File):
    """The web root: correct content types, caching headers, no listings.

    HTML is revalidated on every load (``no-cache``), so a deploy shows at
    once; scripts and styles are cached for five minutes, the vendored
    Autobahn|JS build for a day.  ``Last-Modified``/``If-Modified-Since``
    come from :class:`twisted.web.static.File`.
    """

    contentTypes = {
        **File.contentTypes,
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".md": "text/markdown; charset=utf-8",
        ".svg": "image/svg+xml",
        ".json": "application/json",
    }

    def render(self, request: Request) -> bytes | int:
        path = self.path
        if self.isdir() or path.endswith(".html"):
            cache = b"no-cache"
        elif f"{os.sep}vendor{os.sep}" in path:
            cache = b"public, max-age=86400"
        else:
            cache = b"public, max-age=300"
        request.setHeader(b"cache-control", cache)
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"same-origin")
        return super().render(request)

    def directoryListing(self) -> Resource:
        return notFound()


class _Health(Resource):
    isLeaf = True

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"


class _Ready(Resource):
    isLeaf = True

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        super().__init__()
        self._status = status

    def render_GET(self, request: Request) -> bytes:
        status = self._status()
        request.setResponseCode(200 if status.get("ready") else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status).encode() + b"\n"


class _Position(Resource):
    """``GET /position``: the event log's newest publication id, for the
    page-render handshake (see docs/history.md)."""

    isLeaf = True

    def __init__(self, position: Callable[[], Any]) -> None:
        super().__init__()
        self._position = position

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")

        def done(position: int) -> None:
            if not gone:
                request.write(json.dumps({"position": position}).encode() + b"\n")
                request.finish()

        def failed(f: Any) -> None:
            if not gone:
                request.setResponseCode(503)
                request.write(b'{"error": "the event log is not reachable"}\n')
                request.finish()

        gone: list[bool] = []

        def lost(_: Any) -> None:
            gone.append(True)
            d.cancel()

        d = self._position()
        d.addCallbacks(done, failed)
        request.notifyFinish().addErrback(lost)
        return NOT_DONE_YET


class _NoPage(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"notifyd: WAMP v2 WebSocket endpoint at /ws\n"


class _WebSocketResource(WebSocketResource):
    """autobahn's WebSocketResource, minus a leak: after the upgrade the HTTP
    channel would keep its idle timer (12 hours by default), and with it the
    channel and the upgrade request, alive for every WebSocket."""

    def render(self, request: Request) -> Any:
        channel = request.channel
        result = super().render(request)
        if channel is not None and getattr(channel, "transport", None) is None:
            channel.setTimeout(None)
        return result


def admin_resources(
    status: Callable[[], dict[str, Any]],
    registry: Any,
    position: Callable[[], Any] | None = None,
) -> dict[bytes, Resource]:
    """``/healthz``, ``/readyz``, ``/metrics`` and, with history, ``/position``."""
    from prometheus_client.twisted import MetricsResource

    out: dict[bytes, Resource] = {
        b"healthz": _Health(),
        b"readyz": _Ready(status),
        b"metrics": MetricsResource(registry),
    }
    if position is not None:
        out[b"position"] = _Position(position)
    return out


def make_site(ws_factory: Any, web_root: str | None, extra: dict[bytes, Resource]) -> Site:
    """The public resource tree: page, ``/ws`` and (unless an admin endpoint
    is configured) the admin resources."""
    root: Resource = StaticFiles(web_root) if web_root else _NoPage()
    root.putChild(b"ws", _WebSocketResource(ws_factory))
    return _site(root, extra)


def _site(root: Resource, children: dict[bytes, Resource]) -> Site:
    for name, resource in children.items():
        root.putChild(name, resource)
    site = Site(root)
    site.displayTracebacks = False
    return site


class _AdminRoot(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"notifyd admin: /healthz /readyz /metrics /position\n"


def make_admin_site(extra: dict[bytes, Resource]) -> Site:
    """The private admin site (``--admin-listen``)."""
    return _site(_AdminRoot(), extra)


class ListenService(Service):
    """Listen on one endpoint string; log the address actually bound."""

    _log = Logger()

    def __init__(
        self, description: str, factory: Any, reactor: Any = None, label: str = "notifyd"
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.description = description
        self.label = label
        self.factory = factory
        self._reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        d = serverFromString(self._reactor, self.description).listen(self.factory)
        failures: list[Any] = []
        d.addCallbacks(self._listening, failures.append)
        if failures:
            failures[0].raiseException()

    def _listening(self, port: Any) -> None:
        self.port = port
        addr = port.getHost()
        self._log.info(
            "{label} listening on {host}:{port} ({description})",
            label=self.label,
            host=getattr(addr, "host", "?"),
            port=getattr(addr, "port", "?"),
            description=self.description,
        )

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
