"""AMQP message ⇄ event mapping (pure)."""

from __future__ import annotations

import pika
import pytest

from notifyd.events import (
    BadEvent,
    PayloadError,
    decode_delivery,
    encode_publication,
    publication_id,
)


def props(**kw):
    return pika.BasicProperties(**kw)


def test_json_body_becomes_single_argument_with_details():
    e = decode_delivery(
        "invoice.sent",
        props(
            content_type="application/json",
            message_id="m1",
            timestamp=17,
            type="t",
            app_id="billing",
        ),
        b'{"invoice": "INV-1"}',
        1000,
    )
    assert e.args == [{"invoice": "INV-1"}] and e.kwargs is None
    assert e.extra == {
        "x_message_id": "m1",
        "x_timestamp": 17,
        "x_type": "t",
        "x_app_id": "billing",
    }
    assert e.publication == 0  # no wamp-publication header: the router draws one


def test_random_publication_ids_stay_clear_of_log_positions():
    ids = {publication_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(2**52 <= i <= 2**53 for i in ids)


def test_absent_content_type_parses():
    assert decode_delivery("a", props(), b"[1,2]", 100).args == [[1, 2]]


@pytest.mark.parametrize(
    "key, p, body, reason",
    [
        ("a", props(), b"{nope", "bad_json"),
        ("a", props(), b"NaN", "bad_json"),
        ("a", props(), b"\xff\xfe", "bad_json"),
        ("a", props(), b"[" + b"1," * 100 + b"1]", "too_large"),
        ("a", props(content_type="text/plain"), b"1", "content_type"),
        ("a", props(content_encoding="gzip"), b"1", "content_type"),
        ("a b", props(), b"1", "bad_topic"),
        ("a", props(headers={"wamp-eligible": "1,x"}), b"1", "bad_header"),
        ("a", props(headers={"wamp-eligible": [True]}), b"1", "bad_header"),
        # arrays are refused: streams would drop them and widen the audience
        ("a", props(headers={"wamp-eligible": [1, 2]}), b"1", "bad_header"),
        ("a", props(headers={"wamp-eligible-authid": ["alice"]}), b"1", "bad_header"),
        ("a", props(headers={"wamp-exclude-extra-account": ["42"]}), b"1", "bad_header"),
        ("a", props(headers={"wamp-exclude-me": "maybe"}), b"1", "bad_header"),
        ("a", props(headers={"wamp-publication": 0}), b"1", "bad_header"),
        ("a", props(headers={"wamp-payload": "other"}), b"1", "bad_header"),
        ("a", props(headers={"wamp-payload": "envelope"}), b"[1]", "bad_envelope"),
        ("a", props(headers={"wamp-payload": "envelope"}), b'{"args": 1}', "bad_envelope"),
    ],
)
def test_bad_messages(key, p, body, reason):
    with pytest.raises(BadEvent) as e:
        decode_delivery(key, p, body, 100)
    assert e.value.reason == reason


def test_targeting_headers():
    e = decode_delivery(
        "a",
        props(
            headers={
                "wamp-eligible": "1, 2",
                "wamp-exclude": "3",
                "wamp-publisher": 9,
                "wamp-disclose-me": "true",
                "wamp-exclude-me": False,
            }
        ),
        b"1",
        100,
    )
    assert e.eligible == {1, 2} and e.exclude == {3}
    assert e.publisher == 9 and e.disclose_me and not e.exclude_me


@pytest.mark.parametrize(
    "args, kwargs, want_args, want_kwargs",
    [
        ([{"a": 1}], None, [{"a": 1}], None),
        ([1, 2], None, [1, 2], None),
        ([], {"k": "v"}, [], {"k": "v"}),
        (None, None, None, None),
        ([None], None, [None], None),
    ],
)
def test_publication_round_trip(args, kwargs, want_args, want_kwargs):
    pub = encode_publication(
        "t.x",
        args,
        kwargs,
        publication=5,
        publisher=7,
        eligible=[1],
        exclude=[2],
        disclose_me=True,
        max_size=1000,
    )
    e = decode_delivery(
        "t.x", props(headers=pub.headers, content_type="application/json"), pub.body, 1000
    )
    assert (e.args, e.kwargs) == (want_args, want_kwargs)
    assert (e.publication, e.publisher, e.eligible, e.exclude, e.disclose_me) == (
        5,
        7,
        {1},
        {2},
        True,
    )


def test_unencodable_publication():
    with pytest.raises(PayloadError):
        encode_publication("t", [b"bytes"], None, publication=1, publisher=1, max_size=100)
    with pytest.raises(PayloadError):
        encode_publication("t", ["x" * 200], None, publication=1, publisher=1, max_size=100)


def test_header_names_are_case_insensitive_and_misspellings_rejected():
    e = decode_delivery("a", props(headers={"Wamp-Eligible-Authid": "alice"}), b"1", 100)
    assert e.eligible_authid == {"alice"}
    for name in ("wamp_exclude", "x-wamp-eligible", "X_WAMP_ELIGIBLE", "wamp-eligable"):
        with pytest.raises(BadEvent):
            decode_delivery("a", props(headers={name: "1"}), b"1", 100)
    with pytest.raises(BadEvent, match="given twice"):
        decode_delivery("a", props(headers={"wamp-exclude": "1", "WAMP-EXCLUDE": "2"}), b"1", 100)


def test_body_must_be_utf8():
    with pytest.raises(BadEvent):
        decode_delivery("a", props(), '"x"'.encode("utf-16"), 100)
