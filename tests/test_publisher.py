"""notifyd.publisher: the documented way to publish (issue 12).  Headers are
checked without RabbitMQ; the contract (confirms, mandatory, retries) against
the real one with a real notifyd and Autobahn|JS."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import threads

from notifyd.events import decode_delivery
from notifyd.publisher import Publisher, PublishFailed, event_headers
from tests.test_history import history_args, stream  # noqa: F401


def test_targeting_arguments_become_the_string_headers_notifyd_reads():
    headers = event_headers(
        eligible_authid=["alice", "bob"],
        exclude=[7],
        eligible_extra={"Account": ["42"]},
        retain=True,
    )
    assert headers == {
        "wamp-eligible-authid": "alice,bob",
        "wamp-exclude": "7",
        "wamp-eligible-extra-account": "42",
        "wamp-retain": True,
    }
    import pika

    event = decode_delivery("a.b", pika.BasicProperties(headers=headers), b"{}", 1 << 20)
    assert event.eligible_authid == {"alice", "bob"} and event.eligible_extra == {"account": {"42"}}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eligible_authid": ["x,y"]},
        {"exclude_authid": ["bob2 "]},
        {"eligible_authrole": [""]},
        {"eligible": [0]},
        {"eligible_authid": "alice"},
        {"eligible_extra": {"bad name": ["1"]}},
        {"fallback_after": 0},
        {"fallback_after": 1201},
        {"fallback_after": True},
    ],
)
def test_targeting_the_list_syntax_cannot_carry_is_refused(kwargs):
    with pytest.raises((ValueError, TypeError)):
        event_headers(**kwargs)


def test_receipt_arguments_become_the_headers_notifyd_reads():
    import pika

    headers = event_headers(receipt=True, fallback_after=300)
    assert headers == {"notifyd-receipt": True, "notifyd-fallback-after": 300.0}
    props = pika.BasicProperties(headers=headers, message_id="m-1")
    assert decode_delivery("a.b", props, b"{}", 1 << 20).receipt


def test_payloads_no_client_could_read_are_refused_before_publishing():
    pub = Publisher("amqp://guest:guest@127.0.0.1:1/%2F", retry_for=0)
    with pytest.raises(ValueError):
        pub.publish("a.b", {"x": float("inf")})
    with pytest.raises(ValueError):
        pub.publish("a b", {})


def test_an_unreachable_rabbitmq_fails_after_the_retry_time():
    pub = Publisher("amqp://guest:guest@127.0.0.1:1/%2F", retry_for=0.3)
    with pytest.raises(PublishFailed):
        pub.publish("a.b", {})
    assert pub.retries >= 1


@pytest_twisted.inlineCallbacks
def test_the_contract_against_rabbitmq_and_notifyd(spawn, rabbit, exchange, stream):  # noqa: F811
    node = yield spawn.notifyd(*history_args(stream))
    client = yield spawn.js(node.url)
    yield client.subscribe("s", "invoice.", "prefix")

    def run() -> tuple:
        with Publisher(rabbit.url, exchange, logged=["invoice.#"]) as pub:
            nobody = pub.publish("client.created", {"n": 0})  # not logged, no subscriber
            logged = pub.publish(
                "invoice.sent", {"n": 1}, message_id="m-1", eligible_authid=[client.authid]
            )
            hidden = pub.publish("invoice.sent", {"n": 2}, eligible_authid=["someone-else"])
            pub.publish("invoice.sent", args=[3], kwargs={"k": 4})
        return nobody, logged, hidden

    nobody, logged, hidden = yield threads.deferToThread(run)
    assert (nobody, logged, hidden) == (False, True, True)
    yield client.wait_events("s", 2)
    events = client.events("s")
    assert events[0]["args"] == [{"n": 1}]
    assert events[1]["args"] == [3] and events[1]["kwargs"] == {"k": 4}
