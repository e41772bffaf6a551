"""Presence into RabbitMQ (docs/presence.md): two real notifyd nodes, a
real RabbitMQ, Autobahn|JS clients, and a backend consumer that keeps the
documented table: it matches the truth after joins, leaves, a node
SIGKILLed (expired after three missed heartbeats) and a RabbitMQ restart."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pika
import pytest_twisted
from twisted.internet import defer, reactor, task, threads

from notifyd.presence import Presence, requests_queue

HEARTBEAT = 1.0


class Table:
    """What a backend keeps: node -> {session id -> entry}, and each node's
    last heartbeat (by the consumer's clock), from the presence exchange."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url, self.exchange = url, exchange
        self.nodes: dict[str, dict[int, dict]] = {}
        self.heard: dict[str, tuple[float, float]] = {}  # node -> (when, interval)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _apply(self, msg: dict) -> None:
        node = msg["node"]
        with self.lock:
            if msg["type"] == "join":
                self.nodes.setdefault(node, {})[msg["session"]] = msg
            elif msg["type"] == "leave":
                self.nodes.get(node, {}).pop(msg["session"], None)
            elif msg["type"] == "node":
                self.nodes[node] = {s["session"]: s for s in msg["sessions"]}
                self.heard[node] = (time.monotonic(), msg["interval"])
            elif msg["type"] == "stop":
                self.nodes.pop(node, None)
                self.heard.pop(node, None)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                conn = pika.BlockingConnection(pika.URLParameters(self.url))
                ch = conn.channel()
                ch.exchange_declare(self.exchange, "topic", durable=True)
                q = ch.queue_declare("", exclusive=True).method.queue
                ch.queue_bind(q, self.exchange, "#")
                ch.basic_consume(
                    q, lambda c, m, p, body: self._apply(json.loads(body)), auto_ack=True
                )
                while not self.stop.is_set():
                    conn.process_data_events(time_limit=0.1)
                conn.close()
            except pika.exceptions.AMQPError:
                time.sleep(0.2)  # RabbitMQ restarting: connect again

    def sessions(self) -> set[tuple[str, int]]:
        """The live sessions, a node dropped once its heartbeat is older than
        three intervals (the documented rule)."""
        now = time.monotonic()
        with self.lock:
            return {
                (node, sid)
                for node, sessions in self.nodes.items()
                if node in self.heard and now - self.heard[node][0] <= 3 * self.heard[node][1]
                for sid in sessions
            }


@defer.inlineCallbacks
def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = reactor.seconds() + timeout
    while not check():
        if reactor.seconds() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {what}")
        yield task.deferLater(reactor, 0.05, lambda: None)


def presence_args(exchange: str) -> list[str]:
    return [
        "--presence",
        "--presence-exchange",
        exchange,
        "--presence-heartbeat",
        str(HEARTBEAT),
        "--meta-api-roles",
        "anonymous",
    ]


def ask(url: str, exchange: str, request: dict) -> dict:
    """A backend's "who is online" request, over RabbitMQ (direct reply-to)."""
    conn = pika.BlockingConnection(pika.URLParameters(url))
    try:
        ch = conn.channel()
        answers: list[dict] = []
        ch.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda c, m, p, body: answers.append(json.loads(body)),
            auto_ack=True,
        )
        ch.basic_publish(
            "",
            requests_queue(exchange),
            json.dumps(request).encode(),
            pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="q1"),
        )
        deadline = time.monotonic() + 10
        while not answers and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        assert answers, "no answer"
        return answers[0]
    finally:
        conn.close()


@pytest_twisted.inlineCallbacks
def test_a_backend_table_matches_the_truth(spawn, rabbit, exchange):
    presence_exchange = exchange + ".presence"
    a = yield spawn.notifyd(*presence_args(presence_exchange))
    b = yield spawn.notifyd(*presence_args(presence_exchange))
    table = Table(rabbit.url, presence_exchange)
    try:
        on_a, on_b = [], []
        for _ in range(2):
            on_a.append((yield spawn.js(a.url)))
            on_b.append((yield spawn.js(b.url)))

        def truth() -> set[int]:
            return {c.session for c in on_a + on_b if not c.ended.called}

        def matches() -> bool:
            return {sid for _, sid in table.sessions()} == truth()

        yield until(matches, "every session in the table")
        by_node = {}
        for node, sid in table.sessions():
            by_node.setdefault(node, set()).add(sid)
        assert len(by_node) == 2
        node_a = next(n for n, s in by_node.items() if s == {c.session for c in on_a})
        node_b = next(n for n, s in by_node.items() if s == {c.session for c in on_b})

        # who is online: over RabbitMQ, and over WAMP for a meta role
        who = on_a[1]
        answer = yield threads.deferToThread(
            ask, rabbit.url, presence_exchange, {"authid": who.authid}
        )
        assert answer["online"] is True and answer["nodes"] == 2, answer
        assert [(s["node"], s["session"]) for s in answer["sessions"]] == [(node_a, who.session)]
        answer = yield threads.deferToThread(
            ask, rabbit.url, presence_exchange, {"claim": "account", "value": "acme"}
        )
        assert answer["online"] is False and answer["sessions"] == []
        answer = yield threads.deferToThread(ask, rabbit.url, presence_exchange, {"authid": 5})
        assert "error" in answer
        r = yield on_b[0].call("who", "notifyd.presence.lookup", authid=who.authid)
        assert r["ev"] == "result" and r["value"]["online"] is True, r
        assert r["value"]["sessions"][0]["node"] == node_a  # seen from node B

        # a leave
        yield on_a[0].exit()
        yield until(matches, "the leave applied")

        # a node SIGKILLed: no leave, no stop; its heartbeats end, and the
        # table drops it within three intervals
        yield b.signal("KILL")
        for c in on_b:
            yield c.ended
        yield until(matches, "the dead node expired", timeout=3 * HEARTBEAT + 10)
        assert {n for n, _ in table.sessions()} == {node_a}
        answer = yield threads.deferToThread(
            ask, rabbit.url, presence_exchange, {"authid": on_b[1].authid}
        )
        assert answer["online"] is False and answer["nodes"] == 1, answer

        # a RabbitMQ restart: the nodes reconnect and their first heartbeat
        # is a snapshot, so the table is right again without any join
        yield threads.deferToThread(rabbit.stop)
        yield threads.deferToThread(rabbit.start)
        late = yield spawn.js(a.url)  # joins after the restart
        on_a.append(late)
        yield until(matches, "right again after the restart", timeout=60)
        assert {n for n, _ in table.sessions()} == {node_a}
        assert node_b not in {n for n, _ in table.sessions()}

        # a graceful stop says so at once
        yield a.signal("TERM")
        yield until(lambda: table.sessions() == set(), "the stopped node gone")
    finally:
        table.stop.set()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def seconds(self) -> float:
        return self.now


class _Session:
    def __init__(self, sid: int, authextra: dict) -> None:
        self.session_id, self.authid, self.authrole = sid, f"user-{sid}", "user"
        self.authextra = authextra


def test_presence_messages_carry_only_the_configured_claims():
    sent: list[tuple[str, dict]] = []
    p = Presence(
        lambda key, body: sent.append((key, json.loads(body))),
        _Clock(),
        node="n1",
        claims=["account"],
        interval=5,
    )
    p.joined(_Session(7, {"account": "acme", "email": "a@acme.example", "tenant_secret": "x"}))
    p.joined(_Session(8, {}))
    p.heartbeat()
    p.left(_Session(7, {}))
    p.left(_Session(7, {}))  # twice: one leave
    p.stopped()
    assert [k for k, _ in sent] == ["join.n1", "join.n1", "node.n1", "leave.n1", "stop.n1"]
    join = sent[0][1]
    assert join["claims"] == {"account": "acme"}
    assert join["session"] == 7 and join["authid"] == "user-7" and join["version"] == 1
    assert "email" not in json.dumps(sent)
    assert [s["session"] for s in sent[2][1]["sessions"]] == [7, 8]
    assert sent[2][1]["interval"] == 5
    assert [m["seq"] for _, m in sent] == [1, 2, 3, 4, 5]


def test_the_cluster_table_answers_by_authid_or_claim_and_forgets_silent_nodes():
    from notifyd.presence import PresenceTable

    clock = _Clock()
    table = PresenceTable(clock)
    entry = {"authid": "ann", "authrole": "user", "claims": {"account": "acme"}, "joined": 1}
    table.apply(
        {"node": "n1", "type": "node", "interval": 10, "sessions": [{"session": 1, **entry}]}
    )
    table.apply({"node": "n2", "type": "node", "interval": 10, "sessions": []})
    table.apply({"node": "n2", "type": "join", "session": 2, **entry, "authid": "bob"})
    assert table.answer({"authid": "ann"})["online"] is True
    by_account = table.answer({"claim": "account", "value": "acme"})
    assert sorted((s["node"], s["session"]) for s in by_account["sessions"]) == [
        ("n1", 1),
        ("n2", 2),
    ]
    assert table.answer({"claim": "account", "value": "globex"})["online"] is False
    table.apply({"node": "n2", "type": "leave", "session": 2, "authid": "bob"})
    assert table.answer({"authid": "bob"})["online"] is False
    clock.now += 31  # three intervals without a heartbeat from either
    assert table.answer({"authid": "ann"}) == {
        "online": False,
        "sessions": [],
        "nodes": 0,
        "time": clock.now,
    }
    for bad in ({}, {"authid": "a", "claim": "b", "value": 1}, {"claim": "account"}, [1]):
        try:
            table.answer(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(f"answered {bad!r}")
    try:
        table.apply({"type": "join"})
    except ValueError:
        pass
    else:
        raise AssertionError("applied a message without a node")
