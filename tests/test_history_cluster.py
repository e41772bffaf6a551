"""A 3-node RabbitMQ cluster on loopback: notifyd, given all three AMQP URLs,
fails over when the node it uses stops; the replicated event log survives;
a connected client misses nothing, and a client that resumes after the
failover misses nothing either."""

from __future__ import annotations

import pika
import pytest
import pytest_twisted
from twisted.internet import threads

from devtools.devbroker import Cluster
from tests.cluster import rabbit_cluster  # noqa: F401
from tests.harness import Notifyd, unique
from tests.test_history import history_args

pytestmark = pytest.mark.integration

TOPIC = "invoice.sent"


class ClusterPublisher:
    """Publishes with confirms to one node; retries while the cluster
    re-elects the stream leader (a publish is only done when confirmed)."""

    def __init__(self, url: str, exchange: str) -> None:
        self.url = url
        self.exchange = exchange
        self._connect()
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)

    def _connect(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.conn.channel()
        self.channel.confirm_delivery()

    def publish_seq(self, start: int, n: int) -> None:
        import json
        import time

        for i in range(start, start + n):
            deadline = time.monotonic() + 60
            while True:
                try:
                    self.channel.basic_publish(
                        self.exchange,
                        TOPIC,
                        json.dumps({"seq": i}).encode(),
                        pika.BasicProperties(content_type="application/json"),
                        mandatory=True,
                    )
                    break
                except (pika.exceptions.AMQPError, pika.exceptions.NackError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)  # retry pacing while the leader moves, not an assertion
                    if not self.conn.is_open or not self.channel.is_open:
                        self._connect()

    def cleanup(self, queues: list[str]) -> None:
        if not self.conn.is_open:
            self._connect()
        for q in queues:
            self.channel.queue_delete(q)
        self.channel.exchange_delete(self.exchange)
        self.conn.close()


def seqs(events: list[dict]) -> list[int]:
    return [e["args"][0]["seq"] for e in events]


@pytest_twisted.inlineCallbacks
def test_notifyd_fails_over_and_clients_miss_nothing(rabbit_cluster: Cluster, spawn):  # noqa: F811
    urls = rabbit_cluster.urls()
    exchange, stream = unique("events"), unique("history")
    publisher = yield threads.deferToThread(ClusterPublisher, urls[2], exchange)
    node = spawn.track(
        Notifyd(
            urls[0],
            exchange,
            "--amqp-url",
            urls[1],
            "--amqp-url",
            urls[2],
            *history_args(
                stream,
                "--history-replicas",
                "3",
                # a classic ingest queue lives on one node: in a cluster, quorum
                "--history-ingest-queue-type",
                "quorum",
                "--amqp-max-retry-delay",
                "1",
            ),
        )
    )
    try:
        yield node.start()
        ports = [pika.URLParameters(u).port for u in urls]
        assert node.count(rf"notifyd ready on 127\.0\.0\.1:{ports[0]}\b")
        live = yield spawn.js(node.url)
        yield live.subscribe("s", TOPIC)
        leaver = yield spawn.js(node.url)
        yield leaver.subscribe("s", TOPIC)
        yield threads.deferToThread(publisher.publish_seq, 0, 50)
        yield leaver.wait_events("s", 50)
        last = leaver.events("s")[-1]["publication"]
        leaver.transport.signalProcess("KILL")  # a network cut

        # the node notifyd is connected to (and the stream's leader) stops
        yield threads.deferToThread(rabbit_cluster.stop_node, 0)
        yield node.wait_line(r"lost the RabbitMQ connection|RabbitMQ closed the")
        yield threads.deferToThread(publisher.publish_seq, 50, 100)
        yield node.wait_count(r"notifyd ready on", 2, timeout=120)
        assert node.count(rf"notifyd ready on 127\.0\.0\.1:({ports[1]}|{ports[2]})\b")

        yield live.wait_events("s", 150, timeout=120)
        assert seqs(live.events("s")) == list(range(150)), "the connected client missed events"

        back = yield spawn.js(node.url)
        r = yield back.subscribe("s", TOPIC, options={"_resume_after": last})
        assert r["ev"] == "subscribed", r
        yield threads.deferToThread(publisher.publish_seq, 150, 10)
        yield back.wait_events("s", 110)
        yield live.wait_events("s", 160)
        assert seqs(back.events("s")) == list(range(50, 160))
        assert seqs(live.events("s")) == list(range(160))
        # the stream is replicated: it still holds the first events, written
        # while node 0 led it
        res = yield back.call("h", "wamp.subscription.get_events", r["id"], 1000)
        assert seqs(res["value"]) == list(range(160))
    finally:
        yield threads.deferToThread(rabbit_cluster.start_node, 0)
        yield threads.deferToThread(publisher.cleanup, [stream, stream + ".retained"])
