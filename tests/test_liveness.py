"""Liveness without a network and without waiting: a dead peer (no pong) is
dropped after the configured timeout, and a peer that never sends HELLO is
aborted, both on a clock the test controls."""

from __future__ import annotations

import base64
import json
import os

import pytest
import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from notifyd.bindings import Bindings
from notifyd.node import make_router
from notifyd.router import Policy
from notifyd.testing import FakeBinder
from notifyd.websocket import WampServerFactory


@pytest.fixture
def clock():
    clock = Clock()
    previous = txaio.config.loop
    txaio.config.loop = clock  # autobahn's timers (auto-ping) run on this clock
    yield clock
    txaio.config.loop = previous


def connect(clock, **options):
    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    router = make_router(Policy(allow_anonymous=True), bindings=bindings, clock=clock)
    factory = WampServerFactory(router, clock=clock, **options)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    proto.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    proto.dataReceived(
        (
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
        ).encode()
    )
    assert transport.value().startswith(b"HTTP/1.1 101"), transport.value()[:80]
    transport.clear()
    return proto, transport, router


def frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    mask = os.urandom(4)
    assert len(data) < 126
    return (
        bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    )


def test_dead_peer_is_dropped_after_the_pong_timeout(clock):
    proto, transport, router = connect(
        clock, auto_ping_interval=20, auto_ping_timeout=5, hello_timeout=600
    )
    proto.dataReceived(frame([1, "realm1", {"roles": {"subscriber": {}}}]))
    assert b'"realm1"' in transport.value()  # WELCOME
    transport.clear()
    clock.advance(19.9)
    assert transport.value() == b""
    clock.advance(0.5)
    assert transport.value()[:1] == b"\x89"  # a PING frame
    assert not transport.disconnecting
    clock.advance(4.0)
    assert not transport.disconnecting  # still within the pong timeout
    clock.advance(1.5)
    assert transport.disconnecting  # no pong: dropped


def test_a_live_peer_that_answers_pings_stays(clock):
    proto, transport, router = connect(
        clock, auto_ping_interval=20, auto_ping_timeout=5, hello_timeout=600
    )
    proto.dataReceived(frame([1, "realm1", {"roles": {"subscriber": {}}}]))
    for _ in range(5):
        transport.clear()
        clock.advance(20.5)
        ping = transport.value()
        assert ping[:1] == b"\x89"
        payload = ping[2 : 2 + (ping[1] & 0x7F)]
        mask = os.urandom(4)
        proto.dataReceived(
            bytes([0x8A, 0x80 | len(payload)])
            + mask
            + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        )
        clock.advance(6)
        assert not transport.disconnecting


def test_no_hello_in_time_is_aborted(clock):
    proto, transport, router = connect(clock, hello_timeout=10)
    clock.advance(9.9)
    assert transport.value() == b""
    clock.advance(0.2)
    out = transport.value()
    assert b"notifyd.error.hello_timeout" in out  # ABORT, then the close handshake
    assert router.sessions == {}
