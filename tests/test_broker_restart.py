"""RabbitMQ stopped and restarted under connected clients: sessions stay up,
subscriptions survive, and events published after the restart arrive without
any client action."""

from __future__ import annotations

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.harness import AmqpPublisher


@pytest_twisted.inlineCallbacks
def test_clients_survive_rabbitmq_restart(spawn, rabbit, exchange):
    node = yield spawn.notifyd("--amqp-max-retry-delay", "1", "--allow-publish", "chat.")
    c1 = yield spawn.js(node.url, "json")
    c2 = yield spawn.js(node.url, "msgpack")
    yield c1.subscribe("inv", "invoice.", "prefix")
    yield c2.subscribe("sent", "invoice.sent")
    p = AmqpPublisher(rabbit.url, exchange)
    p.publish("invoice.sent", {"seq": 1})
    p.close()
    yield c1.wait_events("inv", 1)
    yield c2.wait_events("sent", 1)

    mark = len(node.lines)
    yield deferToThread(rabbit.stop)
    yield node.wait_line(r"lost the RabbitMQ connection", start=mark)

    # while RabbitMQ is down: sessions stay open; a new SUBSCRIBE waits for its
    # binding; an acknowledged PUBLISH fails with a specific error
    c2.send(op="subscribe", tag="late", topic="client.created")
    c1.send(op="publish", tag="p", topic="chat.x", args=[1], options={"acknowledge": True})
    r = yield c1.wait_report(lambda r: r.get("tag") == "p")
    assert r["ev"] == "error" and r["error"] == "notifyd.error.publish_unavailable", r
    assert not [r for r in c2.reports if r.get("tag") == "late"]

    yield deferToThread(rabbit.start)
    yield node.wait_line(r"notifyd ready", start=mark, timeout=60)
    r = yield c2.wait_report(lambda r: r.get("tag") == "late")
    assert r["ev"] == "subscribed"

    p = AmqpPublisher(rabbit.url, exchange)
    p.publish("invoice.sent", {"seq": 2})
    p.publish("client.created", {"seq": 3})
    p.close()
    yield c1.wait_events("inv", 2)
    yield c2.wait_events("sent", 2)
    yield c2.wait_events("late", 1)
    assert [e["args"][0]["seq"] for e in c1.events("inv")] == [1, 2]
    assert [e["args"][0]["seq"] for e in c2.events("sent")] == [1, 2]
    assert not [r for r in c1.reports + c2.reports if r["ev"] == "close"]
    assert c1.session == c1.reports[0]["session"]
