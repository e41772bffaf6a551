"""The AMQP connection's read batching, on a fake transport and clock."""

from __future__ import annotations

import pika
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from notifyd.amqp import AMQPService


def connection(read_batch: float) -> tuple[object, StringTransport, Clock, list]:
    clock = Clock()
    service = AMQPService(
        "amqp://guest:guest@127.0.0.1:5672/%2F",
        "events",
        None,  # type: ignore[arg-type]
        lambda *a: None,
        read_batch=read_batch,
        reactor=clock,
    )
    factory = service.connection_factory(pika.URLParameters("amqp://127.0.0.1/%2F"))
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    got: list = []
    proto._impl.data_received = got.append  # what pika would parse
    return proto, transport, clock, got


def test_after_a_read_the_connection_waits_read_batch_before_reading_again():
    proto, transport, clock, got = connection(0.002)
    proto.dataReceived(b"frame-1")
    assert got == [b"frame-1"]
    assert transport.producerState == "paused"
    clock.advance(0.001)
    assert transport.producerState == "paused"
    clock.advance(0.001)
    assert transport.producerState == "producing"
    # one pause at a time, however many reads a turn brings
    proto.dataReceived(b"frame-2")
    proto.dataReceived(b"frame-3")
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0.002)
    assert transport.producerState == "producing" and got[-1] == b"frame-3"


def test_no_batching_reads_at_once():
    proto, transport, clock, got = connection(0.0)
    proto.dataReceived(b"frame-1")
    assert got == [b"frame-1"]
    assert transport.producerState == "producing"
    assert clock.getDelayedCalls() == []


def test_a_connection_lost_while_waiting_is_not_resumed():
    proto, transport, clock, got = connection(0.002)
    proto.dataReceived(b"frame-1")
    transport.connected = False
    clock.advance(0.002)
    assert transport.producerState == "paused"


def test_a_big_read_is_a_batch_already_and_is_not_followed_by_a_pause():
    from notifyd.amqp import BATCHED_READ

    proto, transport, clock, got = connection(0.002)
    proto.dataReceived(b"x" * BATCHED_READ)
    assert transport.producerState == "producing"
    assert clock.getDelayedCalls() == []
