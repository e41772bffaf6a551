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
  Until the session is WELCOMEd the limit is ``max_message_size_before_welcome``
  (64 KiB by default): an unauthenticated peer cannot make the node buffer
  large frames.  A closed connection's receive buffers are dropped at once.
* An EVENT is encoded once per serializer and framed once per serializer,
  however many sessions receive it.

Origins (checked at the opening handshake, refusal: HTTP 403):

* A handshake without ``Origin`` (not from a browser) passes.  ``Origin:
  null`` (sandboxed frames, ``file:``) and anything that is not
  ``http(s)://host[:port]`` are refused.
* With ``allowed_origins`` set, scheme, host and port of the Origin must
  match one entry (``https://app.example.com``, ``https://*.example.com``,
  ``http://host:*``; a missing port means the scheme's default; ``*`` allows
  every http(s) origin).
* With ``allowed_origins`` empty (the default), the Origin must be exactly the
  address the connection was made on -- ``http`` or ``https`` as the
  connection is plain or TLS, the local IP address (or ``localhost`` on a
  loopback address) and the local port.  ``Host`` is never consulted, and a
  DNS name never matches (it could be rebound to this address): a deployment
  reached by a name must list its public origins in ``allowed_origins``.

Limits and liveness:

* Every TCP connection of the public endpoints counts toward
  ``max_connections`` and ``max_connections_per_address`` from accept to
  close, in its HTTP phase as well as once it is a WebSocket (see
  :class:`ConnectionGate`); over a limit it is answered HTTP 503 and closed.
* The HTTP phase has an absolute deadline (see :mod:`notifyd.web`); the
  opening handshake must complete within ``handshake_timeout``; HELLO (and
  authentication) must follow within ``hello_timeout``, else ABORT
  ``notifyd.error.hello_timeout``.
* Every ``auto_ping_interval`` seconds the server pings; a peer that sends
  nothing (no pong, no data) for ``auto_ping_timeout`` more is dropped.
* **Slow clients.**  Each connection is a push producer of its TCP
  transport: when the kernel and Twisted's buffer (64 KiB) are full, Twisted
  pauses it.  While paused, at most ``max_outbound_buffer`` more bytes are
  queued for it; past that it gets no more events: its subscriptions end,
  GOODBYE ``notifyd.close.slow_consumer`` is queued behind what it has not
  read yet (so a client that keeps reading learns why and can resume), and
  the connection is aborted if it is still open 10 s later (logged as
  ``slow consumer``, counted in ``notifyd_slow_consumer_disconnects_total``
  and ``notifyd_events_dropped_total{reason="slow_consumer"}``).  No other
  session and not the AMQP consumer ever waits for it.
"""

from __future__ import annotations

import ipaddress
import re
from fnmatch import fnmatchcase
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.exception import InvalidUriError, ProtocolError
from autobahn.wamp.message import Message, Welcome
from autobahn.wamp.serializer import CBORSerializer, JsonSerializer, MsgPackSerializer
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import ISSLTransport

from notifyd import compat, uris
from notifyd.logs import Logger
from notifyd.router import Router
from notifyd.session import WampSession
from notifyd.wamp import NotifydEvent

SERIALIZERS = {
    "wamp.2.json": JsonSerializer,
    "wamp.2.msgpack": MsgPackSerializer,
    "wamp.2.cbor": CBORSerializer,
}

_UNSERIALIZABLE = object()
#: a slow consumer has this long to read its backlog and GOODBYE
SLOW_CONSUMER_GRACE = 10.0


_log = Logger()


class _Flusher:
    """Writes each connection's EVENT frames once per reactor turn.

    An AMQP read often carries many deliveries; queueing their frames per
    connection and writing them at the end of the turn makes one ``send``
    per connection per turn, however many events it got, and a lone event
    costs one ``send`` too (see :func:`notifyd.compat.fast_write`)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._dirty: list[WampServerProtocol] = []
        self._call: Any = None

    def add(self, proto: WampServerProtocol) -> None:
        self._dirty.append(proto)
        if self._call is None:
            self._call = self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        self._call = None
        dirty, self._dirty = self._dirty, []
        for proto in dirty:
            try:
                proto.flush()
            except Exception:
                # its queued EVENTs are lost: drop the connection, so that the
                # client reconnects (and resumes) instead of living with a gap
                proto._out = None
                _log.failure("writing to {peer} failed; dropping it", peer=proto.peer)
                proto.dropConnection(abort=True)


class _Pressure:
    """Twisted tells a connection's transport buffer state through this."""

    def __init__(self, proto: WampServerProtocol) -> None:
        self.proto = proto

    def pauseProducing(self) -> None:
        # called again on every write while the buffer stays full
        if not self.proto.paused:
            self.proto.paused = True
            self.proto.backlog = 0

    def resumeProducing(self) -> None:
        self.proto.paused = False
        self.proto.backlog = 0
        self.proto.drained()

    def stopProducing(self) -> None:
        self.proto.paused = False
        self.proto.drained()


class WampServerProtocol(WebSocketServerProtocol):
    """Negotiates a serializer, decodes frames, hands messages to the session."""

    _nlog = Logger()
    factory: WampServerFactory
    session: WampSession | None = None
    subprotocol: str = ""
    paused = False
    backlog = 0
    #: one traffic counter for all connections (notifyd has its own metrics)
    trafficStats = TrafficStats()
    #: EVENT frames waiting for the end of this reactor turn (see _Flusher)
    _out: list[bytes] | None = None
    _drain: list[Deferred[None]] | None = None
    _hello_timer: Any = None
    _slow = False
    _slow_drop: Any = None

    def onConnect(self, request: ConnectionRequest) -> tuple[str, dict[str, str]]:
        transport = self.transport
        local = transport.getHost() if transport is not None else None
        if not self.factory.origin_allowed(
            request.origin,
            (getattr(local, "host", None), getattr(local, "port", None)),
            ISSLTransport.providedBy(transport),
        ):
            self.factory.router.stats.inc_labelled("connections_refused", "origin")
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
                self._object_serializer = compat.object_serializer(self._wamp_serializer)
                return proto, {}
        raise ConnectionDeny(
            ConnectionDeny.BAD_REQUEST,
            "This server only speaks the WebSocket subprotocols "
            + ", ".join(self.factory.serializers),
        )

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.connections.add(self)
        small = self.factory.max_message_size_before_welcome
        if small and small < self.maxMessagePayloadSize:
            # until WELCOME (see send); afterwards the class's limits apply
            self.maxMessagePayloadSize = self.maxFramePayloadSize = small
        # Behind WebSocketResource the HTTP channel that accepted the upgrade
        # is still the transport's producer; this connection takes over.
        if getattr(self.transport, "producer", None) is not None:
            self.transport.unregisterProducer()
        self.transport.registerProducer(_Pressure(self), True)

    def connectionLost(self, reason: Any) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        if self._slow_drop is not None and self._slow_drop.active():
            self._slow_drop.cancel()
        self.factory.gate.closed(self.transport)
        super().connectionLost(reason)
        self.factory.connection_gone(self)
        self.drained()
        # a peer that was half-way through a large frame leaves it here;
        # drop it now rather than when the protocol object is collected
        self.data = b""
        self.frame_data = self.message_data = None

    def writable(self) -> Deferred[None] | None:
        """None if the socket takes more now; else a Deferred that fires once
        it does (or the connection is gone).  Replays pace themselves on it."""
        if not self.paused:
            return None
        d: Deferred[None] = Deferred()
        if self._drain is None:
            self._drain = []
        self._drain.append(d)
        return d

    def drained(self) -> None:
        waiting, self._drain = self._drain, None
        for d in waiting or ():
            d.callback(None)

    def onOpen(self) -> None:
        self.session = WampSession(self.factory.router, self, peer=self.peer)
        self._hello_timer = self.factory.clock.callLater(self.factory.hello_timeout, self._no_hello)
        compat.compact(self, {"_hello_timer": None})

    def _no_hello(self) -> None:
        self._hello_timer = None
        session = self.session
        if session is not None and session.state.value in ("new", "challenged"):
            self._nlog.info("no HELLO from {peer} in time: closing", peer=self.peer)
            session.abort(uris.ERROR_HELLO_TIMEOUT, "no HELLO (or authentication) in time")

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
                if self._hello_timer is not None and session.state.value == "open":
                    if self._hello_timer.active():
                        self._hello_timer.cancel()
                    self._hello_timer = None
            except Exception:
                self._nlog.failure("internal error handling {msg!r}", msg=msg)
                session.abort(uris.ERROR_INTERNAL, "internal error")
                return

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.on_close()

    # -- Transport for WampSession ---------------------------------------------
    def send(self, msg: Message) -> None:
        if self.state != self.STATE_OPEN or self._slow:
            return
        if self._out is not None:
            self.flush()  # EVENTs queued before this message go first
        payload, is_binary = self._wamp_serializer.serialize(msg)
        if self.paused and self._over_budget(len(payload)):
            return
        self.sendMessage(payload, is_binary)
        if type(msg) is Welcome:
            # authenticated: the full max_message_size (the class's) applies
            for limit in ("maxMessagePayloadSize", "maxFramePayloadSize"):
                if limit in vars(self):
                    delattr(self, limit)

    def _over_budget(self, size: int) -> bool:
        self.backlog += size
        if self.backlog <= self.factory.max_outbound_buffer:
            return False
        self._slow = True
        stats = self.factory.router.stats
        stats.inc("slow_consumers")
        stats.inc_labelled("events_dropped", "slow_consumer")
        self._nlog.warn(
            "slow consumer {peer}: more than {n} bytes waiting; disconnecting",
            peer=self.peer,
            n=self.factory.max_outbound_buffer,
        )
        # No more events for it.  GOODBYE goes behind what is queued, so a
        # client that keeps reading learns why (and resumes) before the
        # connection ends; one that reads nothing is dropped after a grace.
        session = self.session
        goodbye = session.leave_slow() if session is not None else None
        if goodbye is not None:
            payload, is_binary = self._wamp_serializer.serialize(goodbye)
            self.sendMessage(payload, is_binary)
        self._slow_drop = self.factory.clock.callLater(SLOW_CONSUMER_GRACE, self._drop_slow)
        return True

    def _drop_slow(self) -> None:
        self._slow_drop = None
        if self.state != self.STATE_CLOSED:
            self.dropConnection(abort=True)

    def send_event(self, event: NotifydEvent) -> None:
        if self.state != self.STATE_OPEN or self._slow:
            if self._slow:
                self.factory.router.stats.inc_labelled("events_dropped", "slow_consumer")
            return
        frames = event.frames
        frame = frames.get(self.subprotocol)
        if frame is None:
            try:
                payload = event.json_payload() if self.subprotocol == "wamp.2.json" else None
                if payload is not None:
                    is_binary = False
                else:
                    payload, is_binary = self._wamp_serializer.serialize(event.message())
            except Exception as e:
                self._nlog.warn(
                    "event on {topic} cannot be encoded as {ser}: {e}",
                    topic=event.topic,
                    ser=self.subprotocol,
                    e=e,
                )
                frames[self.subprotocol] = _UNSERIALIZABLE
                self.factory.router.stats.inc_labelled("events_dropped", "unserializable")
                return
            frame = frames[self.subprotocol] = self.factory.prepareMessage(payload, is_binary)
        elif frame is _UNSERIALIZABLE:
            self.factory.router.stats.inc_labelled("events_dropped", "unserializable")
            return
        if self.paused and self._over_budget(len(frame.payloadHybi)):
            return
        if not self.send_queue and not compat.compressing(self):
            out = self._out
            if out is None:
                self._out = [frame.payloadHybi]
                self.factory.flusher.add(self)
            else:
                out.append(frame.payloadHybi)
        else:
            self.sendPreparedMessage(frame)

    def flush(self) -> None:
        """Write the EVENT frames queued this reactor turn, in one piece."""
        out, self._out = self._out, None
        if out is not None and self.state == self.STATE_OPEN:
            compat.fast_write(self.transport, out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.state == self.STATE_OPEN:
            if self._out is not None:
                self.flush()
            self.sendClose(1000)
        elif self.state == self.STATE_CONNECTING:
            self.dropConnection(abort=True)


compat.at_rest_on(WampServerProtocol)
compat.lazy_config_log()


def _as_class_attr(value: Any) -> Any:
    # a function stored on a class would become a method: keep it plain
    return staticmethod(value) if callable(value) else value


def _accept_deflate(offers: list[Any]) -> Any:
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(offer)
    return None


class ConnectionGate:
    """The public endpoints' TCP connections, counted from accept to close.

    :mod:`notifyd.web` asks :meth:`refusal` before it builds a protocol for
    an accepted connection and calls :meth:`opened` when the HTTP channel
    starts; whichever protocol holds the transport when it closes (the HTTP
    channel, or the WebSocket that took it over) calls :meth:`closed`.  So a
    connection counts the same in its HTTP phase and as a WebSocket, and its
    slot is released exactly once.
    """

    def __init__(self, max_connections: int = 0, max_per_address: int = 0) -> None:
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self._open: dict[Any, str | None] = {}  # transport -> peer address
        self._per_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._open)

    def count(self, host: str) -> int:
        return self._per_address.get(host, 0)

    def refusal(self, host: str | None) -> str | None:
        """Why one more connection from ``host`` (None: not an IP peer, e.g.
        a UNIX socket, which has no per-address limit) may not be accepted,
        or None."""
        if self.max_connections and len(self._open) >= self.max_connections:
            return "limit"
        if (
            self.max_per_address
            and host is not None
            and self._per_address.get(host, 0) >= self.max_per_address
        ):
            return "limit_per_address"
        return None

    def opened(self, transport: Any, host: str | None) -> None:
        if transport in self._open:
            return
        self._open[transport] = host
        if host is not None:
            self._per_address[host] = self._per_address.get(host, 0) + 1

    def closed(self, transport: Any) -> None:
        if transport not in self._open:
            return
        host = self._open.pop(transport)
        if host is None:
            return
        left = self._per_address[host] - 1
        if left:
            self._per_address[host] = left
        else:
            del self._per_address[host]


_ORIGIN = re.compile(r"(https?)://(\[[0-9a-f:.]+\]|[a-z0-9.\-]+)(?::(\d{1,5}))?")
_ORIGIN_PATTERN = re.compile(r"(https?)://([a-z0-9*.\-]+)(?::(\d{1,5}|\*))?")
_DEFAULT_PORT = {"http": 80, "https": 443}


def _parse_origin(origin: str) -> tuple[str, str, int] | None:
    """``(scheme, host, port)`` of a browser's Origin, or None for ``null``
    and anything that is not ``http(s)://host[:port]``."""
    m = _ORIGIN.fullmatch(origin.strip().lower())
    if m is None:
        return None
    scheme, host, port = m.groups()
    return scheme, host.strip("[]"), int(port) if port else _DEFAULT_PORT[scheme]


def _origin_pattern(entry: str) -> tuple[str, str, int | None] | None:
    """An ``allowed_origins`` entry as ``(scheme, host pattern, port or None
    for any)``; None stands for ``*`` (every http(s) origin)."""
    entry = entry.strip().lower()
    if entry == "*":
        return None
    m = _ORIGIN_PATTERN.fullmatch(entry)
    if m is None:
        raise ValueError(f"{entry!r} is not an origin")
    scheme, host, port = m.groups()
    if port == "*":
        return scheme, host, None
    return scheme, host, int(port) if port else _DEFAULT_PORT[scheme]


def _origin_matches(
    pattern: tuple[str, str, int | None] | None, origin: tuple[str, str, int]
) -> bool:
    if pattern is None:
        return True
    scheme, host, port = pattern
    return (
        origin[0] == scheme and (port is None or origin[2] == port) and fnmatchcase(origin[1], host)
    )


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address literal, IPv4-mapped IPv6 as IPv4; None for a name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class WampServerFactory(WebSocketServerFactory):
    """Builds :class:`WampServerProtocol`s bound to one :class:`Router`."""

    protocol = WampServerProtocol

    def __init__(
        self,
        router: Router,
        *,
        url: str | None = None,
        max_message_size: int = 1024 * 1024,
        max_message_size_before_welcome: int = 64 * 1024,
        allowed_origins: list[str] | None = None,
        max_connections: int = 0,
        max_connections_per_address: int = 0,
        max_outbound_buffer: int = 1024 * 1024,
        handshake_timeout: float = 10.0,
        hello_timeout: float = 10.0,
        auto_ping_interval: float = 0.0,
        auto_ping_timeout: float = 10.0,
        compression: bool = False,
        clock: Any = None,
    ) -> None:
        self.serializers = {name: cls() for name, cls in SERIALIZERS.items()}
        super().__init__(url=url, protocols=list(self.serializers), server="notifyd")
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.flusher = _Flusher(clock)
        self.router = router
        self.allowed_origins = [_origin_pattern(o) for o in allowed_origins or []]
        self.max_message_size_before_welcome = max_message_size_before_welcome
        #: counts the public endpoints' TCP connections (see notifyd.web)
        self.gate = ConnectionGate(max_connections, max_connections_per_address)
        self.max_outbound_buffer = max_outbound_buffer
        self.handshake_timeout = handshake_timeout
        self.hello_timeout = hello_timeout
        self.connections: set[WampServerProtocol] = set()
        self._drained: list[Deferred[None]] = []
        #: the WebSocket options, shared with the conformance testee
        self.protocol_options: dict[str, Any] = dict(
            maxMessagePayloadSize=max_message_size,
            maxFramePayloadSize=max_message_size,
            # tell the peer why (e.g. 1009 message too big) instead of just
            # dropping the TCP connection
            failByDrop=False,
            # no version banner for a GET without Upgrade (notifyd.web answers
            # it first anyway); the Origin rule is notifyd's own (onConnect),
            # so autobahn lets even "null" through to it
            webStatus=False,
            allowNullOrigin=True,
            openHandshakeTimeout=handshake_timeout,
            closeHandshakeTimeout=5,
            autoPingInterval=auto_ping_interval,
            autoPingTimeout=auto_ping_timeout,
        )
        if compression:
            self.protocol_options["perMessageCompressionAccept"] = _accept_deflate
        self.setProtocolOptions(**self.protocol_options)
        # autobahn copies every option onto each connection unless the class
        # already has it: give it a class of its own with the options on it
        # (about a kilobyte less per idle connection)
        self.protocol = type(
            "WampServerProtocol",
            (WampServerProtocol,),
            {name: _as_class_attr(getattr(self, name)) for name in WampServerProtocol.CONFIG_ATTRS},
        )

    def origin_allowed(
        self, origin: str | None, local: tuple[str | None, int | None], secure: bool
    ) -> bool:
        """The Origin rule (see the module docstring).  ``local`` is the
        (IP address, port) the connection was accepted on, ``secure`` whether
        it is TLS."""
        if not origin:
            return True  # not a browser
        parsed = _parse_origin(origin)
        if parsed is None:
            return False
        if self.allowed_origins:
            return any(_origin_matches(p, parsed) for p in self.allowed_origins)
        scheme, host, port = parsed
        local_host, local_port = local
        if scheme != ("https" if secure else "http") or port != local_port or not local_host:
            return False
        here = _ip(local_host)
        if here is None:
            return False
        if host == "localhost":
            return here.is_loopback
        return _ip(host) == here

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
