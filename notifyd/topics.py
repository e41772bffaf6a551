"""
Topic URIs, match policies and their AMQP binding keys.  No I/O.

A WAMP topic is an AMQP routing key on the events exchange.  The rules:

* A topic is 1–255 bytes of UTF-8, made of non-empty components separated by
  ``.``; a component holds no whitespace and none of ``.``, ``#`` or ``*``
  (``#`` and ``*`` are AMQP binding wildcards), no control or invisible
  formatting character (C0/C1 controls, bidi controls, zero-width
  characters) and no lone UTF-16 surrogate (a JSON ``"\ud800"``), so every
  topic is valid UTF-8 that RabbitMQ, the logs and every client can carry.
* ``exact`` subscription ``invoice.sent`` ⇒ binding key ``invoice.sent``.
* ``wildcard`` subscription ``invoice..sent`` (empty components match any
  one component) ⇒ binding key ``invoice.*.sent``.
* ``prefix`` subscription: WAMP's rule is a plain *string* prefix, while AMQP
  ``#`` matches whole words.  notifyd binds the longest whole-word prefix
  followed by ``.#`` (``invoice.`` and ``invoice.se`` ⇒ ``invoice.#``; ``inv``
  ⇒ ``#``) and applies the exact string-prefix test on every delivery, so
  ``inv`` receives ``invoice.sent`` and ``inventory.low`` and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

MATCH_EXACT = "exact"
MATCH_PREFIX = "prefix"
MATCH_WILDCARD = "wildcard"
MATCH_POLICIES = (MATCH_EXACT, MATCH_PREFIX, MATCH_WILDCARD)

MAX_TOPIC_BYTES = 255

#: characters no topic component may hold: whitespace, the separator and the
#: AMQP wildcards, controls, invisible formatting (bidi, zero-width, BOM) and
#: surrogates (a lone one cannot be encoded as UTF-8)
_FORBIDDEN = (
    r"\s.#*\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u206f\ufeff\ufff9-\ufffb\ud800-\udfff"
)
_COMPONENT = re.compile(f"[^{_FORBIDDEN}]+\\Z")


class InvalidTopic(ValueError):
    """A topic or pattern that notifyd cannot route."""


def _check_length(uri: str) -> None:
    if len(uri.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        raise InvalidTopic(f"topic is longer than {MAX_TOPIC_BYTES} bytes")


def validate_topic(uri: object) -> str:
    """Return ``uri`` if it is a concrete topic (for PUBLISH and EVENT)."""
    if not isinstance(uri, str) or not uri:
        raise InvalidTopic("topic must be a non-empty string")
    _check_length(uri)
    for part in uri.split("."):
        if not _COMPONENT.match(part):
            raise InvalidTopic(f"invalid topic {uri!r}: bad component {part!r}")
    return uri


#: concrete topics found valid lately (the hot path sees the same routing
#: keys again and again); cleared when full
_CHECKED: set[str] = set()
_CHECKED_MAX = 65536


def checked_topic(uri: str) -> str:
    """:func:`validate_topic` for a string, remembering the valid ones."""
    if uri in _CHECKED:
        return uri
    validate_topic(uri)
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(uri)
    return uri


def validate_pattern(uri: object, match: str) -> str:
    """Return ``uri`` if it is a valid SUBSCRIBE topic for ``match``."""
    if match == MATCH_EXACT:
        return validate_topic(uri)
    if not isinstance(uri, str):
        raise InvalidTopic("topic must be a string")
    _check_length(uri)
    parts = uri.split(".")
    if match == MATCH_WILDCARD:
        if not uri:
            raise InvalidTopic("wildcard pattern must not be empty")
        for part in parts:
            if part and not _COMPONENT.match(part):
                raise InvalidTopic(f"invalid pattern {uri!r}: bad component {part!r}")
        return uri
    if match == MATCH_PREFIX:
        if uri == "":
            return uri
        for part in parts[:-1]:
            if not _COMPONENT.match(part):
                raise InvalidTopic(f"invalid prefix {uri!r}: bad component {part!r}")
        if parts[-1] and not _COMPONENT.match(parts[-1]):
            raise InvalidTopic(f"invalid prefix {uri!r}: bad component {parts[-1]!r}")
        return uri
    raise InvalidTopic(f"unknown match policy {match!r}")


def binding_key(uri: str, match: str) -> str:
    """The AMQP binding key that receives every topic ``uri`` can match."""
    if match == MATCH_EXACT:
        return uri
    if match == MATCH_WILDCARD:
        return ".".join(part or "*" for part in uri.split("."))
    if match == MATCH_PREFIX:
        head, dot, _ = uri.rpartition(".")
        return f"{head}.#" if dot else "#"
    raise InvalidTopic(f"unknown match policy {match!r}")


def wildcard_matches(pattern_parts: tuple[str, ...], topic_parts: list[str]) -> bool:
    """WAMP wildcard matching on pre-split components."""
    if len(pattern_parts) != len(topic_parts):
        return False
    for want, got in zip(pattern_parts, topic_parts, strict=True):
        if want and want != got:
            return False
    return True


def matches(uri: str, match: str, topic: str) -> bool:
    """Reference semantics: does subscription (``uri``, ``match``) get ``topic``?"""
    if match == MATCH_EXACT:
        return uri == topic
    if match == MATCH_PREFIX:
        return topic.startswith(uri)
    if match == MATCH_WILDCARD:
        return wildcard_matches(tuple(uri.split(".")), topic.split("."))
    raise InvalidTopic(f"unknown match policy {match!r}")


def _amqp_regex(key: str) -> str:
    out = []
    for word in key.split("."):
        if word == "#":
            out.append(r"(?:\.[^.]+)*")
        elif word == "*":
            out.append(r"\.[^.]+")
        else:
            out.append(r"\." + re.escape(word))
    return "".join(out)


def _closure(parts: list[str], states: set[int]) -> frozenset[int]:
    todo = list(states)
    seen = set(states)
    while todo:
        i = todo.pop()
        if i < len(parts) and parts[i] == "#" and i + 1 not in seen:
            seen.add(i + 1)
            todo.append(i + 1)
    return frozenset(seen)


def _step(parts: list[str], states: frozenset[int], word: str) -> frozenset[int]:
    nxt: set[int] = set()
    for i in states:
        if i == len(parts):
            continue
        p = parts[i]
        if p == "#":
            nxt.add(i)
        elif p == "*" or p == word:
            nxt.add(i + 1)
    return _closure(parts, nxt)


def _walk(x: list[str], y: list[str], need_y: bool) -> Iterator[tuple[frozenset, frozenset]]:
    """The (x states, y states) pairs two binding keys' automata reach
    together after one word or more, over the literal words they name plus
    one word neither names (which stands for all others).  Paths on which x
    is dead are cut, and with ``need_y`` also those on which y is."""
    symbols = {w for w in x + y if w not in ("#", "*")} | {"\0"}
    todo = [(_closure(x, {0}), _closure(y, {0}))]
    seen: set[tuple[frozenset, frozenset]] = set()
    while todo:
        xs, ys = todo.pop()
        for word in symbols:
            state = (_step(x, xs, word), _step(y, ys, word))
            if state[0] and (state[1] or not need_y) and state not in seen:
                seen.add(state)
                todo.append(state)
                yield state


def amqp_contains(outer: str, inner: str) -> bool:
    """Does binding key ``outer`` match every routing key ``inner`` matches?

    Exact for non-empty routing keys (topics have at least one word).
    """
    b, h = inner.split("."), outer.split(".")
    return not any(len(b) in bs and len(h) not in hs for bs, hs in _walk(b, h, False))


def amqp_intersects(a: str, b: str) -> bool:
    """Is there a routing key (of at least one word) both binding keys match?"""
    x, y = a.split("."), b.split(".")
    return any(len(x) in xs and len(y) in ys for xs, ys in _walk(x, y, True))


class PatternSet:
    """A set of AMQP binding keys (the topics that keep history)."""

    def __init__(self, keys: list[str] | tuple[str, ...]) -> None:
        self.keys = tuple(keys)
        self._regex = re.compile("|".join(f"(?:{_amqp_regex(k)})" for k in keys) or r"(?!)")
        #: covers() answers by binding key: one SUBSCRIBE each after a node
        #: died would otherwise walk the pattern automaton every time
        self._covers: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.keys)

    def matches(self, routing_key: str) -> bool:
        """Does some key match this routing key?"""
        return self._regex.fullmatch("." + routing_key) is not None

    def overlaps(self, key: str) -> bool:
        """Does binding key ``key`` receive some routing key of the set?"""
        return any(amqp_intersects(k, key) for k in self.keys)

    def covers(self, key: str) -> bool:
        """Is every routing key binding key ``key`` receives matched by one
        key of the set?  (Conservative for keys that need several of them.)"""
        known = self._covers.get(key)
        if known is None:
            known = any(amqp_contains(k, key) for k in self.keys)
            if len(self._covers) >= _CHECKED_MAX:
                self._covers.clear()
            self._covers[key] = known
        return known
