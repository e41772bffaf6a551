"""
Publishing events for notifyd from a Python backend: the documented way.

:class:`Publisher` puts one event on the events exchange so that it is
either delivered as notifyd promises or the caller learns that it was not::

    from notifyd.publisher import Publisher

    with Publisher("amqp://app:secret@rabbit:5672/%2F", logged=["invoice.#"]) as pub:
        pub.publish("acct.42.invoice.paid", {"invoice": "INV-1042"},
                    eligible_authrole=["admin"], eligible_extra={"account": ["42"]})

The contract (see docs/history.md, "Guarantees"):

* **Publisher confirms and persistent messages.**  ``publish`` returns only
  once RabbitMQ confirmed the message; it is persistent (``delivery_mode``
  2), so a confirmed event of a logged topic survives a RabbitMQ restart in
  notifyd's durable ingest queue.
* **``mandatory``.**  A message no queue takes comes back (``basic.return``).
  For a topic the event log keeps (``logged``: the same binding keys as
  notifyd's ``history`` setting) that means the ingest queue is not there
  yet, e.g. for a moment after a RabbitMQ restart: the message is published
  again with backoff.  For other topics it means that no node has a
  subscriber right now, which is normal: ``publish`` returns ``False``.
* **Retries.**  A negative confirm, a return on a logged topic or a lost
  connection is retried (reconnecting as needed) with exponential backoff
  for up to ``retry_for`` seconds; then :class:`PublishFailed` is raised and
  the caller knows the event may not have been delivered.  A retry after a
  lost connection may repeat an event RabbitMQ had already taken (at least
  once): give events a ``message_id`` (one is made up if you do not) so
  consumers can tell.

Targeting arguments become the string headers notifyd reads
(``wamp-eligible-authid: "alice,bob"``, never AMQP arrays, which RabbitMQ
streams drop): :func:`event_headers` builds them and refuses values the
comma-separated syntax cannot carry.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import pika
from pika.exceptions import AMQPError, NackError, UnroutableError

from notifyd.events import (
    ELIGIBLE_EXTRA,
    EXCLUDE_EXTRA,
    HEADER_ELIGIBLE,
    HEADER_ELIGIBLE_AUTHID,
    HEADER_ELIGIBLE_AUTHROLE,
    HEADER_EXCLUDE,
    HEADER_EXCLUDE_AUTHID,
    HEADER_EXCLUDE_AUTHROLE,
    HEADER_FALLBACK_AFTER,
    HEADER_PAYLOAD,
    HEADER_RECEIPT,
    HEADER_RETAIN,
    PAYLOAD_ENVELOPE,
    check_value,
)
from notifyd.events import fallback_after as parse_fallback_after
from notifyd.topics import PatternSet, validate_topic


class PublishFailed(Exception):
    """The event could not be published within the retry time."""


def _names(header: str, values: Iterable[Any]) -> str:
    out = []
    for v in values:
        if not isinstance(v, str) or not v or "," in v or v != v.strip():
            raise ValueError(
                f"{header}: {v!r} cannot be targeted (empty, a comma, or surrounding spaces)"
            )
        out.append(v)
    return ",".join(out)


def _ids(header: str, values: Iterable[Any]) -> str:
    out = []
    for v in values:
        if type(v) is not int or not 0 < v <= 2**53:
            raise ValueError(f"{header}: {v!r} is not a WAMP session id")
        out.append(str(v))
    return ",".join(out)


def event_headers(
    *,
    eligible: Iterable[int] | None = None,
    exclude: Iterable[int] | None = None,
    eligible_authid: Iterable[str] | None = None,
    exclude_authid: Iterable[str] | None = None,
    eligible_authrole: Iterable[str] | None = None,
    exclude_authrole: Iterable[str] | None = None,
    eligible_extra: Mapping[str, Iterable[str]] | None = None,
    exclude_extra: Mapping[str, Iterable[str]] | None = None,
    retain: bool = False,
    receipt: bool = False,
    fallback_after: float | None = None,
) -> dict[str, Any]:
    """The AMQP headers notifyd reads for this targeting (see the
    "Targeted delivery" section of docs/security.md).  ``eligible*`` lists
    admit only the sessions they name (an empty list: nobody); ``exclude*``
    lists remove sessions; ``*_extra`` maps an authextra name (a JWT extra
    claim such as ``account``) to values.  ``receipt``: delivery receipts;
    ``fallback_after``: seconds after which an event nobody displayed goes
    to the undelivered exchange (docs/presence.md)."""
    headers: dict[str, Any] = {}
    for header, values, fmt in (
        (HEADER_ELIGIBLE, eligible, _ids),
        (HEADER_EXCLUDE, exclude, _ids),
        (HEADER_ELIGIBLE_AUTHID, eligible_authid, _names),
        (HEADER_EXCLUDE_AUTHID, exclude_authid, _names),
        (HEADER_ELIGIBLE_AUTHROLE, eligible_authrole, _names),
        (HEADER_EXCLUDE_AUTHROLE, exclude_authrole, _names),
    ):
        if values is not None:
            if isinstance(values, (str, bytes)):
                raise TypeError(f"{header}: give a list, not a single string")
            headers[header] = fmt(header, values)
    for prefix, table in ((ELIGIBLE_EXTRA, eligible_extra), (EXCLUDE_EXTRA, exclude_extra)):
        for name, values in (table or {}).items():
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"authextra name {name!r} cannot be a header name")
            if isinstance(values, (str, bytes)):
                raise TypeError(f"{prefix}{name}: give a list, not a single string")
            headers[prefix + name.lower()] = _names(prefix + name, values)
    if retain:
        headers[HEADER_RETAIN] = True
    if receipt:
        headers[HEADER_RECEIPT] = True
    if fallback_after is not None:  # checked as notifyd checks it (BadEvent is a ValueError)
        headers[HEADER_FALLBACK_AFTER] = parse_fallback_after(HEADER_FALLBACK_AFTER, fallback_after)
    return headers


class Publisher:
    """A blocking publisher (pika) that keeps notifyd's publisher contract."""

    def __init__(
        self,
        amqp_url: str,
        exchange: str = "events",
        *,
        logged: Iterable[str] = (),
        retry_for: float = 30.0,
        app_id: str = "notifyd-publisher",
        declare: bool = True,
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange = exchange
        self.logged = PatternSet(list(logged))
        self.retry_for = retry_for
        self.app_id = app_id
        self.declare = declare
        self._conn: pika.BlockingConnection | None = None
        self._channel: Any = None
        #: messages published again (returned, nacked or cut off)
        self.retries = 0

    # -- connection ------------------------------------------------------------
    def connect(self) -> Any:
        """Open the connection now (publish opens it when needed)."""
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._conn = pika.BlockingConnection(pika.URLParameters(self.amqp_url))
        channel = self._conn.channel()
        if self.declare:
            channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
        channel.confirm_delivery()
        self._channel = channel
        return channel

    def close(self) -> None:
        """Close the connection (``publish`` opens a new one when needed)."""
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except AMQPError:
                pass

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- publishing --------------------------------------------------------------
    def publish(
        self,
        topic: str,
        value: Any = None,
        *,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        message_id: str | None = None,
        event_type: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **targeting: Any,
    ) -> bool:
        """Publish one event; True once RabbitMQ took it for at least one
        queue, False if no node subscribes to this (unlogged) topic now.
        ``value`` becomes ``EVENT.args[0]``; or give ``args``/``kwargs``.
        ``targeting``: the keyword arguments of :func:`event_headers`.
        Raises :class:`PublishFailed` after ``retry_for`` seconds."""
        validate_topic(topic)
        all_headers = dict(headers or {})
        all_headers.update(event_headers(**targeting))
        if args is not None or kwargs is not None:
            body_value: Any = {}
            if args:
                body_value["args"] = list(args)
            if kwargs:
                body_value["kwargs"] = dict(kwargs)
            all_headers[HEADER_PAYLOAD] = PAYLOAD_ENVELOPE
        else:
            body_value = value
        check_value(body_value)
        body = json.dumps(body_value, separators=(",", ":"), allow_nan=False).encode()
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=message_id or str(uuid.uuid4()),
            timestamp=int(time.time()),
            type=event_type,
            app_id=self.app_id,
            headers=all_headers or None,
        )
        return self._publish(topic, body, props)

    def publish_raw(self, topic: str, body: bytes, props: pika.BasicProperties) -> bool:
        """Publish prepared bytes and properties under the same contract."""
        return self._publish(topic, body, props)

    def _publish(self, topic: str, body: bytes, props: pika.BasicProperties) -> bool:
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        logged = self.logged.matches(topic)
        while True:
            why: str
            try:
                channel = self.connect()
                channel.basic_publish(self.exchange, topic, body, props, mandatory=True)
                return True
            except UnroutableError:
                if not logged:
                    return False  # nobody subscribes to it right now
                why = "no queue took it (the ingest queue is not up yet?)"
            except NackError:
                why = "RabbitMQ refused it (negative confirm)"
            except (AMQPError, OSError) as e:
                self.close()
                why = f"connection problem ({type(e).__name__})"
            if time.monotonic() + delay > deadline:
                raise PublishFailed(f"{topic}: {why}; gave up after {self.retry_for:g} s")
            self.retries += 1
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
