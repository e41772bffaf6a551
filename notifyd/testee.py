"""
A WebSocket echo service with exactly notifyd's WebSocket options.

Off by default; ``--testee-listen ENDPOINT`` turns it on.  It exists so an
RFC 6455 conformance suite (the Autobahn TestSuite's cases, run by
``kosoku``) can exercise the very WebSocket settings notifyd serves
browsers with, the way Crossbar.io's "websocket-testee" does.  It speaks no
WAMP and touches no router state.  Never expose it publicly: it echoes
whatever it is sent.
"""

from __future__ import annotations

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.web.resource import Resource
from twisted.web.server import Site


class EchoProtocol(WebSocketServerProtocol):
    def onConnect(self, request: Any) -> None:
        return None  # accept any (or no) subprotocol

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.sendMessage(payload, isBinary)


def make_testee_factory(ws_factory: Any) -> WebSocketServerFactory:
    """An echo factory configured like ``ws_factory`` (a WampServerFactory)."""
    factory = WebSocketServerFactory(server="notifyd-testee")
    factory.protocol = EchoProtocol
    factory.setProtocolOptions(**ws_factory.protocol_options)
    return factory


def make_testee_site(ws_factory: Any) -> Site:
    """The echo service at ``/`` (and at ``/ws``)."""
    factory = make_testee_factory(ws_factory)
    root = WebSocketResource(factory)
    container = Resource()
    container.putChild(b"", root)
    container.putChild(b"ws", root)
    site = Site(container)
    site.displayTracebacks = False
    return site
