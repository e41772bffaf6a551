"""
WAMP v2 over WebSocket: the thin transport around :class:`WampSession`.

Wire behaviour:

* Subprotocols ``wamp.2.json``, ``wamp.2.msgpack`` and ``wamp.2.cbor``; the
  first one in the *client's* list that notifyd speaks is chosen.  A handshake
  offering none of them is refused with HTTP 400.
* Each WebSocket message holds one WAMP message.  A frame that cannot be
  decoded (wrong frame type for the serializer, garbage, not a list, unknown
  message code, bad field types) ends the session with ABORT
  ``wamp.error.protocol_violation``.  A request (SUBSCRIBE, PUBLISH, …) whose
  URI autobahn refuses to parse gets ERROR ``wamp.error.invalid_uri``.
* Messages larger than ``max_message_size`` are refused by the WebSocket
  layer (close code 1009); invalid UTF-8 in a text frame closes with 1007.
* An EVENT is encoded once per serializer and framed once per serializer,
  however many sessions receive it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import urlsplit

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.exception import InvalidUriError, ProtocolError
from autobahn.wamp.message import Message
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from notifyd.router import Router
from notifyd.session import WampSession
from notifyd.wamp import NotifydEvent

SERIALIZERS = {
    "wamp.2.json": JsonSerializer,
    "wamp.2.msgpack": MsgPackSerializer,
    "wamp.2.cbor": CBORSerializer,
}

_UNSERIALIZABLE = object()


class WampServerProtocol(WebSocketServerProtocol):
    """Negotiates a serializer, decodes frames, hands messages to the session."""

    _nlog = Logger()
    factory: WampServerFactory
    session: WampSession | None = None
    subprotocol: str = ""

    def onConnect(self, request: ConnectionRequest) -> tuple[str, dict[str, str]]:
        if not self.factory.origin_allowed(request.origin, request.headers.get("host")):
            self.factory.router.stats.inc("handshakes_refused_origin")
            self._nlog.info(
                "refused WebSocket from {peer}: origin {origin} not allowed",
                peer=self.peer,
                origin=request.origin,
            )
            raise ConnectionDeny(ConnectionDeny.FORBIDDEN, "origin not allowed")
        for proto in request.protocols:
            if proto in self.factory.serializers:
                self.subprotocol = proto
                self._wamp_serializer = self.factory.serializers[proto]
                self._object_serializer = self._wamp_serializer._serializer
                return proto, {}
        raise ConnectionDeny(
            ConnectionDeny.BAD_REQUEST,
            "This server only speaks the WebSocket subprotocols "
            + ", ".join(self.factory.serializers),
        )

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        self.factory.connection_gone(self)

    def onOpen(self) -> None:
        self.session = WampSession(self.factory.router, self, peer=self.peer)
        self.factory.router.stats.inc(f"connections_{self.subprotocol}")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        ser = self._object_serializer
        if isBinary != ser.BINARY:
            kind = "binary" if isBinary else "text"
            session.protocol_violation(f"{kind} frame on a {self.subprotocol} session")
            return
        try:
            raws = ser.unserialize(payload)
        except Exception as e:
            session.protocol_violation(
                f"frame is not valid {self.subprotocol} ({type(e).__name__})"
            )
            return
        type_map = self._wamp_serializer.MESSAGE_TYPE_MAP
        for raw in raws:
            if self.session is None:
                return
            if type(raw) is not list or not raw or type(raw[0]) is not int:
                session.protocol_violation(
                    "a WAMP message must be a list starting with an integer code"
                )
                return
            klass = type_map.get(raw[0])
            if klass is None:
                session.protocol_violation(f"unknown WAMP message code {raw[0]}")
                return
            try:
                msg = klass.parse(raw)
            except InvalidUriError as e:
                session.invalid_uri(raw, str(e))
                continue
            except ProtocolError as e:
                session.protocol_violation(str(e))
                return
            except Exception as e:
                session.protocol_violation(f"malformed {klass.__name__.upper()} ({e})")
                return
            try:
                session.on_message(msg, raw)
            except Exception:
                self._nlog.failure("internal error handling {msg!r}", msg=msg)
                session.abort("wamp.error.internal", "internal error")
                return

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.on_close()

    # -- Transport for WampSession ---------------------------------------------
    def send(self, msg: Message) -> None:
        if self.state != self.STATE_OPEN:
            return
        payload, is_binary = self._wamp_serializer.serialize(msg)
        self.sendMessage(payload, is_binary)

    def send_event(self, event: NotifydEvent) -> None:
        if self.state != self.STATE_OPEN:
            return
        frames = event.frames
        frame = frames.get(self.subprotocol)
        if frame is None:
            try:
                payload, is_binary = self._wamp_serializer.serialize(event)
            except Exception as e:
                self._nlog.warn(
                    "event on {topic} cannot be encoded as {ser}: {e}",
                    topic=event.topic,
                    ser=self.subprotocol,
                    e=e,
                )
                frames[self.subprotocol] = _UNSERIALIZABLE
                self.factory.router.stats.inc("events_dropped_unserializable")
                return
            frame = frames[self.subprotocol] = self.factory.prepareMessage(payload, is_binary)
        elif frame is _UNSERIALIZABLE:
            self.factory.router.stats.inc("events_dropped_unserializable")
            return
        self.sendPreparedMessage(frame)

    def close(self) -> None:
        if self.state in (self.STATE_OPEN, self.STATE_CONNECTING):
            self.sendClose(1000)


class WampServerFactory(WebSocketServerFactory):
    """Builds :class:`WampServerProtocol`s bound to one :class:`Router`."""

    protocol = WampServerProtocol

    def __init__(
        self,
        router: Router,
        *,
        url: str | None = None,
        max_message_size: int = 1024 * 1024,
        allowed_origins: list[str] | None = None,
        **options: Any,
    ) -> None:
        self.serializers = {name: cls() for name, cls in SERIALIZERS.items()}
        super().__init__(url=url, protocols=list(self.serializers), server="notifyd")
        self.router = router
        self.allowed_origins = [o.lower() for o in allowed_origins or []]
        self.connections: set[WampServerProtocol] = set()
        self._drained: list[Deferred[None]] = []
        self.setProtocolOptions(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # tell the peer why (e.g. 1009 message too big) instead of just
            # dropping the TCP connection
            failByDrop=False,
            **options,
        )

    def origin_allowed(self, origin: str | None, host: str | None) -> bool:
        """The Origin rule: requests without Origin (not from a browser) pass;
        a browser's Origin must match ``allowed_origins``, or, when that is
        empty, be the page's own origin (same host and port)."""
        if not origin:
            return True
        origin = origin.lower()
        if self.allowed_origins:
            return any(o == "*" or fnmatchcase(origin, o) for o in self.allowed_origins)
        if origin == "null" or host is None:
            return False
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False
        default = {"http": 80, "https": 443}[parts.scheme]
        want = host.lower()
        if ":" not in want.rsplit("]", 1)[-1]:
            want = f"{want}:{default}"
        got = parts.netloc if parts.port else f"{parts.netloc}:{default}"
        return got == want

    def connection_gone(self, proto: WampServerProtocol) -> None:
        self.connections.discard(proto)
        if not self.connections:
            waiters, self._drained = self._drained, []
            for d in waiters:
                d.callback(None)

    def shutdown(self, timeout: float, clock: Any = None) -> Deferred[None]:
        """Say GOODBYE (``wamp.close.system_shutdown``) to every session and
        wait for the connections to close, at most ``timeout`` seconds; then
        drop whatever is left."""
        if clock is None:
            from twisted.internet import reactor as clock
        for proto in list(self.connections):
            if proto.session is not None:
                proto.session.shutdown()
            else:
                proto.close()
        if not self.connections:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)

        def force(result: Any) -> None:
            for proto in list(self.connections):
                proto.dropConnection(abort=True)
            return None

        return d.addTimeout(timeout, clock).addErrback(force)
