"""The 3-node RabbitMQ cluster on loopback, for tests that need one.

Tests import the fixture explicitly (it is not in conftest.py, so the rest of
the suite never starts three Erlang VMs)::

    from tests.cluster import rabbit_cluster  # noqa: F401

The cluster lives in ``.rabbitmq/test-cluster``; node *i* listens for AMQP on
26760 + 10*i (``NOTIFYD_TEST_CLUSTER_PORT`` overrides 26760).  A cluster that
is already running is reused and left running; one started here is stopped
at the end of the session.  By hand (same nodes, default names)::

    NOTIFYD_DEV_CLUSTER_DIR=.rabbitmq/test-cluster NOTIFYD_DEV_CLUSTER_PORT=26760 \
        python3 -m devtools.devbroker cluster start
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devbroker import Cluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[Cluster]:
    """A running 3-node cluster (started if needed, stopped if started here)."""
    cluster = Cluster(
        base=ROOT / ".rabbitmq" / "test-cluster",
        first_port=int(os.environ.get("NOTIFYD_TEST_CLUSTER_PORT", "26760")),
    )
    started = [i for i, node in enumerate(cluster.nodes) if node.server_pid() is None]
    try:
        cluster.start()
        yield cluster
    finally:
        if len(started) == cluster.size:
            cluster.stop()
        else:
            for i in started:
                cluster.stop_node(i)
