"""Test helpers: notifyd processes, scripted Autobahn|JS clients, an AMQP
publisher and a raw WebSocket peer.  Every wait is on an event, with a timeout.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pika
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TIMEOUT = 30


def with_timeout(d: Deferred, seconds: float = TIMEOUT) -> Deferred:
    return d.addTimeout(seconds, reactor)


class _Waiters:
    """Deferreds that fire when a predicate over collected items holds."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], Any], Deferred]] = []

    def wait(self, check: Callable[[], Any], timeout: float = TIMEOUT) -> Deferred:
        value = check()
        if value:
            return succeed(value)
        d: Deferred = Deferred()
        self._waiters.append((check, d))
        d.addTimeout(timeout, reactor)
        return d

    def poke(self) -> None:
        for entry in list(self._waiters):
            check, d = entry
            if d.called:
                self._waiters.remove(entry)
                continue
            value = check()
            if value:
                self._waiters.remove(entry)
                d.callback(value)


class LineProcess(ProcessProtocol):
    """A child process whose stdout lines we watch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self._buf = b""
        self.ended: Deferred = Deferred()
        self.exit_code: int | None = None
        self._w = _Waiters()

    def outReceived(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self.line_received(line.decode("utf-8", "replace"))
        self._w.poke()

    errReceived = outReceived

    def line_received(self, line: str) -> None:
        self.lines.append(line)

    def processEnded(self, reason: Any) -> None:
        self.exit_code = reason.value.exitCode if not reason.check(ProcessDone) else 0
        self.exit_signal = getattr(reason.value, "signal", None)
        self._w.poke()
        self.ended.callback(self.exit_code)

    def wait_line(self, pattern: str, start: int = 0, timeout: float = TIMEOUT) -> Deferred:
        rx = re.compile(pattern)

        def check() -> Any:
            for line in self.lines[start:]:
                m = rx.search(line)
                if m:
                    return m
            if self.ended.called:
                raise AssertionError(
                    f"{self.name} exited before printing {pattern!r}:\n"
                    + "\n".join(self.lines[-40:])
                )
            return None

        return self._w.wait(check, timeout)

    def signal(self, sig: str = "TERM") -> Deferred:
        if not self.ended.called:
            self.transport.signalProcess(sig)
        return with_timeout(self.ended, TIMEOUT)


def notifyd_args(amqp_url: str, exchange: str, port: int, *extra: str) -> list[str]:
    """The ``twistd -n notifyd`` command line the tests run (anonymous on)."""
    return [
        str(BIN / "twistd"),
        "-n",
        "--pidfile=",
        "notifyd",
        "--amqp-url",
        amqp_url,
        "--exchange",
        exchange,
        "--listen",
        f"tcp:{port}:interface=127.0.0.1",
        "--allow-anonymous",
        *extra,
    ]


class Notifyd(LineProcess):
    """``twistd -n notifyd`` in a child process."""

    def __init__(self, amqp_url: str, exchange: str, *extra: str, env: dict | None = None):
        super().__init__("notifyd")
        self.args = notifyd_args(amqp_url, exchange, 0, *extra)
        self.env = {**os.environ, **(env or {})}
        self.port: int | None = None

    @inlineCallbacks
    def start(self) -> Any:
        reactor.spawnProcess(self, self.args[0], self.args, env=self.env, path=str(ROOT))
        m = yield self.wait_line(r"notifyd listening on 127\.0\.0\.1:(\d+)")
        self.port = int(m.group(1))
        yield self.wait_line(r"notifyd ready")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def count(self, pattern: str) -> int:
        rx = re.compile(pattern)
        return sum(1 for line in self.lines if rx.search(line))

    def wait_count(self, pattern: str, n: int, timeout: float = TIMEOUT) -> Deferred:
        """Wait until ``n`` log lines match (its output arrives on a pipe of
        its own, so it may lag behind what clients already saw)."""
        return self._w.wait(lambda: self.count(pattern) >= n, timeout)


class JsClient(LineProcess):
    """The scripted Autobahn|JS client ``tests/js/client.cjs`` on Node."""

    def __init__(
        self, url: str, serializer: str = "json", realm: str = "realm1", auth: dict | None = None
    ) -> None:
        super().__init__(f"js-{serializer}")
        self.reports: list[dict] = []
        self.url, self.serializer, self.realm = url, serializer, realm
        self.auth = auth
        self.session: int | None = None

    def line_received(self, line: str) -> None:
        super().line_received(line)
        if line.startswith("{"):
            self.reports.append(json.loads(line))

    @inlineCallbacks
    def start(self, expect_open: bool = True) -> Any:
        args = ["node", str(ROOT / "tests/js/client.cjs"), self.url, self.realm, self.serializer]
        if self.auth:
            args.append(json.dumps(self.auth))
        reactor.spawnProcess(self, "node", args, env=dict(os.environ), path=str(ROOT))
        r = yield self.wait_report(lambda r: r["ev"] in ("open", "close"))
        if expect_open:
            assert r["ev"] == "open", r
            self.session = r["session"]
            self.authid, self.authrole = r.get("authid"), r.get("authrole")
        return self

    def send(self, **cmd: Any) -> None:
        self.transport.write(json.dumps(cmd).encode() + b"\n")

    def wait_report(self, pred: Callable[[dict], bool], timeout: float = TIMEOUT) -> Deferred:
        def check() -> Any:
            for r in self.reports:
                if pred(r):
                    return r
            if self.ended.called:
                tail = [line[:300] for line in self.lines[-20:]]
                raise AssertionError(f"{self.name} exited: {tail}")
            return None

        return self._w.wait(check, timeout)

    @inlineCallbacks
    def subscribe(
        self, tag: str, topic: str, match: str | None = None, options: dict | None = None
    ) -> Any:
        self.send(op="subscribe", tag=tag, topic=topic, match=match, options=options)
        r = yield self.wait_report(
            lambda r: r.get("tag") == tag and r["ev"] in ("subscribed", "error")
        )
        return r

    @inlineCallbacks
    def call(self, tag: str, procedure: str, *args: Any, **kwargs: Any) -> Any:
        """CALL ``procedure``; the ``result`` or ``error`` report."""
        self.send(op="call", tag=tag, procedure=procedure, args=list(args), kwargs=kwargs)
        r = yield self.wait_report(lambda r: r.get("tag") == tag and r["ev"] in ("result", "error"))
        return r

    def events(self, tag: str | None = None) -> list[dict]:
        return [
            r for r in self.reports if r["ev"] == "event" and (tag is None or r.get("tag") == tag)
        ]

    def wait_events(self, tag: str, n: int, timeout: float = TIMEOUT) -> Deferred:
        return self.wait_report(lambda r: len(self.events(tag)) >= n, timeout)

    def exit(self) -> Deferred:
        if not self.ended.called:
            self.send(op="exit")
        return with_timeout(self.ended)


class Resilient(JsClient):
    """``tests/js/resilient.cjs``: a web/notifyd.js client on Node."""

    def start(self, *topics: str):
        args = ["node", str(ROOT / "tests/js/resilient.cjs"), self.url, *topics]
        reactor.spawnProcess(self, "node", args, env=dict(os.environ), path=str(ROOT))
        return self.wait_report(lambda r: r["ev"] == "state" and r["state"] == "live")

    def sessions(self) -> list[int]:
        return [r["session"] for r in self.reports if r["ev"] == "state" and r["state"] == "live"]

    def command(self, line: str) -> None:
        self.transport.write(line.encode() + b"\n")


class AmqpPublisher:
    """A plain pika publisher for tests (blocking; each call is quick)."""

    def __init__(self, url: str, exchange: str) -> None:
        self.exchange = exchange
        self.conn = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.conn.channel()
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.channel.confirm_delivery()

    def publish(
        self,
        topic: str,
        value: Any = None,
        *,
        body: bytes | None = None,
        headers: dict | None = None,
        content_type: str | None = "application/json",
        **props: Any,
    ) -> None:
        if body is None:
            body = json.dumps(value).encode()
        self.channel.basic_publish(
            self.exchange,
            topic,
            body,
            pika.BasicProperties(content_type=content_type, headers=headers, **props),
        )

    def close(self) -> None:
        if self.conn.is_open:
            self.conn.close()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class RawWampPeer(WebSocketClientProtocol):
    """A WebSocket peer that sends whatever bytes a test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.received: list[tuple[bytes, bool]] = []
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self._w = _Waiters()

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.received.append((payload, isBinary))
        self._w.poke()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.opened.called:
            self.opened.errback(ConnectionError(f"handshake failed: {code} {reason}"))
        self.close_code = code
        self.remote_close_code = self.remoteCloseCode
        self.close_reason = reason
        self._w.poke()
        if not self.closed.called:
            self.closed.callback((code, reason))

    def json_messages(self) -> list[Any]:
        return [json.loads(p) for p, binary in self.received if not binary]

    def wait_message(self, pred: Callable[[Any], bool], timeout: float = TIMEOUT) -> Deferred:
        def check() -> Any:
            for m in self.json_messages():
                if pred(m):
                    return m
            return None

        return self._w.wait(check, timeout)


@inlineCallbacks
def raw_peer(port: int, protocols: list[str] | None = None) -> Any:
    factory = WebSocketClientFactory(
        f"ws://127.0.0.1:{port}/ws", protocols=protocols or ["wamp.2.json"]
    )
    factory.protocol = RawWampPeer
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    proto = yield endpoint.connect(factory)
    yield with_timeout(proto.opened)
    return proto


def hello(peer: RawWampPeer, realm: str = "realm1") -> Deferred:
    peer.sendMessage(
        json.dumps([1, realm, {"roles": {"subscriber": {}, "publisher": {}}}]).encode()
    )
    return peer.wait_message(lambda m: m[0] in (2, 3))
