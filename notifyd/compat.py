"""
Every reach into a library's private internals, in one place.

notifyd's hot path and its memory per idle session lean on a few details of
Twisted, Autobahn and pika that their public APIs do not expose.  Each one
lives here, with the version it was checked against, a check of the
assumption made once when the module is imported (if it no longer holds, the
public path is used and :data:`FALLBACKS` says why), and a test in
``tests/test_compat.py``.  No other notifyd module touches an underscore
attribute of these libraries (``tests/test_architecture.py`` checks that).

=======================  ============================================  =========================
helper                   private detail                                fallback
=======================  ============================================  =========================
:func:`fast_write`       ``twisted.internet.tcp.Server``'s             ``transport.write``
                         ``dataBuffer``, ``_tempDataBuffer``,
                         ``_writeDisconnected`` and ``socket``
                         (Twisted 26.10)
:func:`object_serializer`  autobahn's ``Serializer._serializer``       a new object serializer of
                         (autobahn 26.11)                              the same class
:func:`compressing`      autobahn's ``_perMessageCompress``            "maybe": frames go through
                         (autobahn 26.11)                              ``sendPreparedMessage``
:func:`compact`          autobahn's per-connection attributes at       no compaction (about 3 KB
                         rest (:data:`AT_REST`) and the handshake's    more per idle session)
                         leftovers (autobahn 26.11)
:func:`consume_directly`  pika's ``ClosableDeferredQueue`` ``put``,    one ``queue.get()``
                         ``pending`` and ``close`` (pika 1.4.4)         Deferred per message
:func:`lazy_config_log`  the ``pformat`` autobahn's                     ``pprint`` of ~40 settings
                         ``websocket.protocol`` module calls for a      per connection (a tenth
                         debug line on every connection (autobahn       of a reconnect storm's CPU)
                         26.11)
:func:`fast_inbound`     pika's ``Connection._frame_buffer``,            pika parses every frame
                         ``_process_frame``, ``_channels``,             on its own (about 2/3 of
                         ``Channel._on_deliver`` and the content        its cost per delivery)
                         assembler's state (pika 1.4.4)
:func:`quiet_http_client`  ``twisted.web.client._HTTP11ClientFactory``  two info lines per admin
                         (Twisted 26.10), made not ``noisy``            request of the ``--workers``
                                                                       parent
=======================  ============================================  =========================
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

#: why a helper uses its public fallback (empty when every assumption holds)
FALLBACKS: dict[str, str] = {}


# -- Twisted: the direct socket send --------------------------------------------------
def _tcp_server_class() -> Any:
    from twisted.internet.tcp import Server

    # Twisted 26.10 (src/twisted/internet/abstract.py FileDescriptor and
    # tcp.Connection): these are the attributes write() consults
    probe = Server.__new__(Server)
    try:
        from twisted.internet.abstract import FileDescriptor

        FileDescriptor.__init__(probe)
        for name in ("dataBuffer", "_tempDataBuffer", "connected", "disconnecting"):
            getattr(probe, name)
        if not hasattr(Server, "_writeDisconnected") and not hasattr(probe, "_writeDisconnected"):
            raise AttributeError("_writeDisconnected")
    except Exception as e:
        FALLBACKS["fast_write"] = f"twisted.internet.tcp.Server changed ({e!r})"
        return None
    return Server


TCP_SERVER: Any = _tcp_server_class()


def fast_write(transport: Any, data: bytes) -> None:
    """``transport.write(data)``, but for a plain TCP connection with nothing
    buffered, try the socket first: one ``send`` instead of buffering,
    registering for writability, sending and unregistering (three syscalls
    per connection per reactor turn).  Whatever the socket does not take goes
    through ``transport.write`` as usual, so ordering, flow control
    (producers) and error handling stay Twisted's.  TLS and other transports
    always take the normal path."""
    if (
        TCP_SERVER is not None
        and type(transport) is TCP_SERVER
        and not transport.TLS
        and not transport.dataBuffer
        and not transport._tempDataBuffer
        and transport.connected
        and not transport.disconnecting
        and not transport._writeDisconnected
    ):
        try:
            sent = transport.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            sent = 0  # let Twisted see the error on its own write
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


# -- Autobahn: serializers and compression ------------------------------------------------
def object_serializer(wamp_serializer: Any) -> Any:
    """The object serializer (bytes ⇄ lists) inside an autobahn WAMP
    serializer: ``unserialize`` of a frame without building messages."""
    inner = getattr(wamp_serializer, "_serializer", None)  # autobahn 26.11
    if inner is not None and hasattr(inner, "unserialize"):
        return inner
    FALLBACKS["object_serializer"] = "autobahn's Serializer._serializer is gone"
    from autobahn.wamp import serializer as s

    for wamp_cls, object_cls in (
        (s.JsonSerializer, s.JsonObjectSerializer),
        (s.MsgPackSerializer, s.MsgPackObjectSerializer),
        (s.CBORSerializer, s.CBORObjectSerializer),
    ):
        if isinstance(wamp_serializer, wamp_cls):
            return object_cls()
    raise TypeError(f"no object serializer for {type(wamp_serializer).__name__}")


def compressing(proto: Any) -> bool:
    """Does this autobahn connection compress messages (permessage-deflate)?
    Unknown counts as yes, so that frames take autobahn's own path."""
    return getattr(proto, "_perMessageCompress", True) is not None  # autobahn 26.11


#: what the opening handshake leaves on autobahn's protocol and nothing reads
#: once the connection is open (autobahn 26.11, websocket/protocol.py)
HANDSHAKE_ONLY = (
    "http_headers",
    "http_request_data",
    "http_response_data",
    "http_request_host",
    "http_request_params",
    "http_request_path",
    "http_request_uri",
    "http_status_line",
    "websocket_extensions",
    "websocket_protocols",
    "websocket_origin",
    "_wskey",
)
#: autobahn state that stays at its initial value on an idle connection
#: (autobahn 26.11): an instance attribute equal to the class attribute the
#: protocol class gets from :func:`at_rest_on` is dropped by :func:`compact`
AT_REST: dict[str, Any] = {
    "_isMessageCompressed": False,
    "_perMessageCompress": None,
    "autoPingPending": None,
    "autoPingPendingSent": None,
    "autoPingPendingSeq": 0,
    "autoPingTimeoutCall": None,
    "closeHandshakeTimeoutCall": None,
    "closedByMe": False,
    "current_frame": None,
    "droppedByMe": False,
    "failedByMe": False,
    "frame_data": None,
    "inside_message": False,
    "localCloseCode": None,
    "localCloseReason": None,
    "message_data": None,
    "message_is_binary": False,
    "openHandshakeTimeoutCall": None,
    "remoteCloseCode": None,
    "remoteCloseReason": None,
    "send_state": 0,
    "trackedTimings": None,
    "triggered": False,
    "utf8validateIncomingCurrentMessage": True,
    "wasClean": False,
    "wasCloseHandshakeTimeout": False,
    "wasMaxFramePayloadSizeExceeded": False,
    "wasMaxMessagePayloadSizeExceeded": False,
    "wasNotCleanReason": None,
    "wasOpenHandshakeTimeout": False,
    "wasServerConnectionDropTimeout": False,
    "wasServingFlashSocketPolicyFile": False,
    "websocket_version": 13,  # RFC 6455; read on every frame, so it stays
}


def _autobahn_sets_at_rest() -> bool:
    """Does autobahn still set these attributes per connection?  (If one
    was renamed, dropping it would hide nothing, but a value that moved
    elsewhere could be lost: then compaction is off.)"""
    import inspect

    from autobahn.websocket import protocol

    try:
        source = inspect.getsource(protocol)
    except (OSError, TypeError):
        FALLBACKS["compact"] = "autobahn's source cannot be read to check its attributes"
        return False
    missing = [n for n in (*AT_REST, *HANDSHAKE_ONLY) if re.search(rf"self\.{n}\b", source) is None]
    if missing:
        FALLBACKS["compact"] = f"autobahn no longer sets {', '.join(missing)}"
        return False
    return True


COMPACT = _autobahn_sets_at_rest()


def at_rest_on(cls: type) -> None:
    """Give ``cls`` the values of :data:`AT_REST` as class attributes."""
    if COMPACT:
        for name, value in AT_REST.items():
            setattr(cls, name, value)


class SendQueue(list):
    """autobahn's send queue (for chopped or synchronous sends, which notifyd
    does not use): an empty list is a tenth of an empty ``deque``."""

    __slots__ = ()

    def popleft(self) -> Any:
        return self.pop(0)


def compact(proto: Any, also: dict[str, Any] | None = None) -> None:
    """Shrink an open connection: memory per idle session is what scales.

    autobahn keeps about 70 attributes per connection, too many for
    CPython's shared-key instance dicts.  Values at rest move to the class
    (see :data:`AT_REST`; ``also``: the caller's own attributes at rest),
    the handshake's leftovers go, and the dict is rebuilt at its new size;
    autobahn sees the same values as before."""
    if not COMPACT:
        return
    d = vars(proto)
    for name in HANDSHAKE_ONLY:
        d.pop(name, None)
    for name, value in (*AT_REST.items(), *(also or {}).items()):
        if name in d and d[name] is value:
            del d[name]
    d.pop("trafficStats", None)
    if not proto.send_queue:
        proto.send_queue = SendQueue()
    proto.__dict__ = dict(d)


# -- pika: one callback per message --------------------------------------------------------
def _pika_queue_fits() -> bool:
    from pika.adapters.twisted_connection import ClosableDeferredQueue

    q = ClosableDeferredQueue()
    ok = isinstance(getattr(q, "pending", None), list) and callable(getattr(q, "close", None))
    if not ok:
        FALLBACKS["consume_directly"] = "pika's ClosableDeferredQueue changed"
    return ok


DIRECT_CONSUME = _pika_queue_fits()


def consume_directly(
    queue: Any,
    handler: Callable[[Any], Any],
    cancelled: Callable[[Any], Any] | None = None,
) -> None:
    """Hand every message of a pika consumer queue
    (:class:`~pika.adapters.twisted_connection.ClosableDeferredQueue`) to
    ``handler`` as it arrives, instead of one Deferred per message: the hot
    path's fixed cost per delivery.  ``handler`` must not raise.
    ``cancelled(reason)`` is called when pika closes the queue (RabbitMQ
    cancelled the consumer, or the channel closed)."""
    if not DIRECT_CONSUME:
        _consume_with_get(queue, handler, cancelled)
        return
    pending = list(queue.pending)
    del queue.pending[:]
    queue.put = handler
    close = getattr(queue, "close", None)
    if cancelled is not None and close is not None:

        def closing(reason: Any) -> None:
            close(reason)
            cancelled(reason)

        queue.close = closing
    for msg in pending:
        handler(msg)


def _consume_with_get(
    queue: Any, handler: Callable[[Any], Any], cancelled: Callable[[Any], Any] | None
) -> None:
    """The public path: ``queue.get()`` in a loop."""

    def got(msg: Any) -> None:
        handler(msg)
        queue.get().addCallbacks(got, lost)

    def lost(f: Any) -> None:
        if cancelled is not None:
            cancelled(f.value)

    queue.get().addCallbacks(got, lost)


# -- autobahn: the per-connection debug dump of its settings -------------------------------
class _Deferred_pformat:
    """``pprint.pformat(value)``, done only if a log line is rendered."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        from pprint import pformat

        return pformat(self.value)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def lazy_config_log() -> bool:
    """autobahn 26.11's ``WebSocketProtocol._connectionMade`` logs every
    setting of the connection with ``log.debug("\\n{attrs}",
    attrs=pformat(...))``: the ``pformat`` runs on every connection even with
    debug logging off.  Swap the module's ``pformat`` for one that formats
    only when the line is rendered (the text is the same).  False (and a
    :data:`FALLBACKS` entry) if the module no longer has one."""
    from autobahn.websocket import protocol

    current = getattr(protocol, "pformat", None)
    if current is _Deferred_pformat:
        return True
    if not callable(current):
        FALLBACKS["lazy_config_log"] = "autobahn.websocket.protocol has no pformat"
        return False
    protocol.pformat = _Deferred_pformat
    return True


# -- Twisted: the HTTP client's per-connection log lines --------------------------------
def quiet_http_client() -> bool:
    """Twisted 26.10's HTTP client (``Agent``) builds one
    ``_HTTP11ClientFactory`` per connection, and a factory is ``noisy``: two
    info lines ("Starting factory", "Stopping factory") for every request the
    ``--workers`` parent makes to a worker's admin socket.  Make that class
    quiet.  False (and a :data:`FALLBACKS` entry) if it is not there."""
    try:
        from twisted.web.client import _HTTP11ClientFactory
    except ImportError:
        FALLBACKS["quiet_http_client"] = "twisted.web.client has no _HTTP11ClientFactory"
        return False
    _HTTP11ClientFactory.noisy = False
    return True


# -- pika: the inbound frame path for deliveries ---------------------------------------------
def _pika_inbound_ok() -> str | None:
    """Why :func:`fast_inbound` cannot be used with this pika (None: it can)."""
    try:
        from pika import frame, spec
        from pika.channel import Channel, ContentFrameAssembler
        from pika.connection import Connection

        # the attributes its state set-up assigns
        assigned = set(Connection.__init__.__code__.co_names) | set(
            Connection._init_connection_state.__code__.co_names
        )
        for name in ("_frame_buffer", "bytes_received", "frames_received", "_channels"):
            if name not in assigned:
                return f"pika.connection.Connection has no {name}"
        for owner, name in (
            (Connection, "_on_data_available"),
            (Connection, "_process_frame"),
            (Channel, "_on_deliver"),
        ):
            if not callable(getattr(owner, name, None)):
                return f"{owner.__name__}.{name} is gone"
        if "_method_frame" not in ContentFrameAssembler.__init__.__code__.co_names:
            return "ContentFrameAssembler has no _method_frame"
        if spec.Basic.Deliver.INDEX != 0x003C003C or spec.FRAME_END != 206:
            return "pika's AMQP constants changed"
        frame.Method, frame.Header, frame.decode_frame  # noqa: B018
    except Exception as e:  # an import or attribute that is not there
        return f"{type(e).__name__}: {e}"
    return None


FAST_INBOUND_PROBLEM = _pika_inbound_ok()
if FAST_INBOUND_PROBLEM is not None:
    FALLBACKS["fast_inbound"] = FAST_INBOUND_PROBLEM


def fast_inbound(connection: Any) -> bool:
    """Read a pika connection's deliveries in one pass over each socket read.

    pika 1.4.4 turns every frame into objects on its own: per frame it
    slices the frame out of its buffer, copies the rest of the buffer
    (``_trim_frame_buffer``: quadratic in a large read), looks up callbacks
    and feeds a content assembler; a delivery is three frames.  This swaps
    the connection's ``_on_data_available`` for one that walks the buffer
    by offset: a ``basic.deliver`` whose header and single body frame are
    complete is decoded with pika's own ``spec`` classes and handed to the
    channel's ``_on_deliver`` (which keeps pika's consumer bookkeeping:
    cancelled consumers, unknown tags).  Every other frame (and a delivery
    whose body spans several frames) goes through pika's own
    ``_process_frame``, one frame at a time, as before.  The byte and frame
    counters pika's heartbeat checker reads are kept.

    ``connection`` is a ``TwistedProtocolConnection`` (or pika's own
    connection object).  False (and the public path) if the assumptions
    checked at import do not hold."""
    if FAST_INBOUND_PROBLEM is not None:
        return False
    import struct

    from pika import exceptions, frame, spec

    impl = getattr(connection, "_impl", connection)
    frame_head = struct.Struct(">BHL").unpack_from
    method_id = struct.Struct(">I").unpack_from
    content_head = struct.Struct(">HHQ").unpack_from
    deliver_id = spec.Basic.Deliver.INDEX
    basic_class = spec.Basic.INDEX
    Deliver, Properties = spec.Basic.Deliver, spec.BasicProperties
    Method, Header = frame.Method, frame.Header
    decode_frame = frame.decode_frame
    channels = impl._channels
    frame_end = spec.FRAME_END

    def on_data_available(data: bytes) -> None:
        buf = impl._frame_buffer + data if impl._frame_buffer else data
        end = len(buf)
        pos = 0
        try:
            while end - pos >= 8:
                kind, number, size = frame_head(buf, pos)
                stop = pos + 8 + size
                if stop > end:
                    break
                if buf[stop - 1] != frame_end:
                    raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
                if kind == 1 and size >= 4 and method_id(buf, pos + 7)[0] == deliver_id:
                    channel = channels.get(number)
                    # the header frame must be complete to know the body's size
                    if end - stop < 8:
                        break
                    hkind, hnumber, hsize = frame_head(buf, stop)
                    hstop = stop + 8 + hsize
                    if hstop > end:
                        break
                    if (
                        channel is not None
                        and channel._content_assembler._method_frame is None
                        and hkind == 2
                        and hnumber == number
                        and hsize >= 14
                        and buf[hstop - 1] == frame_end
                        and content_head(buf, stop + 7)[0] == basic_class
                    ):
                        body_size = content_head(buf, stop + 7)[2]
                        if body_size == 0:
                            bstop, body, frames = hstop, b"", 2
                        else:
                            if end - hstop < 8:
                                break
                            bkind, bnumber, bsize = frame_head(buf, hstop)
                            bstop = hstop + 8 + bsize
                            if bsize == body_size and bkind == 3 and bnumber == number:
                                if bstop > end:
                                    break
                                if buf[bstop - 1] != frame_end:
                                    raise exceptions.InvalidFrameError("Invalid FRAME_END marker")
                                body, frames = buf[hstop + 7 : bstop - 1], 3
                            else:
                                bstop = -1  # several body frames: pika's own path
                        if bstop >= 0:
                            method = Deliver()
                            method.decode(buf, pos + 11)
                            properties = Properties()
                            properties.decode(buf, stop + 19)  # reads by offset: no copy
                            pos = bstop
                            impl.frames_received += frames
                            channel._on_deliver(
                                Method(number, method), Header(number, body_size, properties), body
                            )
                            continue
                consumed, value = decode_frame(buf[pos:stop])
                pos = stop
                impl._process_frame(value)
        finally:
            impl._frame_buffer = buf[pos:] if pos < end else b""
            impl.bytes_received += pos

    impl._on_data_available = on_data_available
    return True
