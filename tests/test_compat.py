"""Each private detail notifyd relies on (notifyd.compat): the assumption
holds on the installed Twisted, Autobahn and pika, and the public fallback
works when it does not."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from autobahn.wamp.serializer import (
    CBORObjectSerializer,
    CBORSerializer,
    JsonObjectSerializer,
    JsonSerializer,
    MsgPackObjectSerializer,
    MsgPackSerializer,
)
from pika.adapters.twisted_connection import ClosableDeferredQueue
from pika.exceptions import ConsumerCancelled

from notifyd import compat


def test_every_assumption_holds_on_the_installed_versions():
    assert compat.FALLBACKS == {}
    assert compat.TCP_SERVER is not None and compat.COMPACT and compat.DIRECT_CONSUME


def test_object_serializer_inside_and_without_the_private_attribute():
    for wamp_cls, object_cls in (
        (JsonSerializer, JsonObjectSerializer),
        (MsgPackSerializer, MsgPackObjectSerializer),
        (CBORSerializer, CBORObjectSerializer),
    ):
        ser = wamp_cls()
        assert compat.object_serializer(ser) is ser._serializer
        ser._serializer = None  # as if autobahn renamed it
        inner = compat.object_serializer(ser)
        assert isinstance(inner, object_cls)
        assert inner.unserialize(inner.serialize([1, "realm1", {}])) == [[1, "realm1", {}]]
    compat.FALLBACKS.clear()


def test_compressing_is_assumed_when_unknown():
    assert compat.compressing(SimpleNamespace(_perMessageCompress=None)) is False
    assert compat.compressing(SimpleNamespace(_perMessageCompress=object())) is True
    assert compat.compressing(SimpleNamespace()) is True


def test_compact_drops_values_at_rest_and_handshake_leftovers(monkeypatch):
    class Proto:
        mine = None  # the caller's own attribute at rest, on its class

    compat.at_rest_on(Proto)
    p = Proto()
    p.send_queue = []
    p.http_headers = {"host": "x"}
    p.closedByMe = False  # at rest: the class has it
    p.localCloseCode = 1000  # not at rest: kept
    p.mine = None
    compat.compact(p, {"mine": None})
    assert vars(p).keys() == {"send_queue", "localCloseCode"}
    assert p.closedByMe is False and p.mine is None
    assert isinstance(p.send_queue, compat.SendQueue)
    monkeypatch.setattr(compat, "COMPACT", False)
    q = Proto()
    q.http_headers = {}
    compat.compact(q)
    assert "http_headers" in vars(q)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "fallback-get"])
def test_consume_directly_hands_over_messages_and_reports_cancellation(monkeypatch, direct):
    monkeypatch.setattr(compat, "DIRECT_CONSUME", direct)
    q = ClosableDeferredQueue()
    q.put("early")
    got, why = [], []
    compat.consume_directly(q, got.append, why.append)
    q.put("late")
    assert got == ["early", "late"]
    q.close(ConsumerCancelled())
    assert len(why) == 1 and isinstance(why[0], ConsumerCancelled)


def test_autobahns_per_connection_settings_dump_is_formatted_only_when_logged():
    from pprint import pformat

    from autobahn.websocket import protocol

    import notifyd.websocket  # noqa: F401  (installs it)

    assert compat.lazy_config_log() is True
    value = [("autoPingInterval", 30, "WampServerFactory"), ("utf8validateIncoming", True, "x")]
    lazy = protocol.pformat(value)
    assert str(lazy) == pformat(value)
    assert f"\n{lazy}" == "\n" + pformat(value)
    assert "lazy_config_log" not in compat.FALLBACKS


def test_the_http_client_logs_no_line_per_connection():
    from twisted.web.client import Agent, HTTPConnectionPool

    assert compat.quiet_http_client() is True
    assert "quiet_http_client" not in compat.FALLBACKS
    # the factory Agent's pool builds for a connection is no longer noisy
    pool = HTTPConnectionPool(None, persistent=False)
    Agent.usingEndpointFactory(None, None, pool=pool)
    factory = pool._factory(lambda *a: None, None)
    assert factory.noisy is False


def _pika_connection(received: list) -> Any:
    """A pika connection, as if open, with channel 1 consuming tag ``t``."""
    import pika
    from pika.adapters.twisted_connection import TwistedProtocolConnection
    from pika.channel import Channel

    conn = TwistedProtocolConnection(pika.ConnectionParameters())._impl
    channel = Channel(conn, 1, lambda *a: None)
    channel._set_state(channel.OPEN)
    conn._channels[1] = channel
    channel._consumers["t"] = lambda ch, method, props, body: received.append(
        (vars(method).copy(), vars(props).copy(), body)
    )
    conn.connection_state = conn.CONNECTION_OPEN
    return conn


def _stream() -> bytes:
    """Deliveries of every shape, with other frames between them."""
    import pika
    from pika import frame, spec

    out = []

    def deliver(tag: int, body: bytes, props: Any, split: int = 0) -> None:
        method = spec.Basic.Deliver(
            consumer_tag="t", delivery_tag=tag, exchange="events", routing_key=f"u{tag}.x"
        )
        out.append(frame.Method(1, method).marshal())
        out.append(frame.Header(1, len(body), props).marshal())
        if split:
            out.append(frame.Body(1, body[:split]).marshal())
            out.append(frame.Body(1, body[split:]).marshal())
        elif body:
            out.append(frame.Body(1, body).marshal())

    plain = pika.BasicProperties(content_type="application/json")
    rich = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=2,
        message_id="m-1",
        timestamp=1700000000,
        headers={"notifyd-user": "u1", "n": 5, "nested": {"a": [1, "b"]}},
    )
    deliver(1, b'{"a": 1}', plain)
    deliver(2, b"", rich)  # no body frame at all
    out.append(frame.Heartbeat().marshal())
    deliver(3, b'{"big": "' + b"x" * 300 + b'"}', rich, split=100)  # two body frames
    out.append(frame.Method(1, spec.Basic.QosOk()).marshal())
    deliver(4, "é".encode() * 50, rich)
    for tag in range(5, 9):
        deliver(tag, b"[%d]" % tag, plain)
    return b"".join(out)


def _feed(data: bytes, chunk: int, fast: bool) -> tuple[list, int, int]:
    received: list = []
    conn = _pika_connection(received)
    if fast:
        assert compat.fast_inbound(conn) is True
    for i in range(0, len(data), chunk):
        conn._on_data_available(data[i : i + chunk])
    return received, conn.bytes_received, conn.frames_received


def test_fast_inbound_hands_over_exactly_what_pika_does_at_every_split():
    assert "fast_inbound" not in compat.FALLBACKS
    data = _stream()
    expected = _feed(data, len(data), fast=False)
    assert [m["delivery_tag"] for m, _, _ in expected[0]] == list(range(1, 9))
    assert expected[1] == len(data)
    for chunk in (1, 2, 3, 7, 8, 13, 50, 64, 100, 333, len(data)):
        assert _feed(data, chunk, fast=True) == expected, chunk


def test_fast_inbound_refuses_a_bad_frame_end_as_pika_does():
    import pytest
    from pika.exceptions import InvalidFrameError

    data = bytearray(_stream())
    first_end = 7 + int.from_bytes(data[3:7], "big")
    data[first_end] = 0
    for fast in (False, True):
        with pytest.raises(InvalidFrameError):
            _feed(bytes(data), len(data), fast)
