"""Kill orders: selection and the control message format (no reactor)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from notifyd.revocation import KillOrder


def session(sid=1, authid="alice", authrole="user", authextra=None):
    return SimpleNamespace(
        session_id=sid, authid=authid, authrole=authrole, authextra=authextra or {}
    )


def test_selectors():
    alice = session(1, "alice", "user", {"tenantId": "7"})
    bob = session(2, "bob", "admin", {"tenantId": "8"})
    assert KillOrder(session=1).selects(alice) and not KillOrder(session=1).selects(bob)
    assert KillOrder(authid="alice").selects(alice) and not KillOrder(authid="Alice").selects(alice)
    assert KillOrder(authrole="admin").selects(bob) and not KillOrder(authrole="admin").selects(
        alice
    )
    # extra names compare case-insensitively, values exactly
    assert KillOrder(extra=("tenantid", "7")).selects(alice)
    assert KillOrder(extra=("TENANTID", "8")).selects(bob)
    assert not KillOrder(extra=("tenantId", "07")).selects(alice)
    assert not KillOrder(extra=("account", "7")).selects(alice)
    # no selector: nothing
    assert not KillOrder().selects(alice)
    # the excepted session is never selected
    assert not KillOrder(authid="alice", exclude=1).selects(alice)
    assert KillOrder(authid="alice", exclude=1).selects(session(3, "alice"))


@pytest.mark.parametrize(
    "order",
    [
        KillOrder(session=2**53),
        KillOrder(authid="alice", message="removed from account 42"),
        KillOrder(authrole="user", reason="com.example.close.removed"),
        KillOrder(extra=("account", "42"), exclude=5),
        KillOrder(authid="ünï ☃"),
    ],
)
def test_body_round_trip(order):
    body = order.to_body()
    assert KillOrder.from_body(body) == order
    data = json.loads(body)
    assert set(data["kill"]) <= {"session", "authid", "authrole", "extra"}
    assert data["reason"] == order.reason


def test_documented_example_parses():
    order = KillOrder.from_body(
        b'{"kill": {"authid": "alice"}, "reason": "wamp.close.killed",'
        b' "message": "removed from account"}'
    )
    assert (order.authid, order.reason, order.message) == (
        "alice",
        "wamp.close.killed",
        "removed from account",
    )
    assert KillOrder.from_body(b'{"kill": {"authrole": "user"}}').reason == "wamp.close.killed"


@pytest.mark.parametrize(
    "body, message",
    [
        (b"\xff{}", "UTF-8"),
        (b"not json", "JSON"),
        (b'{"kill": {"session": NaN}}', "JSON"),
        (b"[1]", "JSON object"),
        (b"{}", '"kill"'),
        (b'{"kill": {}}', "exactly one"),
        (b'{"kill": {"authid": "a", "authrole": "b"}}', "exactly one"),
        (b'{"kill": {"user": "a"}}', "unknown selector"),
        (b'{"kill": {"authid": "a"}, "why": 1}', "unknown key"),
        (b'{"kill": {"authid": ""}}', "kill.authid"),
        (b'{"kill": {"authid": 5}}', "kill.authid"),
        (b'{"kill": {"authid": "\\ud800"}}', "UTF-8"),
        (b'{"kill": {"session": "5"}}', "session id"),
        (b'{"kill": {"session": 1.0}}', "session id"),
        (b'{"kill": {"session": true}}', "session id"),
        (b'{"kill": {"session": 0}}', "session id"),
        (b'{"kill": {"session": 9007199254740993}}', "session id"),
        (b'{"kill": {"extra": ["account"]}}', "kill.extra"),
        (b'{"kill": {"extra": {"account": "1"}}}', "kill.extra"),
        (b'{"kill": {"authid": "a"}, "reason": "Not A URI"}', "WAMP URI"),
        (b'{"kill": {"authid": "a"}, "reason": "wamp..x"}', "WAMP URI"),
        (b'{"kill": {"authid": "a"}, "reason": null}', "WAMP URI"),
        (b'{"kill": {"authid": "a"}, "message": 5}', "message"),
        (b'{"kill": {"authid": "a"}, "except": "x"}', "except"),
        (b"[" * 5000 + b"]" * 5000, "JSON"),
        (b" " * 70000, "at most"),
    ],
)
def test_malformed_orders_are_refused_with_a_clear_message(body, message):
    with pytest.raises(ValueError, match=message):
        KillOrder.from_body(body)
