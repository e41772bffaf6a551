"""Event history end to end: a real RabbitMQ stream, real notifyd nodes and
Autobahn|JS clients.  Resume across nodes, after SIGKILL, beyond retention;
get_events, get_retained and the meta API; targeting in history."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pika
import pytest
import pytest_twisted
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import ComponentConfig, SubscribeOptions
from twisted.internet import defer, reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint

from tests.harness import Resilient, unique, with_timeout
from tests.test_operations import m, metrics

TOPIC = "invoice.sent"


def history_args(stream: str, *extra: str) -> list[str]:
    return [
        "--history",
        "invoice.#",
        "--history-stream",
        stream,
        "--retained-stream",
        stream + ".retained",
        *extra,
    ]


@pytest.fixture
def stream(rabbit: Any) -> Any:
    """A fresh stream name per test; the streams are deleted afterwards."""
    name = unique("history")
    yield name
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
    ch = conn.channel()
    for q in (name, name + ".retained", name + ".ingest"):
        ch.queue_delete(q)
    conn.close()


def seqs(events: list[dict]) -> list[int]:
    return [e["args"][0]["seq"] for e in events]


@defer.inlineCallbacks
def metric_reaches(port: int, name: str, value: float, timeout: float = 30.0) -> Any:
    """Fires once the node's ``/metrics`` shows ``name`` at ``value`` or more
    (asked every 50 ms); fails after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while True:
        values = yield threads.deferToThread(metrics, port)
        if m(values, name) >= value:
            return
        if reactor.seconds() > deadline:
            raise AssertionError(f"{name} did not reach {value} in {timeout} s")
        yield task.deferLater(reactor, 0.05, lambda: None)


def publish_seq(publisher: Any, start: int, n: int, topic: str = TOPIC, **kw: Any) -> Any:
    def run() -> None:
        for i in range(start, start + n):
            publisher.publish(topic, {"seq": i}, **kw)

    return threads.deferToThread(run)


@pytest.mark.parametrize("source", ["memory", "stream"])
@pytest_twisted.inlineCallbacks
def test_resume_on_the_other_node_after_an_abrupt_disconnect(spawn, publisher, stream, source):
    # the replay comes from the node's memory of the newest entries, or (with
    # none kept) from a stream consumer; either way the same events
    memory = [] if source == "memory" else ["--history-memory", "0"]
    a = yield spawn.notifyd(*history_args(stream))
    b = yield spawn.notifyd(*history_args(stream, *memory))
    client = yield spawn.js(a.url)
    r = yield client.subscribe("s", TOPIC)
    assert r["ev"] == "subscribed"
    yield publish_seq(publisher, 0, 10)
    yield client.wait_events("s", 10)
    before = client.events("s")
    assert seqs(before) == list(range(10))
    last = before[-1]["publication"]
    # ids are log positions: the same event has the same id on every node
    assert last < 2**51
    # network cut: the client process dies, its socket is simply gone
    client.transport.signalProcess("KILL")
    yield publish_seq(publisher, 10, 500)
    again = yield spawn.js(b.url)
    r = yield again.subscribe("s", TOPIC, options={"_resume_after": last})
    assert r["ev"] == "subscribed", r
    yield again.wait_events("s", 500)
    yield publish_seq(publisher, 510, 5)
    yield again.wait_events("s", 505)
    got = again.events("s")
    assert seqs(got) == list(range(10, 515))
    ids = [e["publication"] for e in got]
    assert ids == sorted(set(ids)) and ids[0] > last
    values = yield threads.deferToThread(metrics, b.port)
    assert m(values, "notifyd_events_replayed_total") == 500
    assert m(values, "notifyd_log_reads_total", source=source) >= 1
    other = "stream" if source == "memory" else "memory"
    assert m(values, "notifyd_log_reads_total", source=other) == 0
    assert m(values, "notifyd_history_ready") == 1
    assert m(values, "notifyd_history_position") >= ids[-1]


@pytest_twisted.inlineCallbacks
def test_a_message_published_again_with_its_message_id_is_logged_once(spawn, publisher, stream):
    """A publisher that lost a confirm sends the same message again (same
    message_id): the ingest step finds it in the log and does not write it
    twice (the digest read back from the stream must match the one computed;
    it once did not: text against bytes)."""
    node = yield spawn.notifyd(*history_args(stream))
    client = yield spawn.js(node.url)
    yield client.subscribe("s", TOPIC)
    yield publish_seq(publisher, 0, 1, message_id="inv-1042-paid")
    yield client.wait_events("s", 1)  # the log reader has read it
    yield publish_seq(publisher, 0, 1, message_id="inv-1042-paid")  # the same again
    yield publish_seq(publisher, 1, 1)
    yield client.wait_events("s", 2)
    assert seqs(client.events("s")) == [0, 1]
    values = yield threads.deferToThread(metrics, node.port)
    assert m(values, "notifyd_log_duplicates_skipped_total") == 1


@pytest_twisted.inlineCallbacks
def test_resume_after_sigkill_of_the_node(spawn, publisher, stream):
    a = yield spawn.notifyd(*history_args(stream))
    b = yield spawn.notifyd(*history_args(stream))
    client = yield spawn.js(a.url)
    yield client.subscribe("s", "invoice.", "prefix")
    yield publish_seq(publisher, 0, 20)
    yield client.wait_events("s", 20)
    last = client.events("s")[-1]["publication"]
    a.transport.signalProcess("KILL")
    yield client.wait_report(lambda r: r["ev"] == "close")
    yield publish_seq(publisher, 20, 200)
    again = yield spawn.js(b.url)
    r = yield again.subscribe("s", "invoice.", "prefix", options={"_resume_after": last})
    assert r["ev"] == "subscribed", r
    yield again.wait_events("s", 200)
    assert seqs(again.events("s")) == list(range(20, 220))


@pytest_twisted.inlineCallbacks
def test_resume_with_nothing_missed_and_then_live(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream))
    client = yield spawn.js(node.url)
    yield client.subscribe("s", TOPIC)
    yield publish_seq(publisher, 0, 3)
    yield client.wait_events("s", 3)
    last = client.events("s")[-1]["publication"]
    again = yield spawn.js(node.url)
    r = yield again.subscribe("s", TOPIC, options={"_resume_after": last})
    assert r["ev"] == "subscribed", r
    yield publish_seq(publisher, 3, 2)
    yield again.wait_events("s", 2)
    yield client.wait_events("s", 5)
    assert seqs(again.events("s")) == [3, 4]


@pytest_twisted.inlineCallbacks
def test_resume_errors_are_explicit(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream))
    client = yield spawn.js(node.url)
    # a position the log never had
    r = yield client.subscribe("far", TOPIC, options={"_resume_after": 2**40})
    assert r["ev"] == "error" and r["error"] == "notifyd.error.not_recovered", r
    assert r["kwargs"]["requested"] == 2**40
    # topics outside the log cannot be resumed
    r = yield client.subscribe("other", "client.created", options={"_resume_after": 1})
    assert r["ev"] == "error" and r["error"] == "notifyd.error.history_unavailable", r
    r = yield client.subscribe("bad", TOPIC, options={"_resume_after": "x"})
    assert r["ev"] == "error" and r["error"] == "wamp.error.invalid_argument", r


@pytest_twisted.inlineCallbacks
def test_resume_from_before_retention_is_not_recovered(spawn, publisher, stream):
    # tiny segments and a tiny size limit: RabbitMQ drops the oldest segments
    node = yield spawn.notifyd(
        *history_args(stream, "--history-segment-bytes", "2000", "--history-max-bytes", "4000")
    )
    client = yield spawn.js(node.url)
    yield client.subscribe("s", TOPIC)
    yield publish_seq(publisher, 0, 1)
    yield client.wait_events("s", 1)
    first = client.events("s")[0]["publication"]
    yield publish_seq(publisher, 1, 300, topic="invoice.paid")
    # retention is applied when a segment rolls over: wait until the log's
    # first entry is past the event
    got = None
    for _attempt in range(50):
        yield publish_seq(publisher, 0, 20, topic="invoice.paid")
        again = yield spawn.js(node.url)
        r = yield again.subscribe("s", TOPIC, options={"_resume_after": first - 1})
        yield again.exit()
        if r["ev"] == "error":
            got = r
            break
    assert got is not None, "retention never removed the first segment"
    assert got["error"] == "notifyd.error.not_recovered"
    assert got["kwargs"]["first"] > first


@pytest_twisted.inlineCallbacks
def test_get_events_and_meta_api_from_autobahn_js(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream, "--meta-api-roles", "anonymous"))
    client = yield spawn.js(node.url)
    r = yield client.subscribe("s", TOPIC)
    sub = r["id"]
    yield publish_seq(publisher, 0, 30)
    # published is not yet logged: once the last event is here, the node's
    # log holds all of them
    yield client.wait_events("s", 30)
    res = yield client.call("h", "wamp.subscription.get_events", sub, 10)
    assert res["ev"] == "result", res
    assert [e["args"][0]["seq"] for e in res["value"]] == list(range(20, 30))
    assert all(e["topic"] == TOPIC for e in res["value"])
    res = yield client.call("l", "wamp.subscription.lookup", TOPIC)
    assert res["value"] == sub
    res = yield client.call("m", "wamp.subscription.match", TOPIC)
    assert res["value"] == [sub]
    res = yield client.call("g", "wamp.subscription.get", sub)
    assert res["value"]["uri"] == TOPIC and res["value"]["match"] == "exact"
    res = yield client.call("ls", "wamp.subscription.list")
    assert res["value"]["exact"] == [sub]
    res = yield client.call("sub", "wamp.subscription.list_subscribers", sub)
    assert res["value"] == [client.session]
    res = yield client.call("cnt", "wamp.subscription.count_subscribers", sub)
    assert res["value"] == 1
    res = yield client.call("sc", "wamp.session.count")
    assert res["value"] == 1
    res = yield client.call("pos", "notifyd.history.position")
    assert res["value"] >= 30
    res = yield client.call("none", "wamp.subscription.get", 12345)
    assert res["ev"] == "error" and res["error"] == "wamp.error.no_such_subscription"
    res = yield client.call("nope", "com.example.add", 1, 2)
    assert res["error"] == "wamp.error.no_such_procedure"


@pytest_twisted.inlineCallbacks
def test_retained_events_from_amqp_header_and_from_publish(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream), "--allow-publish", "invoice.")
    publisher.publish("invoice.paid", {"seq": 1}, headers={"wamp-retain": True})
    publisher.publish("invoice.paid", {"seq": 2}, headers={"wamp-retain": True})
    publisher.publish("invoice.paid", {"seq": 3})  # not retained
    client = yield spawn.js(node.url)
    r = yield client.subscribe("s", "invoice.paid", options={"get_retained": True})
    assert r["ev"] == "subscribed", r
    yield client.wait_events("s", 1)
    ev = client.events("s")[0]
    assert ev["args"][0]["seq"] == 2 and ev["retained"] is True
    # a client PUBLISH with retain=true replaces it
    client.send(
        op="publish",
        tag="p",
        topic="invoice.paid",
        args=[{"seq": 4}],
        options={"retain": True, "acknowledge": True},
    )
    yield client.wait_report(lambda r: r.get("tag") == "p" and r["ev"] == "published")
    other = yield spawn.js(node.url)
    yield other.subscribe("s", "invoice.", "prefix", options={"get_retained": True})
    yield other.wait_events("s", 1)
    assert other.events("s")[0]["args"][0]["seq"] == 4
    # without get_retained nothing old is delivered
    third = yield spawn.js(node.url)
    yield third.subscribe("s", "invoice.paid")
    yield publish_seq(publisher, 5, 1, topic="invoice.paid")
    yield third.wait_events("s", 1)
    assert seqs(third.events("s")) == [5]


@pytest_twisted.inlineCallbacks
def test_history_honours_targeting(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream))
    alice = yield spawn.js(node.url)
    yield alice.subscribe("s", TOPIC)
    yield publish_seq(publisher, 0, 1)
    yield alice.wait_events("s", 1)
    last = alice.events("s")[0]["publication"]
    # one event only for alice's session, one for everybody (lists travel as
    # comma-separated strings: streams drop array headers, see docs/history.md)
    publisher.publish(TOPIC, {"seq": 1}, headers={"wamp-eligible": str(alice.session)})
    publisher.publish(TOPIC, {"seq": 2})
    yield alice.wait_events("s", 3)
    bob = yield spawn.js(node.url)
    r = yield bob.subscribe("s", TOPIC, options={"_resume_after": last})
    assert r["ev"] == "subscribed"
    yield bob.wait_events("s", 1)
    res = yield bob.call("h", "wamp.subscription.get_events", r["id"], 10)
    assert [e["args"][0]["seq"] for e in res["value"]] == [0, 2]
    res = yield alice.call("h", "wamp.subscription.get_events", r["id"], 10)
    assert [e["args"][0]["seq"] for e in res["value"]] == [0, 1, 2]
    # bob never saw seq 1, by replay or live
    yield publish_seq(publisher, 3, 1)
    yield bob.wait_events("s", 2)
    assert seqs(bob.events("s")) == [2, 3]


@pytest_twisted.inlineCallbacks
def test_position_endpoint_for_the_page_render_handshake(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream))
    yield publish_seq(publisher, 0, 5)

    def get() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{node.port}/position", timeout=10) as r:
            return json.load(r)

    # the page is rendered with this position; events after it are not lost
    position = (yield threads.deferToThread(get))["position"]
    yield publish_seq(publisher, 5, 3)
    client = yield spawn.js(node.url)
    r = yield client.subscribe("s", TOPIC, options={"_resume_after": position})
    assert r["ev"] == "subscribed", r
    yield client.wait_events("s", 3)
    # position may be taken before notifyd saw all of 0..4: then those come too
    assert seqs(client.events("s"))[-3:] == [5, 6, 7]


@pytest_twisted.inlineCallbacks
def test_notifyd_js_resumes_by_itself_on_the_other_node(spawn, publisher, stream):
    """notifyd.js on Node, given both nodes: a network cut, 500 events while
    it is away, then it reconnects to the other node and resumes."""
    a = yield spawn.notifyd(*history_args(stream))
    b = yield spawn.notifyd(*history_args(stream))
    client = spawn.track(Resilient(f"{a.url},{b.url}"))
    yield client.start(TOPIC, "invoice.:prefix")
    yield client.wait_report(lambda r: len(subscribed(client)) == 2)
    yield publish_seq(publisher, 0, 10)
    yield client.wait_report(lambda r: len(client.events()) >= 20)
    client.command("cut")
    yield client.wait_report(lambda r: r["ev"] == "state" and r["state"] == "reconnecting")
    yield publish_seq(publisher, 10, 500)
    client.command("go")
    yield client.wait_report(lambda r: len(subscribed(client)) == 4)
    yield publish_seq(publisher, 510, 5)
    yield client.wait_report(lambda r: len(client.events()) >= 2 * 515)
    again = subscribed(client)[2:]
    assert {r["topic"] for r in again} == {TOPIC, "invoice."}
    assert all(r["resumed"] for r in again), again
    by_sub: dict[str, list[int]] = {}
    for e in client.events():
        by_sub.setdefault(e["sub"], []).append(e["args"][0]["seq"])
    assert by_sub == {TOPIC: list(range(515)), "invoice.": list(range(515))}
    assert not [r for r in client.reports if r["ev"] == "gap"]


def subscribed(client: Any) -> list[dict]:
    return [r for r in client.reports if r["ev"] == "subscribed"]


class _PySession(ApplicationSession):
    def __init__(self, config: ComponentConfig, joined: Deferred) -> None:
        super().__init__(config)
        self._joined = joined

    def onJoin(self, details: Any) -> None:
        self._joined.callback(self)


@pytest_twisted.inlineCallbacks
def test_autobahn_python_retained_get_events_and_meta(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream))
    publisher.publish("invoice.paid", {"seq": 1}, headers={"wamp-retain": True})
    yield publish_seq(publisher, 2, 5, topic="invoice.paid")
    # the retained event must be in the node's table before the SUBSCRIBE,
    # or it arrives live (unflagged) instead of as the retained one
    yield metric_reaches(node.port, "notifyd_retained_topics", 1)
    joined: Deferred = Deferred()
    factory = WampWebSocketClientFactory(
        lambda: _PySession(ComponentConfig("realm1"), joined), url=node.url
    )
    yield TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory)
    session = yield with_timeout(joined)
    got: list = []
    retained: Deferred = Deferred()
    barrier: Deferred = Deferred()

    def handler(value: Any, details: Any = None) -> None:
        got.append((value["seq"], details.retained))
        if not retained.called:
            retained.callback(None)
        if value["seq"] == 7:
            barrier.callback(None)

    sub = yield session.subscribe(
        handler,
        "invoice.",
        options=SubscribeOptions(match="prefix", get_retained=True, details=True),
    )
    yield with_timeout(retained)
    assert got == [(1, True)]
    # a publisher's confirm means "in the ingest queue"; once a later event
    # arrives live, everything before it is in the log
    yield publish_seq(publisher, 7, 1, topic="invoice.paid")
    yield with_timeout(barrier)
    events = yield session.call("wamp.subscription.get_events", sub.id, 4)
    assert [e["args"][0]["seq"] for e in events] == [4, 5, 6, 7]
    assert (yield session.call("wamp.subscription.count_subscribers", sub.id)) == 1
    assert (yield session.call("wamp.subscription.match", "invoice.paid")) == [sub.id]
    info = yield session.call("wamp.subscription.get", sub.id)
    assert info["uri"] == "invoice." and info["match"] == "prefix"
    # without meta_api_roles, other sessions stay hidden
    with pytest.raises(ApplicationError) as e:
        yield session.call("wamp.session.count")
    assert e.value.error == "wamp.error.not_authorized"
    with pytest.raises(ApplicationError):
        yield session.call("wamp.subscription.list_subscribers", sub.id)
    session.leave()


@pytest_twisted.inlineCallbacks
def test_notifyd_js_resumes_a_subscription_that_had_no_event_yet(spawn, publisher, stream):
    node = yield spawn.notifyd(*history_args(stream))
    client = spawn.track(Resilient(node.url))
    yield client.start(TOPIC)
    yield client.wait_report(lambda r: len(subscribed(client)) == 1)
    client.command("cut")
    yield client.wait_report(lambda r: r["ev"] == "state" and r["state"] == "reconnecting")
    yield publish_seq(publisher, 0, 20)
    client.command("go")
    yield client.wait_report(lambda r: len(client.events()) >= 20 and len(subscribed(client)) == 2)
    assert [e["args"][0]["seq"] for e in client.events()] == list(range(20))
    assert subscribed(client)[1]["resumed"]
