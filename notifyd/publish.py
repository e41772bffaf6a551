"""
``notifyd-publish``: put events on the events exchange, for people and tests.

Examples::

    notifyd-publish invoice.sent '{"invoice": "INV-1042", "client": "Acme Ltd"}'
    notifyd-publish --header wamp-eligible=123,456 user.note '"hi"'
    notifyd-publish --demo --count 20 --rate 2      # a stream of invoicing events

The AMQP URL and exchange come from ``--amqp-url``/``--exchange`` or the same
``NOTIFYD_AMQP_URL``/``NOTIFYD_EXCHANGE`` variables notifyd reads.  Events are
published with :class:`notifyd.publisher.Publisher`: persistent, with
confirms and ``mandatory``, retried for ``--retry-for`` seconds; ``--logged``
(or ``NOTIFYD_HISTORY``, like notifyd's ``history`` setting) names the topics
the event log keeps, whose returned messages are retried rather than dropped.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika

from notifyd.publisher import Publisher, PublishFailed

CLIENTS = [
    "Acme Ltd",
    "Globex GmbH",
    "Initech SARL",
    "Umbrella BV",
    "Stark Industries",
    "Wayne Enterprises",
    "Soylent AB",
]


def demo_events(seed: int | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """An endless, realistic stream of invoicing events."""
    rnd = random.Random(seed)
    numbers = itertools.count(1042)
    open_invoices: list[dict[str, Any]] = []
    seq = itertools.count(1)
    while True:
        roll = rnd.random()
        if roll < 0.15:
            client = rnd.choice(CLIENTS)
            yield (
                "client.created",
                {"seq": next(seq), "client": client, "client_id": f"C-{rnd.randint(100, 999)}"},
            )
            continue
        if roll < 0.55 or len(open_invoices) < 2:
            inv = {
                "invoice": f"INV-{next(numbers)}",
                "client": rnd.choice(CLIENTS),
                "amount": round(rnd.uniform(80, 4800), 2),
                "currency": rnd.choice(["EUR", "EUR", "USD", "GBP"]),
            }
            open_invoices.append(inv)
            yield "invoice.sent", {"seq": next(seq), **inv}
        else:
            inv = open_invoices.pop(0)
            topic = "invoice.paid" if rnd.random() < 0.85 else "invoice.overdue"
            yield topic, {"seq": next(seq), **inv}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="notifyd-publish", description=__doc__.split("\n\n")[0])
    p.add_argument("topic", nargs="?", help="routing key / WAMP topic, e.g. invoice.sent")
    p.add_argument("json", nargs="?", help="event body as JSON")
    p.add_argument(
        "--amqp-url",
        default=os.environ.get("NOTIFYD_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    )
    p.add_argument("--exchange", default=os.environ.get("NOTIFYD_EXCHANGE", "events"))
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="AMQP header (repeatable), e.g. wamp-exclude=123",
    )
    p.add_argument("--demo", action="store_true", help="publish a stream of invoicing events")
    p.add_argument("--count", type=int, default=0, help="with --demo: how many (0 = forever)")
    p.add_argument("--rate", type=float, default=1.0, help="with --demo: events per second")
    p.add_argument("--seed", type=int, default=None, help="with --demo: random seed")
    p.add_argument(
        "--logged",
        action="append",
        default=None,
        metavar="KEY",
        help="binding key of the topics notifyd's event log keeps (repeatable; default: "
        "$NOTIFYD_HISTORY): a returned message on these is published again",
    )
    p.add_argument(
        "--retry-for",
        type=float,
        default=30.0,
        help="seconds to keep retrying an event RabbitMQ did not take (default 30)",
    )
    args = p.parse_args(argv)
    if not args.demo and (args.topic is None or args.json is None):
        p.error("give TOPIC and JSON, or --demo")
    if args.rate <= 0:
        p.error("--rate must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    headers: dict[str, Any] = {}
    for h in args.header:
        name, sep, value = h.partition("=")
        if not sep:
            print(f"notifyd-publish: --header {h!r} is not NAME=VALUE", file=sys.stderr)
            return 2
        headers[name] = value
    logged = args.logged
    if logged is None:
        logged = [k for k in os.environ.get("NOTIFYD_HISTORY", "").replace(",", " ").split() if k]
    publisher = Publisher(
        args.amqp_url,
        args.exchange,
        logged=logged,
        retry_for=args.retry_for,
        app_id="notifyd-publish",
    )
    try:
        publisher.connect()
    except Exception as e:
        print(f"notifyd-publish: cannot connect to {args.amqp_url}: {e}", file=sys.stderr)
        return 1

    def send(topic: str, body: bytes) -> None:
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=str(uuid.uuid4()),
            timestamp=int(time.time()),
            app_id="notifyd-publish",
            headers=headers or None,
        )
        publisher.publish_raw(topic, body, props)

    try:
        if not args.demo:
            try:
                json.loads(args.json)
            except ValueError as e:
                print(f"notifyd-publish: the body is not valid JSON ({e})", file=sys.stderr)
                return 2
            send(args.topic, args.json.encode())
            return 0
        interval = 1.0 / args.rate
        for n, (topic, body) in enumerate(demo_events(args.seed), 1):
            send(topic, json.dumps(body).encode())
            print(f"{topic} {json.dumps(body)}", flush=True)
            if args.count and n >= args.count:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except PublishFailed as e:
        print(f"notifyd-publish: {e}", file=sys.stderr)
        return 1
    finally:
        publisher.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
