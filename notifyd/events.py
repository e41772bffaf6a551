"""
The mapping between AMQP messages and WAMP events.  No I/O.

AMQP → WAMP (every message this node's queue receives):

* routing key → ``details.topic`` (on pattern subscriptions) and matching;
  it must be a valid topic (see :mod:`notifyd.topics`).
* body: JSON (``content_type`` ``application/json`` or absent; no
  ``content_encoding`` other than ``utf-8``/``identity``) at most
  ``max_size`` bytes.  The value becomes ``EVENT.args = [value]``.  With the
  header ``wamp-payload: envelope`` the body must be a JSON object
  ``{"args": [...], "kwargs": {...}}`` (both optional) and becomes
  ``EVENT.args``/``EVENT.kwargs`` as is; client PUBLISHes with anything but a
  single positional argument travel this way.
* properties → ``EVENT.details``: ``message_id`` → ``x_message_id``,
  ``timestamp`` → ``x_timestamp`` (seconds), ``type`` → ``x_type``,
  ``app_id`` → ``x_app_id``.
* headers (all optional):

  ====================  ======================================================
  ``wamp-publication``  integer publication id (set by the node a client
                        published through; otherwise drawn at random)
  ``wamp-publisher``    session id of the publishing WAMP session
  ``wamp-exclude-me``   bool, default true: do not deliver to the publisher
  ``wamp-disclose-me``  bool: put the publisher in ``details.publisher``
  ``wamp-eligible``     session ids that may receive it (a string of
                        comma-separated integers; arrays are refused)
  ``wamp-exclude``      session ids that must not receive it (same format)
  ``wamp-payload``      ``envelope`` (see above)
  ====================  ======================================================

  Targeting by identity (a string of comma-separated values; an AMQP array
  is refused, because RabbitMQ streams drop array headers)::

    wamp-eligible-authid    wamp-exclude-authid
    wamp-eligible-authrole  wamp-exclude-authrole
    wamp-eligible-extra-NAME  wamp-exclude-extra-NAME   (authextra[NAME])

  A session receives the event only if it passes *every* eligible list given
  and is in *no* exclude list.  ``wamp-publisher-authid`` and
  ``wamp-publisher-authrole`` go into ``details`` with ``wamp-disclose-me``.
  Any other header starting with ``wamp-`` is an error: a misspelt targeting
  header must never widen the audience.

* receipts (``docs/presence.md``): ``notifyd-receipt: true`` asks for
  delivery receipts, ``notifyd-fallback-after: <seconds>`` also for the
  undelivered fallback; both need a ``message_id`` and put
  ``x_receipt: true`` into ``details``.

Anything that does not fit is a :class:`BadEvent`: the consumer rejects the
message without requeue (so a dead-letter exchange catches it), logs it once
and counts it.  Nothing is ever delivered half-decoded or to a wider audience
than its headers allow.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from notifyd.topics import InvalidTopic, checked_topic

HEADER_PUBLICATION = "wamp-publication"
HEADER_PUBLISHER = "wamp-publisher"
HEADER_EXCLUDE_ME = "wamp-exclude-me"
HEADER_DISCLOSE_ME = "wamp-disclose-me"
HEADER_ELIGIBLE = "wamp-eligible"
HEADER_EXCLUDE = "wamp-exclude"
HEADER_PAYLOAD = "wamp-payload"
HEADER_PUBLISHER_AUTHID = "wamp-publisher-authid"
HEADER_PUBLISHER_AUTHROLE = "wamp-publisher-authrole"
HEADER_ELIGIBLE_AUTHID = "wamp-eligible-authid"
HEADER_EXCLUDE_AUTHID = "wamp-exclude-authid"
HEADER_ELIGIBLE_AUTHROLE = "wamp-eligible-authrole"
HEADER_EXCLUDE_AUTHROLE = "wamp-exclude-authrole"
HEADER_RETAIN = "wamp-retain"
#: ask for delivery receipts (docs/presence.md): a boolean
HEADER_RECEIPT = "notifyd-receipt"
#: seconds after which an event nobody displayed goes to the undelivered
#: exchange (implies a receipt)
HEADER_FALLBACK_AFTER = "notifyd-fallback-after"
#: the longest fallback delay: the deciding node holds the event unacked
#: until then, and RabbitMQ's consumer_timeout (30 min by default) must not
#: close its channel first
MAX_FALLBACK_AFTER = 1200.0
ELIGIBLE_EXTRA = "wamp-eligible-extra-"
EXCLUDE_EXTRA = "wamp-exclude-extra-"
PAYLOAD_ENVELOPE = "envelope"

#: deepest nesting of arrays and objects in an event's payload: EVENT wraps
#: it in two more levels, and Autobahn|JS's msgpack decoder refuses more than
#: 100 in all
MAX_DEPTH = 64
#: integers every client reads as a plain number: JavaScript's safe range
#: (msgpack and CBOR decoders hand larger ones over as BigInt, which a page
#: cannot JSON.stringify; JSON.parse rounds them)
MIN_INT = -(2**53 - 1)
MAX_INT = 2**53 - 1

_JSON_TYPES = {None, "", "application/json"}
_ENCODINGS = {None, "", "utf-8", "utf8", "identity"}
_MAX_ID = 2**53


#: random publication ids are drawn from [2**52, 2**53]: ids below are event
#: log positions (see notifyd.history), so the two never collide
RANDOM_ID_FLOOR = 2**52
# publication ids are not secrets: a fast generator, seeded from the OS
_random = random.Random(int.from_bytes(os.urandom(16), "big"))


def publication_id() -> int:
    """A random publication id for an event that is not in the event log."""
    return RANDOM_ID_FLOOR + _random.getrandbits(52)


class BadEvent(ValueError):
    """An AMQP message that cannot become a WAMP event.

    ``reason`` is a short slug for metrics and logs; ``str()`` is the detail.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class PayloadError(ValueError):
    """A client publication whose payload cannot be carried over AMQP."""


@dataclass(slots=True)
class InboundEvent:
    """One decoded AMQP delivery, ready to be matched and fanned out."""

    topic: str
    publication: int
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    publisher: int | None = None
    exclude_me: bool = True
    disclose_me: bool = False
    eligible: frozenset[int] | None = None
    exclude: frozenset[int] | None = None
    publisher_authid: str | None = None
    publisher_authrole: str | None = None
    eligible_authid: frozenset[str] | None = None
    exclude_authid: frozenset[str] | None = None
    eligible_authrole: frozenset[str] | None = None
    exclude_authrole: frozenset[str] | None = None
    eligible_extra: dict[str, frozenset[str]] | None = None
    exclude_extra: dict[str, frozenset[str]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: published with ``retain`` (kept as the topic's retained event)
    retain: bool = False
    #: delivered as a retained event (EVENT ``details.retained``)
    retained: bool = False
    #: the UTF-8 JSON body, when EVENT.args is exactly [body]: the JSON
    #: serializer splices it into the frame instead of encoding it again
    raw: bytes | None = None
    #: the backend asked for receipts (``notifyd-receipt`` or
    #: ``notifyd-fallback-after``); ``extra["x_message_id"]`` is then set
    receipt: bool = False
    #: its ``notifyd-fallback-after`` (seconds), if any
    fallback_after: float | None = None

    @property
    def filtered(self) -> bool:
        """True if some subscribers may have to be skipped."""
        return (
            self.eligible is not None
            or bool(self.exclude)
            or (self.exclude_me and self.publisher is not None)
            or self.eligible_authid is not None
            or self.eligible_authrole is not None
            or bool(self.exclude_authid)
            or bool(self.exclude_authrole)
            or bool(self.eligible_extra)
            or bool(self.exclude_extra)
        )

    def receives(self, session: Any) -> bool:
        """May ``session`` (with session_id, authid, authrole, authextra)
        receive this event?  Every eligible list must admit it; no exclude
        list may name it."""
        sid = session.session_id
        if self.eligible is not None and sid not in self.eligible:
            return False
        if self.exclude and sid in self.exclude:
            return False
        if self.exclude_me and sid == self.publisher:
            return False
        if self.eligible_authid is not None and session.authid not in self.eligible_authid:
            return False
        if self.exclude_authid and session.authid in self.exclude_authid:
            return False
        if self.eligible_authrole is not None and session.authrole not in self.eligible_authrole:
            return False
        if self.exclude_authrole and session.authrole in self.exclude_authrole:
            return False
        if self.eligible_extra or self.exclude_extra:
            # header names are lower case: claim names are matched without case
            extra = {k.lower(): v for k, v in (session.authextra or {}).items()}
            for name, allowed in (self.eligible_extra or {}).items():
                if extra.get(name) not in allowed:
                    return False
            for name, banned in (self.exclude_extra or {}).items():
                if name in extra and extra[name] in banned:
                    return False
        return True


_RESERVED = ("wamp-", "wamp_", "x-wamp-", "x_wamp_")


def _normalized(headers: dict[str, Any]) -> dict[str, Any]:
    """Header names in lower case; the reserved ``wamp`` spellings with
    underscores or an ``x-`` prefix are errors, so that no misspelling of a
    targeting header is silently ignored."""
    out: dict[str, Any] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith(_RESERVED) and not lower.startswith("wamp-"):
            raise BadEvent("bad_header", f"unknown header {name} (use wamp-* names)")
        if lower in out:
            raise BadEvent("bad_header", f"header {name} is given twice")
        out[lower] = value
    return out


def _is_int(value: Any) -> bool:
    # pika decodes 64-bit header values as ``pika.compat.long``, an int subclass
    return isinstance(value, int) and not isinstance(value, bool)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):  # 1e999 overflows to infinity
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _bounded(text: str) -> int:
    value = int(text)
    if not MIN_INT <= value <= MAX_INT:
        raise ValueError("integer is outside JavaScript's safe range (±2^53-1)")
    return value


_INF = float("inf")
_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite, parse_int=_bounded)
#: one pass over a body finds what needs a closer look: digits map to "0"
#: (sixteen in a row may be an integer beyond ±2^53-1, which orjson would turn
#: into a float above 2^64 instead of refusing it) and "[" and "{" to "["
#: (more than MAX_DEPTH may nest too deep); everything else to a space
_MARKS = bytes(48 if 48 <= b <= 57 else 91 if b in (91, 123) else 32 for b in range(256))
_SIXTEEN_DIGITS = b"0" * 16


def check_value(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise ValueError unless ``value`` is a payload every client can read:
    JSON types only, string keys, finite floats, integers within
    JavaScript's safe range, text
    without lone surrogates, nested at most ``max_depth`` deep."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            _check_text(item)
        elif kind is bool or item is None:
            pass
        elif kind is int or isinstance(item, int):
            if not MIN_INT <= item <= MAX_INT:
                raise ValueError("integer is outside JavaScript's safe range (±2^53-1)")
        elif kind is float:
            if item != item or item in (_INF, -_INF):
                raise ValueError("numbers must be finite")
        elif kind is list or kind is tuple:
            if depth >= max_depth:
                raise ValueError(f"payload is nested deeper than {max_depth} levels")
            stack.extend((v, depth + 1) for v in item)
        elif kind is dict:
            if depth >= max_depth:
                raise ValueError(f"payload is nested deeper than {max_depth} levels")
            for k, v in item.items():
                if type(k) is not str:
                    raise ValueError("object keys must be strings")
                _check_text(k)
                stack.append((v, depth + 1))
        else:
            raise ValueError(f"{kind.__name__} values cannot be carried as JSON")


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text holds a lone UTF-16 surrogate (not valid Unicode)")


def parse_body(body: bytes) -> Any:
    """The JSON value of an AMQP body, checked with :func:`check_value`'s
    rules; ValueError otherwise.  The full walk runs only when a cheap scan
    cannot rule a problem out.

    orjson parses (strict UTF-8, no lone surrogates, no NaN or Infinity, no
    number that overflows a double: the rules every client needs) unless the
    body holds a 16-digit run; then the standard library's decoder, whose
    hooks refuse integers outside ±2^53-1, decides, and the walk checks the
    rest."""
    marks = body.translate(_MARKS)
    if _SIXTEEN_DIGITS not in marks:
        value = orjson.loads(body)
        if marks.count(b"[") > MAX_DEPTH:
            check_value(value)
        return value
    value = _DECODER.decode(body.decode("utf-8"))
    check_value(value)
    return value


def _not_a_string(name: str) -> BadEvent:
    # Arrays are refused on every path: RabbitMQ streams (3.9-3.12) drop
    # array-valued headers, so on a logged topic an array would silently
    # vanish and widen the audience.  One form everywhere fails closed.
    return BadEvent(
        "bad_header",
        f'header {name} must be a comma-separated string such as "a,b" (not an array)',
    )


def _text(name: str, value: Any) -> Any:
    """A header value as text if it is text (AMQP bytes must be UTF-8)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            raise BadEvent("bad_header", f"header {name} is not valid UTF-8")
    if isinstance(value, str):
        try:
            _check_text(value)
        except ValueError as e:
            raise BadEvent("bad_header", f"header {name}: {e}")
    return value


def _session_ids(name: str, value: Any) -> frozenset[int]:
    value = _text(name, value)
    if not isinstance(value, str):
        raise _not_a_string(name)
    items: list[Any] = [v.strip() for v in value.split(",") if v.strip()]
    try:
        items = [int(v) for v in items]
    except ValueError:
        raise BadEvent("bad_header", f"header {name} is not a list of session ids")
    for v in items:
        if not _is_int(v) or not 0 < v <= _MAX_ID:
            raise BadEvent("bad_header", f"header {name} holds an invalid session id")
    return frozenset(items)


def _strings(name: str, value: Any) -> frozenset[str]:
    value = _text(name, value)
    if not isinstance(value, str):
        raise _not_a_string(name)
    return frozenset(v.strip() for v in value.split(",") if v.strip())


def _string(name: str, value: Any) -> str:
    value = _text(name, value)
    if not isinstance(value, str) or not value:
        raise BadEvent("bad_header", f"header {name} must be a non-empty string")
    return value


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    value = _text(name, value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if _is_int(value) and value in (0, 1):
        return bool(value)
    raise BadEvent("bad_header", f"header {name} must be a boolean")


def fallback_after(name: str, value: Any) -> float:
    """The seconds of a ``notifyd-fallback-after`` header (a number, or a
    decimal string), in (0, :data:`MAX_FALLBACK_AFTER`]."""
    value = _text(name, value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise BadEvent("bad_header", f"header {name} must be a number of seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadEvent("bad_header", f"header {name} must be a number of seconds")
    if not 0 < value <= MAX_FALLBACK_AFTER:  # also refuses NaN
        raise BadEvent(
            "bad_header", f"header {name} must be in (0, {MAX_FALLBACK_AFTER:g}] seconds"
        )
    return float(value)


def _id(name: str, value: Any) -> int:
    if isinstance(value, (bytes, bytearray, str)):
        try:
            value = int(value)
        except ValueError:
            raise BadEvent("bad_header", f"header {name} must be an integer id")
    if not _is_int(value) or not 0 < value <= _MAX_ID:
        raise BadEvent("bad_header", f"header {name} must be an integer id")
    return int(value)


#: header → (InboundEvent field, parser)
_HEADER_FIELDS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    HEADER_PUBLICATION: ("publication", _id),
    HEADER_PUBLISHER: ("publisher", _id),
    HEADER_EXCLUDE_ME: ("exclude_me", _flag),
    HEADER_DISCLOSE_ME: ("disclose_me", _flag),
    HEADER_ELIGIBLE: ("eligible", _session_ids),
    HEADER_EXCLUDE: ("exclude", _session_ids),
    HEADER_ELIGIBLE_AUTHID: ("eligible_authid", _strings),
    HEADER_EXCLUDE_AUTHID: ("exclude_authid", _strings),
    HEADER_ELIGIBLE_AUTHROLE: ("eligible_authrole", _strings),
    HEADER_EXCLUDE_AUTHROLE: ("exclude_authrole", _strings),
    HEADER_PUBLISHER_AUTHID: ("publisher_authid", _string),
    HEADER_PUBLISHER_AUTHROLE: ("publisher_authrole", _string),
    HEADER_RETAIN: ("retain", _flag),
}


def decode_delivery(routing_key: Any, properties: Any, body: bytes, max_size: int) -> InboundEvent:
    """Turn one AMQP delivery into an :class:`InboundEvent` or raise
    :class:`BadEvent`; nothing else escapes, whatever the message holds."""
    try:
        return _decode_delivery(routing_key, properties, body, max_size)
    except BadEvent:
        raise
    except Exception as e:  # a value of a type no check foresaw
        raise BadEvent("bad_message", f"message cannot be decoded ({type(e).__name__})")


def _decode_delivery(routing_key: Any, properties: Any, body: bytes, max_size: int) -> InboundEvent:
    if not isinstance(routing_key, str):  # pika leaves invalid UTF-8 as bytes
        raise BadEvent("bad_topic", "routing key is not valid UTF-8")
    try:
        topic = checked_topic(routing_key)
    except InvalidTopic as e:
        raise BadEvent("bad_topic", str(e))
    if len(body) > max_size:
        raise BadEvent("too_large", f"body of {len(body)} bytes exceeds {max_size}")
    content_type = getattr(properties, "content_type", None)
    if content_type is not None:
        content_type = content_type.split(";", 1)[0].strip().lower()
    if content_type not in _JSON_TYPES:
        raise BadEvent("content_type", f"unsupported content type {content_type!r}")
    encoding = getattr(properties, "content_encoding", None)
    if (encoding or "").lower() not in _ENCODINGS:
        raise BadEvent("content_type", f"unsupported content encoding {encoding!r}")
    try:
        value = parse_body(body)
    except (ValueError, RecursionError) as e:
        raise BadEvent("bad_json", f"body is not JSON every client can read ({e})")

    headers = _normalized(getattr(properties, "headers", None) or {})
    event = InboundEvent(topic=topic, publication=0)
    mode = headers.get(HEADER_PAYLOAD)
    if isinstance(mode, bytes):
        mode = mode.decode("utf-8", "replace")
    if mode is None:
        event.args = [value]
        event.raw = body
    elif mode == PAYLOAD_ENVELOPE:
        if not isinstance(value, dict) or set(value) - {"args", "kwargs"}:
            raise BadEvent("bad_envelope", "envelope must be an object with args/kwargs")
        args, kwargs = value.get("args"), value.get("kwargs")
        if args is not None and not isinstance(args, list):
            raise BadEvent("bad_envelope", "envelope args must be an array")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise BadEvent("bad_envelope", "envelope kwargs must be an object")
        event.args = args or None
        event.kwargs = kwargs or None
        if event.kwargs and event.args is None:
            event.args = []
    else:
        raise BadEvent("bad_header", f"header {HEADER_PAYLOAD} has unknown value {mode!r}")

    for name, value in headers.items():
        if not name.startswith("wamp-") or name == HEADER_PAYLOAD:
            if name == HEADER_RECEIPT:
                event.receipt = event.receipt or _flag(name, value)
            elif name == HEADER_FALLBACK_AFTER:
                event.fallback_after = fallback_after(name, value)
                event.receipt = True
            continue
        field = _HEADER_FIELDS.get(name)
        if field is not None:
            attr, parse = field
            setattr(event, attr, parse(name, value))
            continue
        for prefix, attr in ((ELIGIBLE_EXTRA, "eligible_extra"), (EXCLUDE_EXTRA, "exclude_extra")):
            if name.startswith(prefix) and len(name) > len(prefix):
                table = getattr(event, attr)
                if table is None:
                    table = {}
                    setattr(event, attr, table)
                if _is_int(value):  # e.g. wamp-eligible-extra-tenantid: 7
                    value = str(value)
                table[name[len(prefix) :]] = _strings(name, value)
                break
        else:
            raise BadEvent("bad_header", f"unknown header {name} (wamp-* headers are reserved)")

    extra = event.extra
    for prop, detail in _TEXT_PROPERTIES:
        value = getattr(properties, prop, None)
        if value:
            if not isinstance(value, str):  # pika leaves invalid UTF-8 as bytes
                raise BadEvent("bad_property", f"property {prop} is not valid UTF-8")
            try:
                _check_text(value)
            except ValueError as e:
                raise BadEvent("bad_property", f"property {prop}: {e}")
            extra[detail] = value
    timestamp = getattr(properties, "timestamp", None)
    if timestamp is not None:
        if not _is_int(timestamp) or not 0 <= timestamp < 2**63:
            raise BadEvent("bad_property", "property timestamp is not a time")
        extra["x_timestamp"] = int(timestamp)
    if event.receipt:
        if "x_message_id" not in extra:
            raise BadEvent(
                "bad_header", "an event that asks for a receipt needs a message_id property"
            )
        extra["x_receipt"] = True  # notifyd.js reports when it displays it
    return event


#: AMQP text properties carried into EVENT.details
_TEXT_PROPERTIES = (("message_id", "x_message_id"), ("type", "x_type"), ("app_id", "x_app_id"))


def canonical_headers(event: InboundEvent) -> dict[str, Any]:
    """The headers that :func:`decode_delivery` reads back as ``event``,
    with every list as a comma-separated string (what RabbitMQ streams keep):
    the form the ingest step writes into the event log."""
    headers: dict[str, Any] = {}
    if event.publication:
        headers[HEADER_PUBLICATION] = event.publication
    if event.publisher is not None:
        headers[HEADER_PUBLISHER] = event.publisher
    headers[HEADER_EXCLUDE_ME] = event.exclude_me
    if event.disclose_me:
        headers[HEADER_DISCLOSE_ME] = True
    if event.raw is None:
        headers[HEADER_PAYLOAD] = PAYLOAD_ENVELOPE
    if event.retain:
        headers[HEADER_RETAIN] = True
    if event.receipt:
        headers[HEADER_RECEIPT] = True
    if event.fallback_after is not None:
        headers[HEADER_FALLBACK_AFTER] = event.fallback_after
    for name, ids in ((HEADER_ELIGIBLE, event.eligible), (HEADER_EXCLUDE, event.exclude)):
        if ids is not None:
            headers[name] = ",".join(str(i) for i in sorted(ids))
    for name, text in (
        (HEADER_PUBLISHER_AUTHID, event.publisher_authid),
        (HEADER_PUBLISHER_AUTHROLE, event.publisher_authrole),
    ):
        if text is not None:
            headers[name] = text
    lists = [
        (HEADER_ELIGIBLE_AUTHID, event.eligible_authid),
        (HEADER_EXCLUDE_AUTHID, event.exclude_authid),
        (HEADER_ELIGIBLE_AUTHROLE, event.eligible_authrole),
        (HEADER_EXCLUDE_AUTHROLE, event.exclude_authrole),
    ]
    for prefix, table in (
        (ELIGIBLE_EXTRA, event.eligible_extra),
        (EXCLUDE_EXTRA, event.exclude_extra),
    ):
        lists.extend((prefix + name, values) for name, values in (table or {}).items())
    for name, values in lists:
        if values is not None:
            headers[name] = ",".join(sorted(values))
    return headers


@dataclass(slots=True)
class Publication:
    """A client PUBLISH, encoded for AMQP."""

    topic: str
    body: bytes
    headers: dict[str, Any]


def _joined(name: str, values: list[str]) -> str:
    # lists travel as comma-separated strings: RabbitMQ streams (3.9-3.12)
    # drop array-valued headers, which would widen an event's audience
    for v in values:
        if not isinstance(v, str) or not v or "," in v:
            raise PayloadError(f"{name} values must be non-empty strings without commas")
    return ",".join(values)


def encode_publication(
    topic: str,
    args: list[Any] | None,
    kwargs: dict[str, Any] | None,
    *,
    publication: int,
    publisher: int,
    exclude_me: bool = True,
    disclose_me: bool = False,
    eligible: list[int] | None = None,
    exclude: list[int] | None = None,
    publisher_authid: str | None = None,
    publisher_authrole: str | None = None,
    eligible_authid: list[str] | None = None,
    exclude_authid: list[str] | None = None,
    eligible_authrole: list[str] | None = None,
    exclude_authrole: list[str] | None = None,
    retain: bool = False,
    max_size: int,
) -> Publication:
    """Encode a client PUBLISH the way :func:`decode_delivery` reads it back."""
    headers: dict[str, Any] = {
        HEADER_PUBLICATION: publication,
        HEADER_PUBLISHER: publisher,
        HEADER_EXCLUDE_ME: exclude_me,
    }
    if disclose_me:
        headers[HEADER_DISCLOSE_ME] = True
        if publisher_authid:
            headers[HEADER_PUBLISHER_AUTHID] = publisher_authid
        if publisher_authrole:
            headers[HEADER_PUBLISHER_AUTHROLE] = publisher_authrole
    for name, values in (
        (HEADER_ELIGIBLE_AUTHID, eligible_authid),
        (HEADER_EXCLUDE_AUTHID, exclude_authid),
        (HEADER_ELIGIBLE_AUTHROLE, eligible_authrole),
        (HEADER_EXCLUDE_AUTHROLE, exclude_authrole),
    ):
        if values is not None:
            headers[name] = _joined(name, values)
    if retain:
        headers[HEADER_RETAIN] = True
    if eligible is not None:
        headers[HEADER_ELIGIBLE] = ",".join(str(int(v)) for v in eligible)
    if exclude:
        headers[HEADER_EXCLUDE] = ",".join(str(int(v)) for v in exclude)
    if args is not None and len(args) == 1 and not kwargs:
        value: Any = args[0]
    else:
        value = {}
        if args:
            value["args"] = list(args)
        if kwargs:
            value["kwargs"] = kwargs
        headers[HEADER_PAYLOAD] = PAYLOAD_ENVELOPE
    try:
        check_value(value)
        body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError, RecursionError) as e:
        raise PayloadError(f"payload cannot be carried to every client: {e}")
    if len(body) > max_size:
        raise PayloadError(f"payload of {len(body)} bytes exceeds {max_size}")
    return Publication(topic=topic, body=body, headers=headers)
