"""The 3-node dev cluster: a replicated stream survives the loss of the node
it was declared on (its leader), and the stopped node rejoins."""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest

from devtools.devbroker import Cluster
from tests.cluster import rabbit_cluster  # noqa: F401

pytestmark = pytest.mark.integration

COUNT = 10


def connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.URLParameters(url + "?connection_attempts=5&retry_delay=1&socket_timeout=10")
    )


def consume_all(channel, queue: str, count: int, timeout: float = 30) -> list[bytes]:
    """Read up to ``count`` messages of a stream from its first offset."""
    channel.basic_qos(prefetch_count=count)  # a stream refuses consumers without one
    bodies: list[bytes] = []
    deadline = time.monotonic() + timeout
    for method, _props, body in channel.consume(
        queue,
        auto_ack=False,
        arguments={"x-stream-offset": "first"},
        inactivity_timeout=1,
    ):
        if method is None:  # nothing for a second
            if time.monotonic() > deadline:
                break
            continue
        bodies.append(body)
        channel.basic_ack(method.delivery_tag)
        if len(bodies) == count:
            break
    channel.cancel()
    return bodies


def queue_info(cluster: Cluster, i: int, queue: str) -> dict:
    out = cluster.ctl(
        i, "list_queues", "-q", "--formatter", "json", "name", "type", "leader", "members"
    )
    return next(q for q in json.loads(out) if q["name"] == queue)


def test_stream_survives_losing_its_leader_node(rabbit_cluster: Cluster) -> None:  # noqa: F811
    cluster = rabbit_cluster
    first = cluster.nodenames[0]
    urls = cluster.urls()
    queue = f"stream-{uuid.uuid4().hex[:10]}"
    sent = [f"message {n}".encode() for n in range(COUNT)]
    assert cluster.running_nodes(0) == set(cluster.nodenames)

    try:
        conn = connect(urls[0])
        try:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare(
                queue,
                durable=True,
                arguments={"x-queue-type": "stream", "x-initial-cluster-size": 3},
            )
            for body in sent:  # each confirmed once on a majority of the members
                ch.basic_publish("", queue, body, mandatory=True)
        finally:
            conn.close()
        info = queue_info(cluster, 0, queue)
        assert info["type"] == "stream"
        assert sorted(info["members"]) == sorted(cluster.nodenames)
        assert info["leader"] == first  # declared on node 0, so led from there

        cluster.stop_node(0)
        try:
            assert cluster.running_nodes(1) == set(cluster.nodenames[1:])
            conn = connect(urls[1])
            try:
                received = consume_all(conn.channel(), queue, COUNT)
            finally:
                conn.close()
            assert received == sent
        finally:
            cluster.start_node(0)

        for i in range(cluster.size):
            assert cluster.running_nodes(i) == set(cluster.nodenames)
        assert first in cluster.status(0)["disk_nodes"]
    finally:
        conn = connect(urls[1])
        try:
            conn.channel().queue_delete(queue)
        finally:
            conn.close()
        assert all(
            q["name"] != queue
            for q in json.loads(cluster.ctl(1, "list_queues", "-q", "--formatter", "json", "name"))
        )
