"""Topic validation, binding keys and matching (pure functions)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifyd.topics import (
    InvalidTopic,
    PatternSet,
    amqp_contains,
    amqp_intersects,
    binding_key,
    matches,
    validate_pattern,
    validate_topic,
)


def amqp_matches(key: str, routing_key: str) -> bool:
    """AMQP topic-exchange semantics (the reference the faster code is checked against)."""
    k = key.split(".")
    r = routing_key.split(".")

    def go(i: int, j: int) -> bool:
        if i == len(k):
            return j == len(r)
        if k[i] == "#":
            return any(go(i + 1, jj) for jj in range(j, len(r) + 1))
        if j == len(r):
            return False
        return (k[i] == "*" or k[i] == r[j]) and go(i + 1, j + 1)

    return go(0, 0)


@pytest.mark.parametrize(
    "uri, match, key",
    [
        ("invoice.sent", "exact", "invoice.sent"),
        ("invoice..sent", "wildcard", "invoice.*.sent"),
        ("..", "wildcard", "*.*.*"),
        ("invoice.", "prefix", "invoice.#"),
        ("invoice.se", "prefix", "invoice.#"),
        ("acct.42.inv", "prefix", "acct.42.#"),
        ("inv", "prefix", "#"),
        ("", "prefix", "#"),
    ],
)
def test_binding_keys(uri, match, key):
    assert validate_pattern(uri, match) == uri
    assert binding_key(uri, match) == key


def test_string_prefix_semantics():
    assert matches("inv", "prefix", "invoice.sent")
    assert matches("inv", "prefix", "inventory.low")
    assert not matches("inv", "prefix", "client.inv")
    assert matches("invoice.", "prefix", "invoice.sent")
    assert not matches("invoice.", "prefix", "invoice")
    assert matches("a..c", "wildcard", "a.b.c")
    assert not matches("a..c", "wildcard", "a.b.x.c")


@pytest.mark.parametrize(
    "uri, match",
    [
        ("", "exact"),
        ("a..b", "exact"),
        ("a b", "exact"),
        ("a.#", "exact"),
        ("a.*", "exact"),
        (".a", "exact"),
        ("x" * 256, "exact"),
        ("a b.", "prefix"),
        ("a..b", "prefix"),
        ("", "wildcard"),
        ("a.#.b", "wildcard"),
        (42, "exact"),
        ("a", "regex"),
    ],
)
def test_invalid(uri, match):
    with pytest.raises(InvalidTopic):
        validate_pattern(uri, match)


def test_publish_topics():
    assert validate_topic("invoice.sent") == "invoice.sent"
    assert validate_topic("Invoice-Sent.v2") == "Invoice-Sent.v2"
    with pytest.raises(InvalidTopic):
        validate_topic("invoice.")


component = st.sampled_from(["a", "b", "ab", "ba", "inv", "invoice", "x1"])
topics = st.lists(component, min_size=1, max_size=4).map(".".join)


@st.composite
def patterns(draw):
    match = draw(st.sampled_from(["exact", "prefix", "wildcard"]))
    if match == "exact":
        return draw(topics), match
    if match == "wildcard":
        parts = draw(st.lists(st.one_of(st.just(""), component), min_size=1, max_size=4))
        return ".".join(parts), match
    t = draw(topics)
    return t[: draw(st.integers(0, len(t)))], match


@given(patterns(), topics)
def test_the_binding_never_hides_a_wanted_event(pattern, topic):
    """RabbitMQ filtering is a superset of WAMP matching: whatever WAMP would
    deliver, the AMQP binding key lets through."""
    uri, match = pattern
    try:
        validate_pattern(uri, match)
    except InvalidTopic:
        return
    if matches(uri, match, topic):
        assert amqp_matches(binding_key(uri, match), topic)
    if match != "prefix":
        # exact and wildcard bindings are exact: nothing extra arrives
        assert matches(uri, match, topic) == amqp_matches(binding_key(uri, match), topic)


_WORDS = st.sampled_from(["a", "b", "c", "*", "#"])
_KEYS = st.lists(_WORDS, min_size=1, max_size=4).map(".".join)
_ROUTING_KEYS = [
    ".".join(t) for n in range(1, 7) for t in itertools.product(["a", "b", "c", "z"], repeat=n)
]


@settings(max_examples=150, deadline=None)
@given(outer=_KEYS, inner=_KEYS)
def test_amqp_contains_agrees_with_brute_force(outer, inner):
    """Containment of binding keys (which subscriptions the event log serves
    entirely), against every routing key of up to six words."""
    keys = _ROUTING_KEYS
    brute = all(amqp_matches(outer, k) for k in keys if amqp_matches(inner, k))
    assert amqp_contains(outer, inner) == brute
    patterns = PatternSet([outer])
    assert [patterns.matches(k) for k in keys] == [amqp_matches(outer, k) for k in keys]
    both = any(amqp_matches(outer, k) and amqp_matches(inner, k) for k in keys)
    assert amqp_intersects(outer, inner) == both


def test_checked_topic_remembers_only_valid_topics():
    from notifyd import topics

    topics._CHECKED.clear()
    assert topics.checked_topic("invoice.sent") == "invoice.sent"
    assert "invoice.sent" in topics._CHECKED
    for bad in ("invoice..sent", "a.\x00", "acct.\u202eevil"):
        with pytest.raises(topics.InvalidTopic):
            topics.checked_topic(bad)
        with pytest.raises(topics.InvalidTopic):  # and again: nothing was remembered
            topics.checked_topic(bad)
    assert topics._CHECKED == {"invoice.sent"}
