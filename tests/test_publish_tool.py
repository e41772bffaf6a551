"""The notifyd-publish tool: its demo stream and its argument checks."""

from __future__ import annotations

import itertools

import pytest

from notifyd.publish import demo_events, main


def test_demo_stream_is_a_realistic_mix():
    events = list(itertools.islice(demo_events(seed=1), 200))
    topics = {t for t, _ in events}
    assert topics == {"client.created", "invoice.sent", "invoice.paid", "invoice.overdue"}
    sent = {b["invoice"] for t, b in events if t == "invoice.sent"}
    settled = [b["invoice"] for t, b in events if t in ("invoice.paid", "invoice.overdue")]
    assert set(settled) <= sent and len(settled) == len(set(settled))
    assert [b["seq"] for _, b in events] == list(range(1, 201))
    for t, b in events:
        if t.startswith("invoice."):
            assert b["amount"] > 0 and b["currency"] in ("EUR", "USD", "GBP") and b["client"]


def test_usage_errors(capsys):
    with pytest.raises(SystemExit):
        main([])
    with pytest.raises(SystemExit):
        main(["--demo", "--rate", "0"])
    assert main(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/%2F", "a.b", "{}"]) == 1
    assert "cannot connect" in capsys.readouterr().err


def test_publishes_to_rabbitmq(rabbit, exchange, publisher):
    ch = publisher.channel
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, exchange, "invoice.#")
    assert (
        main(
            [
                "--amqp-url",
                rabbit.url,
                "--exchange",
                exchange,
                "--header",
                "wamp-eligible=5",
                "invoice.sent",
                '{"invoice": "INV-1"}',
            ]
        )
        == 0
    )
    assert main(["--amqp-url", rabbit.url, "--exchange", exchange, "invoice.sent", "{nope"]) == 2
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b'{"invoice": "INV-1"}' and props.headers == {"wamp-eligible": "5"}
    assert props.content_type == "application/json" and props.message_id
    assert ch.basic_get(q, auto_ack=True)[0] is None
