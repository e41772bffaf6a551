"""Delivery receipts and the undelivered fallback, without a network
(docs/presence.md): the headers, the per-node receipts with targeting, and
the decider's one decision per event."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pika
import pytest
from autobahn.wamp import message, role
from pika.exceptions import UnroutableError
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from notifyd import uris
from notifyd.bindings import Bindings
from notifyd.events import (
    HEADER_FALLBACK_AFTER,
    HEADER_RECEIPT,
    BadEvent,
    canonical_headers,
    decode_delivery,
)
from notifyd.node import make_router
from notifyd.receipts import Decider, Decisions, Receipts
from notifyd.router import Policy
from notifyd.session import WampSession
from notifyd.testing import FakeBinder, RecordingTransport


def props(headers=None, message_id="m-1", timestamp=None):
    return pika.BasicProperties(
        content_type="application/json",
        headers=headers,
        message_id=message_id,
        timestamp=timestamp,
    )


def decode(headers, message_id="m-1"):
    return decode_delivery("invoice.sent", props(headers, message_id), b'{"n":1}', 1 << 20)


# -- headers ------------------------------------------------------------------------------
def test_receipt_headers_mark_the_event_and_its_details():
    assert not decode({}).receipt and "x_receipt" not in decode({}).extra
    for headers in ({HEADER_RECEIPT: True}, {HEADER_RECEIPT: "true"}, {HEADER_FALLBACK_AFTER: 60}):
        event = decode(headers)
        assert event.receipt and event.extra["x_receipt"] is True
    assert not decode({HEADER_RECEIPT: False}).receipt


@pytest.mark.parametrize(
    "headers",
    [
        {HEADER_RECEIPT: "maybe"},
        {HEADER_FALLBACK_AFTER: 0},
        {HEADER_FALLBACK_AFTER: -5},
        {HEADER_FALLBACK_AFTER: 1201},
        {HEADER_FALLBACK_AFTER: "soon"},
        {HEADER_FALLBACK_AFTER: "nan"},
        {HEADER_FALLBACK_AFTER: True},
        {HEADER_FALLBACK_AFTER: [60]},
    ],
)
def test_bad_receipt_headers_are_refused(headers):
    with pytest.raises(BadEvent):
        decode(headers)


def test_a_receipt_needs_a_message_id():
    with pytest.raises(BadEvent, match="message_id"):
        decode({HEADER_RECEIPT: True}, message_id=None)


def test_the_event_log_keeps_the_receipt():
    """The canonical form (what the ingest step writes to the log) asks for
    the receipt again when read back."""
    event = decode({HEADER_FALLBACK_AFTER: "30"})
    again = decode(canonical_headers(event))
    assert again.receipt and again.extra["x_message_id"] == "m-1"
    assert again.fallback_after == 30.0


# -- per node: delivered, displayed, targeting ---------------------------------------------
def setup_router():
    bindings, ch = Bindings(), FakeBinder(auto=True)
    bindings.attach(ch)
    sent: list[tuple[str, dict]] = []
    clock = Clock()
    receipts = Receipts(
        lambda key, body: sent.append((key, json.loads(body))) or True,
        clock,
        "node-a",
        decide=lambda body: sent.append(("(decide)", json.loads(body))),
    )
    router = make_router(Policy(allow_anonymous=True), bindings=bindings, receipts=receipts)
    return router, sent


def joined(router, authid):
    t = RecordingTransport()
    s = WampSession(router, t)
    s.on_message(message.Hello("realm1", {"subscriber": role.RoleSubscriberFeatures()}))
    s.authid = authid
    s.on_message(message.Subscribe(1, "invoice.sent"))
    return s, t


def call(s, t, procedure, *args):
    s.on_message(message.Call(len(t.sent) + 100, procedure, args=list(args)))
    return t.sent[-1]


def test_a_targeted_event_is_receipted_only_for_its_sessions():
    router, sent = setup_router()
    alice, ta = joined(router, "alice")
    bob, tb = joined(router, "bob")
    headers = {HEADER_RECEIPT: True, "wamp-eligible-authid": "alice"}
    n = router.on_delivery("invoice.sent", props(headers, "m-7"), b"1")
    assert n == 1 and len(ta.events) == 1 and tb.events == []
    assert [(k, r["receipt"], r["message_id"]) for k, r in sent] == [("m-7", "delivered", "m-7")]
    assert set(sent[0][1]) == {"version", "message_id", "receipt", "node", "time"}
    # bob was not sent it: his "displayed" is refused and publishes nothing
    err = call(bob, tb, "notifyd.receipt.displayed", "m-7")
    assert isinstance(err, message.Error) and err.error == uris.ERROR_NO_RECEIPT
    assert len(sent) == 1
    ok = call(alice, ta, "notifyd.receipt.displayed", "m-7")
    assert isinstance(ok, message.Result)
    assert sent[-1][1]["receipt"] == "displayed"
    # once per node
    call(alice, ta, "notifyd.receipt.displayed", "m-7")
    router.on_delivery("invoice.sent", props(headers, "m-7"), b"1")
    assert len(sent) == 2


def test_only_displayed_receipts_of_fallback_events_go_to_the_decider():
    router, sent = setup_router()
    s, t = joined(router, "alice")
    router.on_delivery("invoice.sent", props({HEADER_RECEIPT: True}, "plain"), b"1")
    router.on_delivery("invoice.sent", props({HEADER_FALLBACK_AFTER: 9}, "fallback"), b"1")
    call(s, t, "notifyd.receipt.displayed", "plain")
    call(s, t, "notifyd.receipt.displayed", "fallback")
    assert [(k, r["receipt"]) for k, r in sent] == [
        ("plain", "delivered"),
        ("fallback", "delivered"),
        ("plain", "displayed"),
        ("fallback", "displayed"),
        ("(decide)", "displayed"),
    ]
    assert sent[-1][1] == sent[-2][1]


def test_a_receipt_rabbitmq_did_not_take_can_be_reported_again():
    up = [False]
    sent = []

    def send(key, body):
        if up[0]:
            sent.append(json.loads(body)["receipt"])
        return up[0]

    receipts = Receipts(send, Clock(), "node-a")
    session = SimpleNamespace(session_id=5)
    event = decode({HEADER_RECEIPT: True}, "m-9")
    receipts.delivered(event, [session])
    assert not receipts.displayed(session, "m-10")
    assert receipts.displayed(session, "m-9") and sent == []
    up[0] = True
    assert receipts.displayed(session, "m-9")
    receipts.delivered(event, [session])
    assert sent == ["displayed", "delivered"]
    assert receipts.published == {"delivered": 1, "displayed": 1}


def test_no_receipt_without_a_session_or_without_the_header():
    router, sent = setup_router()
    router.on_delivery("invoice.sent", props({HEADER_RECEIPT: True}, "m-1"), b"1")
    assert sent == []  # nobody subscribed: nothing delivered here
    s, t = joined(router, "alice")
    router.on_delivery("invoice.sent", props(None, "m-2"), b"1")
    assert sent == [] and len(t.events) == 1
    err = call(s, t, "notifyd.receipt.displayed", "m-2")
    assert err.error == uris.ERROR_NO_RECEIPT
    err = call(s, t, "notifyd.receipt.displayed", 5)
    assert err.error == uris.ERROR_INVALID_ARGUMENT


def test_a_session_that_left_cannot_report():
    router, sent = setup_router()
    s, t = joined(router, "alice")
    router.on_delivery("invoice.sent", props({HEADER_RECEIPT: True}, "m-3"), b"1")
    receipts = router.receipts
    router.detach(s)
    assert not receipts.displayed(s, "m-3")


def test_receipts_off_answers_a_clear_error():
    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    router = make_router(Policy(allow_anonymous=True), bindings=bindings)
    s, t = joined(router, "alice")
    router.on_delivery("invoice.sent", props({HEADER_RECEIPT: True}, "m-3"), b"1")
    assert t.events[0].extra["x_receipt"] is True  # the client is told; nothing else
    err = call(s, t, "notifyd.receipt.displayed", "m-3")
    assert err.error == uris.ERROR_RECEIPTS_OFF


# -- the decider ----------------------------------------------------------------------------
class Channel:
    """Records acks and rejects; republishes answer as the test says."""

    def __init__(self):
        self.acks: list[int] = []
        self.rejects: list[int] = []
        self.republished: list = []
        self.answers: list[Deferred] = []
        self.auto = True

    def republish(self, msg):
        self.republished.append(msg)
        if self.auto:
            return succeed(None)
        d = Deferred()
        self.answers.append(d)
        return d


def decider(clock=None, decided=None):
    ch = Channel()
    clock = clock or Clock()
    d = Decider(clock, ch.acks.append, ch.rejects.append, ch.republish, decided)
    return d, ch, clock


def wait_msg(message_id="m-1", after=60, timestamp=None):
    return SimpleNamespace(
        properties=props({HEADER_FALLBACK_AFTER: after}, message_id, timestamp),
        body=b'{"n":1}',
        method=SimpleNamespace(routing_key="invoice.sent"),
    )


def receipt_msg(message_id="m-1", kind="displayed"):
    body = json.dumps({"message_id": message_id, "receipt": kind}).encode()
    return SimpleNamespace(properties=props(None, None), body=body)


def test_displayed_in_time_acks_the_event_then_the_receipt():
    d, ch, clock = decider()
    d.on_message(1, wait_msg())
    d.on_message(2, receipt_msg(kind="delivered"))
    assert ch.acks == [2]  # delivered decides nothing
    clock.advance(59)
    d.on_message(3, receipt_msg())
    assert ch.acks == [2, 1, 3]
    clock.advance(100)
    assert ch.republished == [] and d.outcomes["displayed"] == 1


def test_nobody_displayed_it_republishes_once_then_acks():
    d, ch, clock = decider()
    ch.auto = False
    d.on_message(1, wait_msg())
    clock.advance(59.9)
    assert ch.republished == []
    clock.advance(0.1)
    assert len(ch.republished) == 1 and ch.acks == []  # not before the confirm
    d.on_message(2, receipt_msg())  # too late, but the decision is not done twice
    ch.answers[0].callback(None)
    assert 1 in ch.acks and len(ch.republished) == 1
    assert d.outcomes["undelivered"] == 1 and d.pending == {}


def test_a_lost_channel_leaves_the_event_to_the_next_decider():
    d, ch, clock = decider()
    ch.auto = False
    d.on_message(1, wait_msg())
    clock.advance(60)
    d.stop()
    ch.answers[0].errback(Exception("channel closed"))
    assert ch.acks == [] and d.outcomes["undelivered"] == 0
    d, ch, clock = decider()
    d.on_message(1, wait_msg())
    d.stop()
    clock.advance(100)
    assert ch.republished == [] and ch.acks == []


def test_a_redelivered_event_keeps_its_deadline_from_the_timestamp():
    clock = Clock()
    clock.advance(1_000_000)
    d, ch, _ = decider(clock)
    d.on_message(1, wait_msg(after=60, timestamp=1_000_000 - 50))
    clock.advance(9.9)
    assert ch.republished == []
    clock.advance(0.1)
    assert len(ch.republished) == 1 and ch.acks == [1]
    # a timestamp in the future does not delay the decision
    d.on_message(2, wait_msg("m-2", after=5, timestamp=2_000_000))
    clock.advance(5)
    assert ch.acks == [1, 2]


def test_an_unroutable_fallback_is_counted_and_acked():
    ch = Channel()
    clock = Clock()
    d = Decider(clock, ch.acks.append, ch.rejects.append, lambda msg: fail(UnroutableError([])))
    d.on_message(1, wait_msg())
    clock.advance(60)
    assert ch.acks == [1] and d.outcomes["unroutable"] == 1


def test_copies_and_bad_headers():
    decisions = Decisions()
    d, ch, clock = decider(decided=decisions.decided)
    decisions.replace(d)
    d.on_message(1, wait_msg())
    d.on_message(2, wait_msg())  # the same event again while it waits
    assert ch.acks == [2]
    clock.advance(60)
    d.on_message(3, wait_msg())  # and after it was decided
    assert ch.acks == [2, 1, 3] and len(ch.republished) == 1
    d.on_message(4, wait_msg(after="soon"))
    assert ch.rejects == [4]
    d.on_message(5, SimpleNamespace(properties=props(None, None), body=b"not json"))
    assert ch.acks[-1] == 5
    # a wait without message_id: the nodes refuse the event, so does the decider
    d.on_message(6, wait_msg(message_id=None))
    assert ch.rejects == [4, 6] and decisions.pending() == 0
    d.on_message(7, wait_msg("m-7"))
    assert decisions.pending() == 1
    decisions.replace(None)
    assert decisions.outcomes() == {
        "displayed": 0,
        "undelivered": 1,
        "unroutable": 0,
        "refused": 2,
    }


def test_displayed_while_republishing_changes_nothing():
    """The review's race: the deadline passed and the republish waits for
    its confirm when a "displayed" arrives: one decision, one ack each."""
    d, ch, clock = decider()
    ch.auto = False
    d.on_message(1, wait_msg())
    clock.advance(60)
    d.on_message(2, receipt_msg())
    assert ch.acks == [2]
    ch.answers[0].callback(None)
    assert ch.acks == [2, 1]
    assert d.outcomes["undelivered"] == 1 and d.outcomes["displayed"] == 0


def test_a_refused_republish_is_tried_again_and_the_event_held():
    d, ch, clock = decider()
    ch.auto = False
    d.on_message(1, wait_msg())
    clock.advance(60)
    ch.answers[0].errback(Exception("nack"))
    assert ch.acks == [] and len(d.pending) == 1
    clock.advance(2)
    assert len(ch.republished) == 2
    ch.answers[1].errback(Exception("nack"))
    clock.advance(3.9)
    assert len(ch.republished) == 2
    clock.advance(0.1)
    ch.answers[2].callback(None)
    assert ch.acks == [1] and d.pending == {}


def test_a_confirm_after_the_channel_went_is_not_republished_again():
    decisions = Decisions()
    d, ch, clock = decider(decided=decisions.decided)
    decisions.replace(d)
    ch.auto = False
    d.on_message(1, wait_msg())
    clock.advance(60)
    decisions.replace(None)  # the channel closed before the confirm
    ch.answers[0].callback(None)
    assert ch.acks == []
    again, ch2, _ = decider(clock, decisions.decided)
    again.on_message(1, wait_msg())  # RabbitMQ redelivers it
    assert ch2.acks == [1] and ch2.republished == []
