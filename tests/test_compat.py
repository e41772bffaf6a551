"""Each private detail notifyd relies on (notifyd.compat): the assumption
holds on the installed Twisted, Autobahn and pika, and the public fallback
works when it does not."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from autobahn.wamp.serializer import (
    CBORObjectSerializer,
    CBORSerializer,
    JsonObjectSerializer,
    JsonSerializer,
    MsgPackObjectSerializer,
    MsgPackSerializer,
)
from pika.adapters.twisted_connection import ClosableDeferredQueue
from pika.exceptions import ConsumerCancelled

from notifyd import compat


def test_every_assumption_holds_on_the_installed_versions():
    assert compat.FALLBACKS == {}
    assert compat.TCP_SERVER is not None and compat.COMPACT and compat.DIRECT_CONSUME


def test_object_serializer_inside_and_without_the_private_attribute():
    for wamp_cls, object_cls in (
        (JsonSerializer, JsonObjectSerializer),
        (MsgPackSerializer, MsgPackObjectSerializer),
        (CBORSerializer, CBORObjectSerializer),
    ):
        ser = wamp_cls()
        assert compat.object_serializer(ser) is ser._serializer
        ser._serializer = None  # as if autobahn renamed it
        inner = compat.object_serializer(ser)
        assert isinstance(inner, object_cls)
        assert inner.unserialize(inner.serialize([1, "realm1", {}])) == [[1, "realm1", {}]]
    compat.FALLBACKS.clear()


def test_compressing_is_assumed_when_unknown():
    assert compat.compressing(SimpleNamespace(_perMessageCompress=None)) is False
    assert compat.compressing(SimpleNamespace(_perMessageCompress=object())) is True
    assert compat.compressing(SimpleNamespace()) is True


def test_compact_drops_values_at_rest_and_handshake_leftovers(monkeypatch):
    class Proto:
        mine = None  # the caller's own attribute at rest, on its class

    compat.at_rest_on(Proto)
    p = Proto()
    p.send_queue = []
    p.http_headers = {"host": "x"}
    p.closedByMe = False  # at rest: the class has it
    p.localCloseCode = 1000  # not at rest: kept
    p.mine = None
    compat.compact(p, {"mine": None})
    assert vars(p).keys() == {"send_queue", "localCloseCode"}
    assert p.closedByMe is False and p.mine is None
    assert isinstance(p.send_queue, compat.SendQueue)
    monkeypatch.setattr(compat, "COMPACT", False)
    q = Proto()
    q.http_headers = {}
    compat.compact(q)
    assert "http_headers" in vars(q)


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "fallback-get"])
def test_consume_directly_hands_over_messages_and_reports_cancellation(monkeypatch, direct):
    monkeypatch.setattr(compat, "DIRECT_CONSUME", direct)
    q = ClosableDeferredQueue()
    q.put("early")
    got, why = [], []
    compat.consume_directly(q, got.append, why.append)
    q.put("late")
    assert got == ["early", "late"]
    q.close(ConsumerCancelled())
    assert len(why) == 1 and isinstance(why[0], ConsumerCancelled)


def test_autobahns_per_connection_settings_dump_is_formatted_only_when_logged():
    from pprint import pformat

    from autobahn.websocket import protocol

    import notifyd.websocket  # noqa: F401  (installs it)

    assert compat.lazy_config_log() is True
    value = [("autoPingInterval", 30, "WampServerFactory"), ("utf8validateIncoming", True, "x")]
    lazy = protocol.pformat(value)
    assert str(lazy) == pformat(value)
    assert f"\n{lazy}" == "\n" + pformat(value)
    assert "lazy_config_log" not in compat.FALLBACKS
