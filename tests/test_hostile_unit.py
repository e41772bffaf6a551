"""Hostile input on the event side, without RabbitMQ: what the checks refuse,
the canonical form the ingest step writes, fair log readers, undecodable
log entries skipped."""

from __future__ import annotations

import dataclasses
import json

import pika
import pytest
from autobahn.wamp import message

from notifyd.events import (
    MAX_DEPTH,
    BadEvent,
    PayloadError,
    canonical_headers,
    check_value,
    decode_delivery,
    encode_publication,
)
from notifyd.history import FairReaders
from notifyd.topics import InvalidTopic, validate_pattern, validate_topic
from tests.test_history_unit import seqs, session, setup, subscribe


def decode(body: bytes, key: object = "invoice.sent", **props: object):
    return decode_delivery(key, pika.BasicProperties(**props), body, 1 << 20)


@pytest.mark.parametrize(
    "topic",
    ["acct.42.\ud800", "acct.\x1b[31m", "acct.\u202eevil", "a.\u2066b", "a.b\u200b", "a.\x00"],
)
def test_topics_that_are_not_clean_text_are_refused(topic):
    with pytest.raises(InvalidTopic):
        validate_topic(topic)
    for match in ("exact", "prefix", "wildcard"):
        with pytest.raises(InvalidTopic):
            validate_pattern(topic, match)


def test_ordinary_unicode_topics_pass():
    assert validate_topic("acct.日本.café") == "acct.日本.café"


@pytest.mark.parametrize(
    "body",
    [
        b"1e999",
        b"[-1e999]",
        b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1),
        b"[" * 5000 + b"]" * 5000,
        b'"\\ud800"',
        b'{"\\udfff": 1}',
        b"18446744073709551616",
        b"9007199254740992",
        b"-9223372036854775809",
        b"[NaN]",
        # a 16-digit run (here in a string) takes the standard library's path
        b'{"id": "INV-1234567890123456", "n": 1e999}',
        b'{"id": "INV-1234567890123456", "s": "\\ud800"}',
        b'{"id": "INV-1234567890123456", "n": [NaN]}',
    ],
)
def test_bodies_a_client_could_not_read_are_bad_json(body):
    with pytest.raises(BadEvent) as e:
        decode(body)
    assert e.value.reason == "bad_json"


def test_bodies_at_the_limits_pass():
    assert decode(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH).args
    assert decode(b"[1e308, 9007199254740991, -9007199254740991]").args
    assert decode(b'"\\ud83d\\ude00"').args == ["\U0001f600"]
    assert decode(b"[900719925474099]").args == [[900719925474099]]  # orjson's path
    assert decode(b'{"id": "INV-1234567890123456"}').args == [{"id": "INV-1234567890123456"}]


def test_only_bad_event_ever_escapes_decoding():
    with pytest.raises(BadEvent) as e:
        decode(b"{}", key=b"invoice.\xff")
    assert e.value.reason == "bad_topic"
    with pytest.raises(BadEvent):
        decode(b"{}", headers={b"wamp-\xff": 1})
    with pytest.raises(BadEvent):
        decode(b"{}", message_id=b"\xff")
    with pytest.raises(BadEvent):
        decode(b"{}", headers={"wamp-eligible-authid": b"\xff"})
    for value in (["alice"], {"a": "alice"}, 1.5, None):
        with pytest.raises(BadEvent):
            decode(b"{}", headers={"wamp-eligible-authid": value})


def test_extra_claim_targeting_ignores_case_and_takes_integers():
    class S:
        session_id, authid, authrole = 1, "bob", "user"
        authextra = {"tenantId": "7"}

    event = decode(b"{}", headers={"wamp-exclude-extra-tenantId": 7})
    assert not event.receives(S())
    event = decode(b"{}", headers={"wamp-eligible-extra-TENANTID": "7"})
    assert event.receives(S())


@pytest.mark.parametrize(
    "args",
    [
        [float("nan")],
        [float("inf")],
        [2**70],
        [2**53],
        [b"bytes"],
        ["\ud800"],
        [{1: "int key"}],
    ],
)
def test_client_payloads_no_client_could_read_are_refused(args):
    with pytest.raises(PayloadError):
        encode_publication("a.b", args, None, publication=1, publisher=1, max_size=1 << 20)


def test_a_deep_client_payload_is_refused_without_recursion():
    deep: list = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(PayloadError):
        encode_publication("a.b", [deep], None, publication=1, publisher=1, max_size=1 << 20)
    with pytest.raises(ValueError):
        check_value({"k": deep})


def test_the_canonical_form_reads_back_as_the_same_event():
    headers = {
        "wamp-eligible-authid": "bob, alice",
        "wamp-exclude": "5,3",
        "WAMP-Eligible-Extra-Account": "7",
        "wamp-exclude-extra-tenant": "",
        "wamp-eligible-authrole": "",
        "wamp-publisher": 9,
        "wamp-exclude-me": False,
        "wamp-retain": "true",
        "wamp-disclose-me": 1,
        "wamp-publisher-authid": "svc",
    }
    for body, extra in (
        (b'{"x": 1}', {}),
        (b'{"args": [1], "kwargs": {"a": 2}}', {"wamp-payload": "envelope"}),
    ):
        event = decode(body, headers={**headers, **extra}, message_id="m", timestamp=5)
        canonical = canonical_headers(event)
        assert not [v for v in canonical.values() if isinstance(v, (list, dict))]
        again = decode(body, headers=canonical, message_id="m", timestamp=5)
        assert dataclasses.astuple(again) == dataclasses.astuple(event)


def test_log_readers_are_shared_round_robin_between_sessions():
    readers = FairReaders(1)
    assert readers.acquire("greedy").called
    order = []
    for i in range(30):
        readers.acquire("greedy").addCallback(lambda _, i=i: order.append(("greedy", i)))
    readers.acquire("other").addCallback(lambda _: order.append(("other", 0)))
    readers.release()
    readers.release()
    # the other session's one replay comes second, not thirty-first
    assert order == [("greedy", 0), ("other", 0)]
    for _ in range(29):
        readers.release()
    assert len(order) == 31 and readers.running == 1


def test_entries_that_cannot_be_decoded_or_were_not_checked_are_skipped():
    router, log, _ = setup()
    s, t = session(router)
    subscribe(s, "invoice.sent")
    log.append("invoice.sent", {"seq": 0})
    deep = json.loads("[" * 500 + "]" * 500)
    log.append("invoice.sent", deep)  # undecodable: too deep
    log.append("invoice.sent", {"seq": 1}, {"wamp-eligible-authid": "nobody"}, checked=False)
    log.append("invoice.sent", {"seq": 2})
    assert seqs(t) == [0, 2]
    assert router.history.skipped == {"bad_json": 1, "unchecked": 1}
    # a resume across them skips them too, and ends normally
    s2, t2 = session(router)
    subscribe(s2, "invoice.sent", _resume_after=0)
    assert seqs(t2) == [0, 2]
    assert isinstance(t2.sent[1], message.Subscribed)


def test_a_client_publish_to_the_reserved_wamp_namespace_is_an_invalid_uri():
    from notifyd.testing import FakePublisher

    router, _log, _ = setup()
    router.policy.authorizer.allow_publish = ("*",)
    router.publisher = FakePublisher()
    s, t = session(router)
    s.on_message(message.Publish(5, "wamp.session.on_join", args=[1], acknowledge=True))
    assert isinstance(t.sent[-1], message.Error)
    assert t.sent[-1].error == "wamp.error.invalid_uri"
    assert router.publisher.published == []
