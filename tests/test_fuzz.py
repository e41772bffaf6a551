"""Fuzzing a real notifyd and the real RabbitMQ test node (issue 11).

Hypothesis builds random and mutated WAMP messages (json, msgpack and cbor
frames from raw WebSocket peers: wrong types, huge ids, unknown codes, deep
nesting, invalid UTF-8, lone surrogates, huge strings) and random AMQP
messages (random bodies and content types; header names and every header
value type pika can send: strings, bytes, ints, bools, decimals, timestamps,
arrays, tables, nested).  They go through one notifyd process per run (once
without and once with ``--history '#'``, so the logged path is covered) while
three well-behaved Autobahn|JS sessions (json, msgpack, cbor) subscribed to
everything watch.  What must hold:

* notifyd never crashes and never logs a traceback;
* the watchers miss nothing: good events published in between all arrive,
  in order;
* every bad input gets its defined answer: ABORT
  ``wamp.error.protocol_violation`` for malformed messages (or the WebSocket
  close code for a frame the WebSocket layer refuses), ERROR
  ``wamp.error.invalid_uri`` for bad topics, ERROR
  ``wamp.error.invalid_argument`` for bad payloads, an answer to every other
  request; every AMQP message is either delivered or dead-lettered, never
  both and never neither (targeted events excepted: nobody here may see
  them).

Hypothesis only *builds* the inputs (a ``@given`` function run synchronously
collects them); an inlineCallbacks test sends them.  The number of examples
of each kind is ``NOTIFYD_FUZZ_EXAMPLES`` (default 60, ``make fuzz`` 2000);
``NOTIFYD_FUZZ_SEED`` repeats a run (the seed is in every failure message).
"""

from __future__ import annotations

import datetime
import json
import os
import random
from dataclasses import dataclass
from typing import Any

import cbor2
import msgpack
import pika
import pytest
import pytest_twisted
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from pika import spec
from twisted.internet import threads
from twisted.internet.defer import inlineCallbacks

from devtools.devbroker import Node
from tests.harness import (
    AmqpPublisher,
    JsClient,
    Notifyd,
    RawWampPeer,
    raw_peer,
    unique,
    with_timeout,
)

EXAMPLES = int(os.environ.get("NOTIFYD_FUZZ_EXAMPLES", "60"))
SEED = int(os.environ.get("NOTIFYD_FUZZ_SEED", str(random.randrange(2**32))))
MAX_MESSAGE_SIZE = 65536
PUBLISH_PREFIX = "fuzz.pub."
PROBE = 7_777_777  # the request id of the probe SUBSCRIBE after each input

HELLO, WELCOME, ABORT, GOODBYE, ERROR = 1, 2, 3, 6, 8
PUBLISH, PUBLISHED, SUBSCRIBE, SUBSCRIBED = 16, 17, 32, 33
UNSUBSCRIBE, UNSUBSCRIBED, CALL, RESULT = 34, 35, 48, 50
REGISTER, REGISTERED, UNREGISTER, UNREGISTERED = 64, 65, 66, 67
KNOWN_CODES = {1, 2, 3, 4, 5, 6, 8, 16, 17, 32, 33, 34, 35, 36, 48, 49, 50}
KNOWN_CODES |= {64, 65, 66, 67, 68, 69, 70}
# requests that must get an answer carrying their request id
ANSWERS = {
    SUBSCRIBE: {SUBSCRIBED},
    UNSUBSCRIBE: {UNSUBSCRIBED},
    CALL: {RESULT},
    REGISTER: {REGISTERED},
    UNREGISTER: {UNREGISTERED},
    PUBLISH: {PUBLISHED},
}
SUBPROTOCOLS = {"json": "wamp.2.json", "msgpack": "wamp.2.msgpack", "cbor": "wamp.2.cbor"}
# characters no topic may hold (controls, bidi, separators, surrogates…)
BAD_CHARS = [
    " ",
    "#",
    "*",
    "\t",
    "\x00",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\u202e",
    "\u2066",
    "\u200e",
    "\u061c",
    "\u2028",
    "\ud800",
    "\udfff",
]


def build(strategy: st.SearchStrategy, n: int, salt: int) -> list[Any]:
    """``n`` examples of ``strategy`` (hypothesis generation only)."""
    out: list[Any] = []

    @seed(SEED + salt)
    @settings(
        max_examples=n,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(example: Any) -> None:
        out.append(example)

    collect()
    return out


# -- WAMP inputs ----------------------------------------------------------------


@dataclass
class Frame:
    kind: str
    serializer: str
    payload: bytes
    binary: bool
    #: "abort", "ws-close", "error:<uri>" or "any"
    expect: str
    message: Any = None


def encode(serializer: str, msg: Any) -> tuple[bytes, bool]:
    if serializer == "json":
        return json.dumps(msg).encode(), False
    if serializer == "msgpack":
        return msgpack.packb(msg, use_bin_type=True), True
    return cbor2.dumps(msg), True


def decode(serializer: str, payload: bytes) -> Any:
    if serializer == "json":
        return json.loads(payload)
    if serializer == "msgpack":
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)
    return cbor2.loads(payload)


def nested(depth: int, leaf: Any = 1, dicts: bool = False) -> Any:
    value = leaf
    for i in range(depth):
        value = {"k": value} if dicts and i % 2 else [value]
    return value


texts = st.text(max_size=30)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
request_ids = st.one_of(
    st.integers(min_value=1, max_value=2**53), st.integers(min_value=1, max_value=1000)
).filter(lambda i: i != PROBE)
serializers = st.sampled_from(["json", "msgpack", "cbor"])
good_topics = st.sampled_from(["fuzz.a", "fuzz.b.c", PUBLISH_PREFIX + "x", "acct.1.invoice.sent"])


@st.composite
def bad_topics(draw: Any) -> tuple[str, str]:
    """A SUBSCRIBE topic and match policy that are invalid for that policy."""
    match = draw(st.sampled_from(["exact", "prefix", "wildcard"]))
    parts = draw(st.lists(st.from_regex(r"[a-z0-9_\-]{1,6}", fullmatch=True), min_size=1))
    i = draw(st.integers(0, len(parts) - 1))
    how = draw(st.sampled_from(["char", "char", "long", "empty"] if match == "exact" else ["char"]))
    if how == "char":
        bad = draw(st.sampled_from(BAD_CHARS))
        parts[i] = parts[i][: len(parts[i]) // 2] + bad + parts[i][len(parts[i]) // 2 :]
    elif how == "long":
        parts.append("x" * 256)
    else:
        parts.insert(i, "")
    return ".".join(parts), match


def _with_serializer(msg: Any, kind: str, expect: str) -> Any:
    def make(ser: str) -> Frame | None:
        try:
            payload, binary = encode(ser, msg)
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
            return None
        return Frame(kind, ser, payload, binary, expect, msg)

    return serializers.map(make).filter(lambda f: f is not None)


@st.composite
def wamp_frames(draw: Any) -> Frame:
    kind = draw(
        st.sampled_from(
            [
                "unknown code",
                "wrong types",
                "huge id",
                "bad topic",
                "deep payload",
                "deep options",
                "huge string",
                "invalid utf-8",
                "binary junk",
                "random",
                "mutated",
                "good",
            ]
        )
    )
    rid = draw(request_ids)
    if kind == "unknown code":
        code = draw(st.integers(-(2**40), 2**40).filter(lambda c: c not in KNOWN_CODES))
        msg = [code, *draw(st.lists(values, max_size=4))]
        return draw(_with_serializer(msg, kind, "abort"))
    if kind == "wrong types":
        template = draw(
            st.sampled_from(
                [
                    [SUBSCRIBE, rid, {}, "fuzz.a"],
                    [PUBLISH, rid, {"acknowledge": True}, PUBLISH_PREFIX + "x", [1]],
                    [UNSUBSCRIBE, rid, 1],
                    [CALL, rid, {}, "wamp.session.count"],
                ]
            )
        )
        i = draw(st.integers(1, len(template) - 1))
        wrong = draw(values.filter(lambda v, t=template[i]: type(v) is not type(t)))
        msg = [*template[:i], wrong, *template[i + 1 :]]
        return draw(_with_serializer(msg, kind, "any"))
    if kind == "huge id":
        big = draw(st.one_of(st.integers(2**53 + 1, 2**64 - 1), st.integers(-(2**63), -1)))
        msg = draw(
            st.sampled_from(
                [[SUBSCRIBE, big, {}, "fuzz.a"], [UNSUBSCRIBE, big, 1], [CALL, big, {}, "x.y"]]
            )
        )
        return draw(_with_serializer(msg, kind, "abort"))
    if kind == "bad topic":
        topic, match = draw(bad_topics())
        opts = {} if match == "exact" else {"match": match}
        msg = [SUBSCRIBE, rid, opts, topic]
        # in wamp.2.json a string starting with NUL is binary (base64 after
        # the NUL): bad base64 makes the whole frame malformed (ABORT)
        expect = "error-or-abort:" if topic.startswith("\x00") else "error:"
        return draw(_with_serializer(msg, kind, expect + "wamp.error.invalid_uri"))
    if kind == "deep payload":
        depth = draw(st.integers(70, 400))
        payload = nested(depth, dicts=draw(st.booleans()))
        where = draw(st.sampled_from(["args", "kwargs"]))
        msg = [PUBLISH, rid, {"acknowledge": True}, PUBLISH_PREFIX + "deep"]
        msg += [[payload]] if where == "args" else [[], {"v": payload}]
        # (past a parser's own limit, e.g. cbor2's 400, the frame is refused)
        return draw(_with_serializer(msg, kind, "error-or-abort:wamp.error.invalid_argument"))
    if kind == "deep options":
        depth = draw(st.integers(10, 400))
        code = draw(st.sampled_from([SUBSCRIBE, PUBLISH, CALL]))
        msg = [code, rid, {"x": nested(depth, dicts=True)}, "fuzz.a"]
        return draw(_with_serializer(msg, kind, "any"))
    if kind == "huge string":
        size = draw(st.sampled_from([300, 5000, 70000]))
        char = draw(st.sampled_from(["x", "é", "\ud800", "\x00"]))
        msg = draw(
            st.sampled_from(
                [
                    [SUBSCRIBE, rid, {}, char * size],
                    [PUBLISH, rid, {"acknowledge": True}, PUBLISH_PREFIX + "h", [char * size]],
                    [CALL, rid, {}, char * size],
                    [HELLO, char * size, {}],
                ]
            )
        )
        return draw(_with_serializer(msg, kind, "any"))
    if kind == "invalid utf-8":
        junk = draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80"]))
        msg = f'[32, {rid}, {{}}, "fuzz.'.encode() + junk + b'"]'
        return Frame(kind, "json", msg, False, "ws-close")
    if kind == "binary junk":
        ser = draw(serializers)
        junk = draw(st.binary(min_size=1, max_size=64))
        return Frame(kind, ser, junk, ser != "json", "any")
    if kind == "random":
        msg = draw(st.one_of(values, st.lists(values, max_size=6)))
        if draw(st.booleans()):
            msg = [draw(st.sampled_from(sorted(KNOWN_CODES))), *draw(st.lists(values, max_size=5))]
        return draw(_with_serializer(msg, kind, "any"))
    if kind == "mutated":
        ser = draw(serializers)
        base = draw(
            st.sampled_from(
                [
                    [SUBSCRIBE, rid, {"match": "prefix"}, "fuzz."],
                    [PUBLISH, rid, {"acknowledge": True}, PUBLISH_PREFIX + "m", [{"a": [1, "b"]}]],
                    [CALL, rid, {}, "wamp.subscription.list"],
                ]
            )
        )
        data = bytearray(encode(ser, base)[0])
        for _ in range(draw(st.integers(1, 4))):
            op = draw(st.sampled_from(["flip", "insert", "delete"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if op == "flip" and data:
                data[at] ^= draw(st.integers(1, 255))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=4))
            elif data:
                del data[at]
        return Frame(kind, ser, bytes(data), ser != "json", "any", base)
    # a well-formed request: must be answered normally
    msg = draw(
        st.sampled_from(
            [
                [SUBSCRIBE, rid, {}, draw(good_topics)],
                [SUBSCRIBE, rid, {"match": "prefix"}, "fuzz."],
                [PUBLISH, rid, {"acknowledge": True}, PUBLISH_PREFIX + "ok", [draw(values)]],
                [CALL, rid, {}, "com.example.nothing"],
            ]
        )
    )
    return draw(_with_serializer(msg, kind, "any"))


# -- AMQP inputs ----------------------------------------------------------------

TARGETING = {
    "wamp-eligible",
    "wamp-exclude",
    "wamp-eligible-authid",
    "wamp-exclude-authid",
    "wamp-eligible-authrole",
    "wamp-exclude-authrole",
    "wamp-exclude-me",
}
WAMP_HEADERS = sorted(
    TARGETING
    | {
        "wamp-retain",
        "wamp-payload",
        "wamp-publication",
        "wamp-publisher",
        "wamp-disclose-me",
        "wamp-publisher-authid",
        "wamp-publisher-authrole",
        "wamp-eligible-extra-account",
    }
)
amqp_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20
)  # pika encodes text as UTF-8: no lone surrogates
header_scalars = st.one_of(
    amqp_text,
    st.binary(max_size=16),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.none(),
    st.decimals(
        min_value=-(10**5), max_value=10**5, places=2, allow_nan=False, allow_infinity=False
    ),
    st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1)),
)
header_values = st.recursive(
    header_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(amqp_text.filter(lambda s: 0 < len(s.encode()) < 60), inner, max_size=3),
    ),
    max_leaves=8,
)
header_names = st.one_of(
    st.sampled_from(WAMP_HEADERS),
    amqp_text.filter(lambda s: 0 < len(s.encode()) < 100),
    amqp_text.map(lambda s: "wamp-" + s),
)
json_values = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=20)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.integers(60, 600).map(lambda d: json.dumps(nested(d)).encode()),
    st.sampled_from(
        [
            b"[NaN]",
            b"1e999",
            b'{"a":"\\ud800"}',
            b'"\\udfff"',
            b"\xff\xfe",
            b"",
            b"{",
            json.dumps(["x" * (MAX_MESSAGE_SIZE + 10)]).encode(),
        ]
    ),
)
content_types = st.one_of(
    st.sampled_from(
        [None, "application/json", "", "text/plain", "application/msgpack", "application/cbor"]
    ),
    amqp_text,
)


@dataclass
class AmqpInput:
    suffix: str | bytes
    valid_key: bool
    body: bytes
    content_type: str | None
    headers: dict[str, Any] | None

    @property
    def targeted(self) -> bool:
        return bool(self.headers) and any(
            k.lower() in TARGETING or k.lower().startswith(("wamp-eligible", "wamp-exclude"))
            for k in self.headers
        )


@st.composite
def amqp_inputs(draw: Any) -> AmqpInput:
    valid_key = draw(st.booleans())
    if valid_key:
        suffix: str | bytes = draw(st.from_regex(r"(\.[a-z0-9_\-]{1,8}){0,3}", fullmatch=True))
    elif draw(st.booleans()):
        suffix = "." + draw(
            st.sampled_from([c for c in BAD_CHARS if not "\ud800" <= c <= "\udfff"])
        )
        suffix += draw(st.sampled_from(["", "x", ".y"]))
    else:
        suffix = b"." + draw(st.sampled_from([b"\xff", b"\xed\xa0\x80", b"\xc0\xaf", b".", b""]))
    headers = draw(st.none() | st.dictionaries(header_names, header_values, max_size=4))
    return AmqpInput(suffix, valid_key, draw(bodies), draw(content_types), headers)


def encodable(inp: AmqpInput, key: str | bytes) -> bool:
    """Can pika send it at all?  (What it cannot send no backend can.)"""
    try:
        props = pika.BasicProperties(
            content_type=inp.content_type, headers=inp.headers, message_id="x"
        )
        props.encode()
        spec.Basic.Publish(exchange="x", routing_key=key).encode()
    except Exception:
        return False
    return True


# -- the running system ---------------------------------------------------------


class System:
    """One notifyd, its exchange, dead-letter queue and three watchers."""

    def __init__(self, rabbit: Node, history: bool) -> None:
        self.rabbit = rabbit
        self.history = history
        self.exchange = unique("fuzz")
        self.dlx = self.exchange + "-dlx"
        self.dead_queue = self.exchange + "-dead"
        self.stream = unique("fuzz-history")
        self.publisher = AmqpPublisher(rabbit.url, self.exchange)
        ch = self.publisher.channel
        ch.exchange_declare(self.dlx, exchange_type="fanout")
        ch.queue_declare(self.dead_queue, auto_delete=False)
        ch.queue_bind(self.dead_queue, self.dlx)
        extra = [
            "--dead-letter-exchange",
            self.dlx,
            "--max-message-size",
            str(MAX_MESSAGE_SIZE),
            "--allow-publish",
            PUBLISH_PREFIX,
        ]
        if history:
            extra += [
                "--history",
                "#",
                "--history-stream",
                self.stream,
                "--retained-stream",
                self.stream + ".retained",
            ]
        self.node = Notifyd(rabbit.url, self.exchange, *extra)
        self.watchers: list[JsClient] = []
        self.good = 0

    @inlineCallbacks
    def start(self) -> Any:
        yield self.node.start()
        for ser in ("json", "msgpack", "cbor"):
            w = JsClient(self.node.url, ser)
            self.watchers.append(w)
            yield w.start()
            r = yield w.subscribe("all", "", "prefix")
            assert r["ev"] == "subscribed", r
        return self

    def channel(self) -> Any:
        """The publisher's channel (a new connection if the node dropped it:
        other tests may restart the shared test node)."""
        if not (self.publisher.conn.is_open and self.publisher.channel.is_open):
            self.publisher.close()
            self.publisher = AmqpPublisher(self.rabbit.url, self.exchange)
        return self.publisher.channel

    def publish(self, *args: Any, **kwargs: Any) -> None:
        """Publish (blocking, with confirms); once more on a new connection
        if the node dropped this one."""
        try:
            self.channel()
            self.publisher.publish(*args, **kwargs)
        except pika.exceptions.AMQPConnectionError:
            self.channel()
            self.publisher.publish(*args, **kwargs)

    def publish_good(self) -> Any:
        def publish() -> None:
            self.publish("good.event", {"good": self.good})
            self.good += 1

        return threads.deferToThread(publish)

    @inlineCallbacks
    def check_watchers(self) -> Any:
        """Every watcher got every good event, in order; nobody crashed."""
        for w in self.watchers:

            def enough(w: JsClient = w) -> bool:
                if w.ended.called:
                    raise AssertionError(f"{w.name} exited: {w.lines[-5:]}")
                return len(good_events(w)) >= self.good

            try:
                yield w._w.wait(enough, timeout=60)
            except Exception as e:
                if self.node.count("notifyd ready on") > 1:
                    raise AssertionError(
                        "notifyd's RabbitMQ connection was dropped during the run (by another "
                        "user of the test node?): events published meanwhile are lost; rerun"
                    ) from e
                raise AssertionError(
                    f"seed {SEED}: watcher {w.name} missed good events; "
                    f"its last reports: {w.reports[-5:]}; node: {self.node.lines[-20:]}"
                ) from e
            got = [e["args"][0]["good"] for e in good_events(w)]
            assert got == list(range(self.good)), (SEED, w.name, got)
        self.check_node()

    def check_node(self) -> None:
        assert not self.node.ended.called, (SEED, self.node.lines[-40:])
        bad = [
            line
            for line in self.node.lines
            if "Traceback" in line or "Unhandled" in line or "#critical]" in line
        ]
        assert not bad, (SEED, bad[:5], self.node.lines[-60:])

    def stop(self) -> None:
        for proc in [*self.watchers, self.node]:
            if not proc.ended.called:
                try:
                    proc.transport.signalProcess("KILL")
                except Exception:
                    pass
        conn = pika.BlockingConnection(pika.URLParameters(self.rabbit.url))
        ch = conn.channel()
        for q in (self.dead_queue, self.stream, self.stream + ".retained"):
            ch.queue_delete(q)
        for x in (self.exchange, self.dlx):
            ch.exchange_delete(x)
        conn.close()
        self.publisher.close()


def good_events(w: JsClient) -> list[dict]:
    return [e for e in w.events("all") if e["topic"] == "good.event"]


@pytest.fixture(scope="module", params=["live", "history"])
def system(request: Any, rabbit: Node) -> Any:
    s = System(rabbit, request.param == "history")
    try:
        pytest_twisted.blockon(with_timeout(s.start(), 60))
        yield s
    finally:
        s.stop()


# -- sending WAMP inputs ----------------------------------------------------------


class Outcome:
    def __init__(self, frame: Frame, peer: RawWampPeer) -> None:
        self.frame, self.peer = frame, peer

    def messages(self) -> list[Any]:
        out = []
        for payload, _binary in self.peer.received:
            try:
                out.append(decode(self.frame.serializer, payload))
            except Exception:
                out.append(("undecodable", payload[:80]))
        return out

    def describe(self) -> str:
        f = self.frame
        return (
            f"seed {SEED}: {f.kind} via {f.serializer}: sent {f.payload[:300]!r} "
            f"(binary={f.binary}); got {[repr(m)[:200] for m in self.messages()]}; "
            f"close {getattr(self.peer, 'remote_close_code', None)} "
            f"{getattr(self.peer, 'close_reason', None)!r}"
        )


def ended(peer: RawWampPeer) -> bool:
    # (onClose sets close_code, then wakes waiters, then fires ``closed``)
    return hasattr(peer, "close_code")


def _answered(msgs: list[Any], code: int, rid: Any) -> Any:
    for m in msgs:
        if not isinstance(m, list) or len(m) < 2:
            continue
        if m[0] in ANSWERS.get(code, ()) and m[1] == rid:
            return m
        if m[0] == ERROR and len(m) > 4 and m[1] == code and m[2] == rid:
            return m
    return None


@inlineCallbacks
def send_frame(port: int, frame: Frame) -> Any:
    peer = yield raw_peer(port, [SUBPROTOCOLS[frame.serializer]])
    ser = frame.serializer
    out = Outcome(frame, peer)
    hello, binary = encode(ser, [HELLO, "realm1", {"roles": {"subscriber": {}, "publisher": {}}}])
    peer.sendMessage(hello, isBinary=binary)
    try:
        yield peer._w.wait(lambda: peer.received or ended(peer))
    except Exception:
        raise AssertionError("no answer to HELLO: " + out.describe()) from None
    assert out.messages() and out.messages()[0][0] == WELCOME, out.describe()
    peer.sendMessage(frame.payload, isBinary=frame.binary)
    probe, binary = encode(ser, [SUBSCRIBE, PROBE, {}, "fuzz.probe"])
    peer.sendMessage(probe, isBinary=binary)
    # the probe is answered (the session lives on) or the connection ends
    try:
        yield peer._w.wait(
            lambda: ended(peer) or _answered(out.messages(), SUBSCRIBE, PROBE), timeout=30
        )
    except Exception:
        raise AssertionError("session neither answered nor ended: " + out.describe()) from None
    msg = frame.message
    request = (
        isinstance(msg, list)
        and len(msg) > 2
        and type(msg[0]) is int
        and msg[0] in ANSWERS
        and type(msg[1]) is int
        and 1 <= msg[1] <= 2**53
        and frame.kind != "mutated"
        and not (
            msg[0] == PUBLISH
            and not (isinstance(msg[2], dict) and msg[2].get("acknowledge") is True)
        )
    )
    if not ended(peer) and request:
        try:
            yield peer._w.wait(
                lambda: ended(peer) or _answered(out.messages(), msg[0], msg[1]),
                timeout=30,
            )
        except Exception:
            raise AssertionError("no answer to a request: " + out.describe()) from None
    if not ended(peer):
        peer.sendClose(1000)
        yield with_timeout(peer.closed)
        closed_by_server = False
    else:
        closed_by_server = True
    return out, closed_by_server


def judge(out: Outcome, closed_by_server: bool) -> None:
    frame, msgs = out.frame, out.messages()
    wamp = [m for m in msgs if isinstance(m, list) and m]
    aborts = [m for m in wamp if m[0] == ABORT]
    code = getattr(out.peer, "remote_close_code", None)
    if frame.expect == "abort":
        assert closed_by_server and aborts, out.describe()
        assert aborts[-1][2] == "wamp.error.protocol_violation", out.describe()
    elif frame.expect == "ws-close":
        assert closed_by_server, out.describe()
        assert code == 1007 or (aborts and aborts[-1][2] == "wamp.error.protocol_violation"), (
            out.describe()
        )
    elif frame.expect.startswith("error-or-abort:") and closed_by_server:
        assert aborts and aborts[-1][2] == "wamp.error.protocol_violation", out.describe()
    elif frame.expect.startswith(("error:", "error-or-abort:")):
        uri = frame.expect.split(":", 1)[1]
        assert not closed_by_server, out.describe()
        answer = _answered(msgs, frame.message[0], frame.message[1])
        assert answer is not None and answer[0] == ERROR, out.describe()
        assert answer[4] == uri, out.describe()
    elif closed_by_server:
        # a defined end: ABORT/GOODBYE with a reason, or a WebSocket close code
        ends = [m for m in wamp if m[0] in (ABORT, GOODBYE)]
        assert ends or code in (1002, 1007, 1009), out.describe()
        for m in ends:
            assert isinstance(m[2], str) and m[2].startswith("wamp."), out.describe()
    # every ERROR names a standard or notifyd error URI
    for m in wamp:
        if m[0] == ERROR:
            assert isinstance(m[4], str), out.describe()
            assert m[4].startswith(("wamp.error.", "notifyd.error.")), out.describe()
    # the server never sends anything it could not have sent
    for m in msgs:
        assert not (isinstance(m, tuple) and m[0] == "undecodable"), out.describe()


@pytest_twisted.inlineCallbacks
def test_fuzz_wamp_messages(system: System) -> Any:
    frames = build(wamp_frames(), EXAMPLES, salt=1 + system.history)
    kinds: dict[str, int] = {}
    for i, frame in enumerate(frames):
        kinds[frame.kind] = kinds.get(frame.kind, 0) + 1
        out, closed = yield send_frame(system.node.port, frame)
        judge(out, closed)
        if i % 10 == 0:
            yield system.publish_good()
            system.check_node()
    yield system.publish_good()
    yield system.check_watchers()
    print(f"\nseed {SEED}: {len(frames)} WAMP inputs {kinds}")


# -- sending AMQP inputs ------------------------------------------------------------


def _publish_all(system: System, inputs: list[tuple[str, AmqpInput, str | bytes]]) -> None:
    for i, (mid, inp, key) in enumerate(inputs):
        ch = system.channel()
        if i % 5 == 0:
            system.publish("good.event", {"good": system.good})
            system.good += 1
        ch.basic_publish(
            system.exchange,
            key,
            inp.body,
            pika.BasicProperties(
                content_type=inp.content_type, headers=inp.headers, message_id=mid
            ),
        )
    system.publish("good.event", {"good": system.good})
    system.good += 1


def _dead_letters(url: str, queue: str, want: set[str], timeout: float) -> set[str]:
    """Message ids dead-lettered to ``queue`` (until ``want`` are all seen or
    nothing more comes for ``timeout`` seconds)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    seen: set[str] = set()
    for method, props, _body in ch.consume(queue, auto_ack=True, inactivity_timeout=timeout):
        if method is None:
            break
        seen.add(props.message_id)
        if want <= seen:
            break
    ch.cancel()
    conn.close()
    return seen


@pytest_twisted.inlineCallbacks
def test_fuzz_amqp_messages(system: System) -> Any:
    raw = build(amqp_inputs(), EXAMPLES, salt=10 + system.history)
    inputs = []
    run = unique("r")
    for n, inp in enumerate(raw):
        prefix = f"fuzz.{run}.n{n}"
        key = prefix.encode() + inp.suffix if isinstance(inp.suffix, bytes) else prefix + inp.suffix
        if encodable(inp, key):
            inputs.append((f"{run}-{n}", inp, key))
    yield threads.deferToThread(_publish_all, system, inputs)
    yield system.check_watchers()
    delivered: dict[str, set[str]] = {}
    for w in system.watchers:
        for e in w.events("all"):
            parts = (e["topic"] or "").split(".")
            if len(parts) > 2 and parts[1] == run:
                delivered.setdefault(f"{run}-{parts[2][1:]}", set()).add(w.name)
    must_resolve = {mid for mid, inp, _ in inputs if not inp.targeted}
    dead = yield threads.deferToThread(
        _dead_letters, system.rabbit.url, system.dead_queue, must_resolve - set(delivered), 15
    )
    problems = []
    for mid, inp, key in inputs:
        where = ("delivered" if mid in delivered else "") + ("dead" if mid in dead else "")
        if where == "delivereddead":
            problems.append(("delivered AND dead-lettered", mid, key, inp))
        elif not where and not inp.targeted:
            problems.append(("neither delivered nor dead-lettered", mid, key, inp))
        elif mid in delivered and not inp.valid_key:
            problems.append(("delivered with an invalid routing key", mid, key, inp))
        elif mid in delivered and inp.targeted:
            problems.append(("targeted event reached anonymous watchers", mid, key, inp))
        elif mid in delivered and len(delivered[mid]) != 3:
            problems.append((f"delivered to {sorted(delivered[mid])} only", mid, key, inp))
    system.check_node()
    print(
        f"\nseed {SEED}: {len(inputs)} AMQP inputs, {len(delivered)} delivered, "
        f"{len(dead)} dead-lettered (history={system.history})"
    )
    assert not problems, f"seed {SEED}: {len(problems)} problems, first: {problems[:5]}"


# -- the inputs of issue 11, always sent ----------------------------------------------


def _fixed(kind: str, ser: str, msg: Any, expect: str) -> Frame:
    payload, binary = encode(ser, msg)
    return Frame(kind, ser, payload, binary, expect, msg)


KNOWN = [
    # finding 1: a lone surrogate in a topic
    _fixed(
        "surrogate topic",
        "json",
        [SUBSCRIBE, 1, {}, "acct.42.\ud800"],
        "error:wamp.error.invalid_uri",
    ),
    _fixed(
        "surrogate prefix",
        "json",
        [SUBSCRIBE, 2, {"match": "prefix"}, "acct.\udfff."],
        "error:wamp.error.invalid_uri",
    ),
    # finding 3: a PUBLISH nested ~960 deep
    _fixed(
        "deep msgpack publish",
        "msgpack",
        [PUBLISH, 3, {"acknowledge": True}, PUBLISH_PREFIX + "deep", [nested(500)]],
        "error:wamp.error.invalid_argument",
    ),
    Frame(
        "deep json publish",
        "json",
        b'[16, 4, {"acknowledge": true}, "fuzz.pub.deep", ['
        + b"[" * 960
        + b"1"
        + b"]" * 961
        + b"]",
        False,
        # (too deep for the JSON parser: refusing the frame is defined too)
        "error-or-abort:wamp.error.invalid_argument",
        [PUBLISH, 4, {"acknowledge": True}, PUBLISH_PREFIX + "deep", ["(960 deep)"]],
    ),
    # WAMP ids are 1..2^53: 0 and 2^53+1 are protocol violations
    _fixed("request id 0", "json", [SUBSCRIBE, 0, {}, "fuzz.a"], "abort"),
    _fixed("request id 2^53+1", "cbor", [SUBSCRIBE, 2**53 + 1, {}, "fuzz.a"], "abort"),
    _fixed(
        "ANSI and bidi topic",
        "cbor",
        [SUBSCRIBE, 5, {}, "acct.\x1b[31m\u202e"],
        "error:wamp.error.invalid_uri",
    ),
    _fixed(
        "reserved namespace",
        "json",
        [PUBLISH, 6, {"acknowledge": True}, "wamp.session.x", []],
        "error:wamp.error.invalid_uri",  # as Crossbar answers it (issue 11)
    ),
]


@pytest.mark.parametrize(
    "frame", KNOWN, ids=[getattr(f, "kind", None) or f.values[0].kind for f in KNOWN]
)
@pytest_twisted.inlineCallbacks
def test_known_hostile_wamp_inputs(system: System, frame: Frame) -> Any:
    out, closed = yield send_frame(system.node.port, frame)
    judge(out, closed)
    yield system.publish_good()
    yield system.check_watchers()
