"""
The HTTP side: one resource tree per listening port.

=============  =================================================================
``/``          the static files of the web root (the demo page and
               ``notifyd.js``), if one is configured
``/ws``        the WAMP v2 WebSocket endpoint
``/healthz``   200 ``ok`` while the process runs
``/readyz``    200 when consuming from RabbitMQ, 503 otherwise (JSON body)
``/metrics``   Prometheus metrics (:mod:`notifyd.metrics`)
``/position``  the event log's newest publication id (with history)
=============  =================================================================

With ``--admin-listen``, ``/healthz``, ``/readyz``, ``/metrics`` and
``/position`` move to that endpoint only.

Wire behaviour:

* Paths are exact: ``/metrics/``, ``/metrics/x``, ``/ws/`` and the like
  answer 404.  On the public endpoints ``/readyz`` says only
  ``{"ready": true|false}``; the admin endpoint's has the details (sessions,
  subscriptions, queue, ...).
* The web root serves page assets only: regular files inside the root whose
  extension is in :data:`ASSET_TYPES` and no part of whose path starts with a
  dot (no ``README.md``, no dotfiles, no symlinks out of the root, no
  directory listings).  A path with control characters, a NUL byte or bytes
  that are not UTF-8 answers 404.
* At most one byte range per request: a ``Range`` header naming several
  ranges is ignored and the whole file is served once (200).
* Requests carry no body (413 and close otherwise).  ``GET /ws`` without a
  WebSocket upgrade answers 426.  Responses name the server ``notifyd``, with
  no versions of notifyd, Twisted or Autobahn.
* **Connections.**  Every TCP connection of the public endpoints counts
  toward ``max_connections`` and ``max_connections_per_address`` from accept
  to close (:class:`notifyd.websocket.ConnectionGate`); over a limit it is
  answered 503 and closed at once.  Until it is upgraded to a WebSocket a
  connection runs against an absolute deadline of ``handshake_timeout``
  seconds, from accept (or from the end of the previous response on a
  keep-alive connection) until its request has been answered or upgraded.
  Twisted's own idle timeout restarts on every byte, so a client trickling
  header lines would never meet it; this deadline does not move.  A response
  still being written when it passes is cut off, so raise
  ``handshake_timeout`` for very slow links.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from notifyd.logs import Logger

#: what the web root serves: page assets, by extension, and their content types
ASSET_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/vnd.microsoft.icon",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".webmanifest": "application/manifest+json",
}


class StaticFiles(File):
    """The web root: correct content types, caching headers, no listings.

    HTML is revalidated on every load (``no-cache``), so a deploy shows at
    once; scripts and styles are cached for five minutes, the vendored
    Autobahn|JS build for a day.  ``Last-Modified``/``If-Modified-Since``
    come from :class:`twisted.web.static.File`.
    """

    contentTypes = {**File.contentTypes, **ASSET_TYPES}
    #: the web root's real path, shared by every file under it
    _top: str | None = None

    def getChild(self, path: bytes, request: Request) -> Resource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return notFound()
        if name.startswith(".") or any(c < " " or c == "\x7f" or c == "\\" for c in name):
            return notFound()
        child = super().getChild(path, request)
        if not isinstance(child, StaticFiles):
            return child
        top = self._top
        if top is None:
            top = self._top = os.path.realpath(self.path)
        if not os.path.realpath(child.path).startswith(top + os.sep):
            return notFound()  # a symlink out of the web root
        if not child.isdir():
            extension = os.path.splitext(child.basename())[1].lower()
            if not child.isfile() or extension not in ASSET_TYPES:
                return notFound()
        child._top = top
        return child

    def makeProducer(self, request: Request, fileForReading: Any) -> Any:
        ranges = request.getHeader(b"range")
        if ranges is not None and b"," in ranges:
            # several ranges (``bytes=0-,0-,...``) could make one request cost
            # the file many times over: serve it once, whole (RFC 9110 lets a
            # server ignore Range)
            request.requestHeaders.removeHeader(b"range")
        return super().makeProducer(request, fileForReading)

    def render(self, request: Request) -> bytes | int:
        path = self.path
        if self.isdir():
            # "/vendor" and the like: no redirect to a listing that is not there
            return notFound().render(request)
        if path.endswith(".html"):
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
    # not a leaf: "/healthz/..." is looked up as a child, and there are none
    isLeaf = False

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return b"ok\n"


class _Ready(Resource):
    """``GET /readyz``; ``detail=False`` (the public endpoints) says only
    whether the node is ready."""

    isLeaf = False

    def __init__(self, status: Callable[[], dict[str, Any]], detail: bool = True) -> None:
        super().__init__()
        self._status = status
        self._detail = detail

    def render_GET(self, request: Request) -> bytes:
        status = self._status()
        if not self._detail:
            status = {"ready": bool(status.get("ready"))}
        request.setResponseCode(200 if status.get("ready") else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status).encode() + b"\n"


class _Position(Resource):
    """``GET /position``: the event log's newest publication id, for the
    page-render handshake (see docs/history.md)."""

    isLeaf = False

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
    """autobahn's WebSocketResource at exactly ``/ws``, minus a leak (after
    the upgrade the HTTP channel would keep its idle timer, 12 hours by
    default, and with it the channel and the upgrade request, alive for every
    WebSocket) and minus autobahn's status page, which shows its version."""

    isLeaf = False

    def render(self, request: Request) -> Any:
        channel = request.channel
        upgrade = request.getHeader(b"upgrade") or b""
        if (
            b"websocket" not in [t.strip().lower() for t in upgrade.split(b",")]
            or channel is None
            or channel.transport is None
        ):
            request.setResponseCode(426, b"Upgrade Required")
            request.setHeader(b"upgrade", b"websocket")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"notifyd: the WAMP v2 WebSocket endpoint; connect with a WebSocket client\n"
        result = super().render(request)
        if getattr(channel, "transport", None) is None:
            channel.setTimeout(None)
            if isinstance(channel, _Channel):
                channel.upgraded()
        return result


class _Metrics(Resource):
    """``GET /metrics``: a registry in the format the scraper asks for
    (Prometheus text, or OpenMetrics by its Accept header)."""

    isLeaf = False  # "/metrics/..." is looked up as a child, and there are none

    def __init__(self, registry: Any) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client.exposition import choose_encoder

        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return bytes(encoder(self._registry))


def admin_resources(
    status: Callable[[], dict[str, Any]],
    registry: Any,
    position: Callable[[], Any] | None = None,
    public: bool = False,
) -> dict[bytes, Resource]:
    """``/healthz``, ``/readyz``, ``/metrics`` and, with history, ``/position``;
    ``public``: for the public endpoints (``/readyz`` without details)."""
    out: dict[bytes, Resource] = {
        b"healthz": _Health(),
        b"readyz": _Ready(status, detail=not public),
        b"metrics": _Metrics(registry),
    }
    if position is not None:
        out[b"position"] = _Position(position)
    return out


class _Request(Request):
    """A request whose response names the server without versions."""

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name in (b"Server", b"server", "Server", "server"):
            value = b"notifyd"
        super().setHeader(name, value)


_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nServer: notifyd\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 21\r\n\r\ntoo many connections\n"
)


class _Refused(Protocol):
    """An accepted connection over a limit: answered 503 and closed."""

    def connectionMade(self) -> None:
        self.transport.write(_REFUSED)
        self.transport.loseConnection()


class _Channel(HTTPChannel):
    """An HTTP connection of the public endpoints: counted by the gate from
    accept to close, and run against an absolute deadline until it is a
    WebSocket (see the module docstring)."""

    _nlog = Logger()
    gate: Any = None
    deadline: float = 10.0
    count: Callable[[str], Any] = staticmethod(lambda name: None)
    _timer: Any = None
    _refused = False
    _gone = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.gate.opened(self.transport, getattr(self.transport.getPeer(), "host", None))
        self._arm()

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _arm(self) -> None:
        self._disarm()
        if not self._gone:
            self._timer = self.callLater(self.deadline, self._expired)

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        self.count("connections_refused", "http_timeout")
        self._nlog.debug(
            "closing {peer}: HTTP request not done in {n} s",
            peer=str(transport.getPeer()),
            n=self.deadline,
        )
        transport.abortConnection()

    def upgraded(self) -> None:
        """The WebSocket took the transport: no HTTP deadline any more (the
        WebSocket has its own), and the gate slot goes with the transport."""
        self._disarm()

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()
        if self.length != 0:  # a request body (chunked: None): nothing here takes one
            self._refused = True
            self.transport.write(
                b"HTTP/1.1 413 Content Too Large\r\nServer: notifyd\r\n"
                b"Connection: close\r\nContent-Length: 0\r\n\r\n"
            )
            self.transport.loseConnection()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def requestDone(self, request: Any) -> None:
        if self.persistent:
            self._arm()  # a fresh deadline for the next request
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        self._gone = True
        self._disarm()
        if self.transport is not None:
            self.gate.closed(self.transport)
        super().connectionLost(reason)


class _PublicSite(Site):
    """The public endpoints' site: connections admitted by the gate."""

    _nlog = Logger()

    def __init__(self, root: Resource, ws_factory: Any, **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        self.gate = ws_factory.gate
        self.deadline = ws_factory.handshake_timeout
        self.count = ws_factory.router.stats.inc_labelled

    def buildProtocol(self, addr: Any) -> Any:
        host = getattr(addr, "host", None)
        refusal = self.gate.refusal(host)
        if refusal is not None:
            self.count("connections_refused", refusal)
            self._nlog.warn("refused connection from {peer}: {why}", peer=host, why=refusal)
            return _Refused()
        channel = super().buildProtocol(addr)
        channel.gate, channel.deadline, channel.count = self.gate, self.deadline, self.count
        return channel

    protocol = _Channel  # type: ignore[assignment]


def make_site(ws_factory: Any, web_root: str | None, extra: dict[bytes, Resource]) -> Site:
    """The public resource tree: page, ``/ws`` and (unless an admin endpoint
    is configured) the admin resources."""
    root: Resource = StaticFiles(web_root) if web_root else _NoPage()
    root.putChild(b"ws", _WebSocketResource(ws_factory))
    return _site(root, extra, _PublicSite(root, ws_factory, requestFactory=_Request))


def _site(root: Resource, children: dict[bytes, Resource], site: Site | None = None) -> Site:
    for name, resource in children.items():
        root.putChild(name, resource)
    if site is None:
        site = Site(root, requestFactory=_Request)
    site.displayTracebacks = False
    return site


class _AdminRoot(Resource):
    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"notifyd admin: /healthz /readyz /metrics /position\n"


class _QuietSite(Site):
    def log(self, request: Any) -> None:
        """No access log line per request."""


def make_admin_site(extra: dict[bytes, Resource], access_log: bool = True) -> Site:
    """The private admin site (``--admin-listen``); ``access_log=False``: no
    line per request (a worker's admin socket, asked by its parent)."""
    root = _AdminRoot()
    if access_log:
        return _site(root, extra)
    return _site(root, extra, _QuietSite(root, requestFactory=_Request))


class ListenService(Service):
    """Listen on one endpoint string; log the address actually bound."""

    _log = Logger()

    def __init__(
        self,
        description: str,
        factory: Any,
        reactor: Any = None,
        label: str = "notifyd",
        endpoint: Any = None,
    ) -> None:
        """``endpoint``: listen on this endpoint object (a socket adopted
        from a parent process, say) instead of parsing ``description``."""
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.description = description
        self.label = label
        self.factory = factory
        self._reactor = reactor
        self._endpoint = endpoint
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        endpoint = self._endpoint or serverFromString(self._reactor, self.description)
        d = endpoint.listen(self.factory)
        failures: list[Any] = []
        started = [False]

        def failed(f: Any) -> None:
            if not started[0]:
                failures.append(f)  # raised below: twistd reports it and exits
                return
            # an endpoint that fails later (a name to resolve, say): a node
            # that cannot listen is no node; stop rather than run deaf
            self._log.failure(
                "cannot listen on {description}; stopping", f, description=self.description
            )
            if self._reactor.running:
                self._reactor.stop()

        d.addCallbacks(self._listening, failed)
        started[0] = True
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
