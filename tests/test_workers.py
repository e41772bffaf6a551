"""``--workers``: two worker processes behind one port, with a real RabbitMQ
and autobahn-python clients; one aggregated /metrics, a killed worker
replaced, a clean SIGTERM, and workers that outlive a killed parent stop."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import pytest_twisted
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.types import ComponentConfig
from twisted.internet import defer, reactor, task, threads
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.harness import unique, with_timeout
from tests.test_operations import get, m, metrics

ADMIN = "tcp:0:interface=127.0.0.1"


class _Client(ApplicationSession):
    """Subscribes to one topic; records events and how the session ended."""

    def __init__(self, config: ComponentConfig, topic: str, joined: defer.Deferred) -> None:
        super().__init__(config)
        self.topic = topic
        self.joined = joined
        self.events: list[int] = []
        self.left: defer.Deferred = defer.Deferred()
        self._waiting: list[tuple[int, defer.Deferred]] = []

    async def onJoin(self, details: Any) -> None:
        await self.subscribe(self.on_event, self.topic)
        self.joined.callback(self)

    def on_event(self, value: dict) -> None:
        self.events.append(value["seq"])
        for n, d in list(self._waiting):
            if len(self.events) >= n:
                self._waiting.remove((n, d))
                d.callback(None)

    def wait_events(self, n: int) -> defer.Deferred:
        if len(self.events) >= n:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append((n, d))
        return with_timeout(d)

    def onLeave(self, details: Any) -> None:
        if not self.left.called:
            self.left.callback(details.reason)
        super().onLeave(details)

    def onDisconnect(self) -> None:
        if not self.left.called:
            self.left.callback("disconnected")


@defer.inlineCallbacks
def connect(port: int, topic: str) -> Any:
    joined: defer.Deferred = defer.Deferred()
    factory = WampWebSocketClientFactory(
        lambda: _Client(ComponentConfig("realm1"), topic, joined),
        url=f"ws://127.0.0.1:{port}/ws",
    )
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    client = yield with_timeout(joined)
    return client


def readyz(port: int) -> dict:
    status, body = get(port, "/readyz")
    out = json.loads(body)
    assert (status == 200) == out["ready"], (status, out)
    return out


@defer.inlineCallbacks
def until(check: Any, timeout: float = 30.0) -> Any:
    """Ask ``check`` (run in a thread) every 50 ms until it returns a true
    value; fails after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        value = yield threads.deferToThread(check)
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {check.__doc__}")
        yield task.deferLater(reactor, 0.05, lambda: None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its parent) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


@defer.inlineCallbacks
def start_workers(spawn: Any) -> Any:
    node = yield spawn.notifyd("--workers", "2", "--admin-listen", ADMIN)
    m_admin = yield node.wait_line(r"admin listening on 127\.0\.0\.1:(\d+)")
    node.admin = int(m_admin.group(1))
    yield node.wait_line(r"notifyd ready: 2 workers consuming")
    return node


@pytest_twisted.inlineCallbacks
def test_two_workers_deliver_report_as_one_restart_and_stop_cleanly(spawn, publisher):
    node = yield start_workers(spawn)
    topic = unique("workers.t")

    # clients until both workers hold sessions (the kernel picks the worker)
    clients = []
    status: dict = {}
    for _ in range(60):
        clients.append((yield connect(node.port, topic)))
        status = yield threads.deferToThread(readyz, node.admin)
        if all(w["sessions"] > 0 for w in status["workers"]):
            break
    per_worker = [w["sessions"] for w in status["workers"]]
    assert len(per_worker) == 2 and min(per_worker) > 0, status
    assert status["sessions"] == len(clients)

    # every client gets every event, in order, whichever worker holds it
    yield threads.deferToThread(lambda: [publisher.publish(topic, {"seq": i}) for i in range(20)])
    yield defer.gatherResults([c.wait_events(20) for c in clients])
    assert all(c.events == list(range(20)) for c in clients)

    # one /metrics for the service: the workers' counters summed
    values = yield threads.deferToThread(metrics, node.admin)
    assert m(values, "notifyd_workers", state="answering") == 2
    assert sum(
        m(values, "notifyd_sessions", serializer=s) for s in ("json", "msgpack", "cbor")
    ) == len(clients)
    assert m(values, "notifyd_events_delivered_total") == 20 * len(clients)
    assert m(values, "notifyd_amqp_ready", worker="0") == 1
    assert m(values, "notifyd_amqp_ready", worker="1") == 1
    assert m(values, "notifyd_worker_restarts_total") == 0
    code, _ = yield threads.deferToThread(get, node.admin, "/healthz")
    assert code == 200

    # a killed worker is replaced; the other worker's sessions carry on
    victim, other = status["workers"]
    os.kill(victim["pid"], signal.SIGKILL)
    yield node.wait_line(rf"worker 0 \(pid {victim['pid']}\) was killed by signal 9")
    status = yield until(
        lambda: (s := readyz(node.admin))["ready"] and s["workers"][0]["pid"] != victim["pid"] and s
    )
    assert status["workers"][1]["pid"] == other["pid"]
    values = yield threads.deferToThread(metrics, node.admin)
    assert m(values, "notifyd_worker_restarts_total") == 1
    # what the killed worker counted (up to its last scrape) stays counted
    assert m(values, "notifyd_events_delivered_total") == 20 * len(clients)
    dropped = [c for c in clients if c.left.called]
    survivors = [c for c in clients if not c.left.called]
    assert len(dropped) == victim["sessions"] and len(survivors) == per_worker[1]
    yield threads.deferToThread(
        lambda: [publisher.publish(topic, {"seq": i}) for i in range(20, 25)]
    )
    yield defer.gatherResults([c.wait_events(25) for c in survivors])
    assert all(c.events == list(range(25)) for c in survivors)
    # and the replacement serves new clients (both workers answer again)
    late = yield connect(node.port, topic)
    assert late.is_attached()

    # SIGTERM: every worker stops gracefully, GOODBYE to every session
    pids = [w["pid"] for w in status["workers"]]
    yield node.signal("TERM")
    # twistd re-raises the signal after a clean stop
    assert node.exit_code == 0 or node.exit_signal == 15, "\n".join(node.lines[-30:])
    reasons = yield defer.gatherResults([with_timeout(c.left) for c in survivors + [late]])
    assert set(reasons) == {"wamp.close.system_shutdown"}, reasons
    assert not [p for p in pids if alive(p)]
    assert node.count(r"worker \d stopped \(exited\)") == 2
    assert node.count(r"#critical") == 0, "\n".join(x for x in node.lines if "GET /" not in x)


@pytest_twisted.inlineCallbacks
def test_workers_stop_when_their_parent_is_killed(spawn):
    node = yield start_workers(spawn)
    status = yield threads.deferToThread(readyz, node.admin)
    pids = [w["pid"] for w in status["workers"]]
    assert len(pids) == 2 and all(alive(p) for p in pids)
    node.transport.signalProcess("KILL")
    yield with_timeout(node.ended)

    def gone() -> bool:
        """the orphaned workers have exited"""
        return not any(alive(p) for p in pids)

    yield until(gone)


def test_workers_need_an_admin_endpoint_and_plain_sockets(tmp_path):
    from notifyd import config, workers
    from tests.keys import self_signed

    cert, key = self_signed(tmp_path)
    from notifyd.checks import ConfigError

    def settings(**values: Any) -> Any:
        return config.load(None, {}, values)

    workers.check(settings(workers="1"))  # today's behaviour: nothing needed
    for bad, why in [
        (settings(workers="2"), "admin_listen"),
        (settings(workers="auto"), "admin_listen"),
        (
            settings(
                workers="2", admin_listen=[ADMIN], testee_listen=["tcp:0:interface=127.0.0.1"]
            ),
            "testee_listen",
        ),
        (
            settings(
                workers="2",
                admin_listen=[ADMIN],
                listen=[f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"],
            ),
            "terminate TLS",
        ),
    ]:
        try:
            workers.check(bad)
        except ConfigError as e:
            assert why in str(e), e
        else:
            raise AssertionError(f"accepted {bad.values['listen']}")
    try:
        # the first worker to stop would unlink a shared unix socket
        workers.check(settings(workers="4", admin_listen=[ADMIN], listen=["unix:/tmp/x.sock"]))
    except ConfigError as e:
        assert "tcp: sockets only" in str(e)
    else:
        raise AssertionError("accepted a unix: listen endpoint")
    workers.check(settings(workers="4", admin_listen=[ADMIN], listen=["tcp6:0:interface=\\:\\:1"]))
