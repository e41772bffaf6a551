"""Fixtures shared by the tests: the private RabbitMQ node and helpers."""

from __future__ import annotations

import os
from typing import Any

import pytest

from devtools.devbroker import Node
from tests.harness import AmqpPublisher, JsClient, Notifyd, unique

os.environ.setdefault(
    "NOTIFYD_DEV_DIR", os.path.join(os.path.dirname(__file__), "..", ".rabbitmq", "test")
)
os.environ.setdefault("NOTIFYD_DEV_AMQP_PORT", "26730")
os.environ.setdefault("NOTIFYD_DEV_NODENAME", "notifyd-test")


#: fixtures that need RabbitMQ, Node or a browser: tests using them are
#: end-to-end (marker ``e2e``); ``make unit`` runs the others
E2E_FIXTURES = {"rabbit", "spawn", "publisher", "system", "stream", "cluster"}
#: test modules that run real processes without those fixtures
E2E_MODULES = {
    "test_notifyd_js",
    "test_browser",
    "test_conformance",
    "test_haproxy",
    "test_devbroker_cluster",
}


def pytest_configure(config: Any) -> None:
    config.addinivalue_line("markers", "e2e: needs RabbitMQ, Node or a browser (make test)")


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if E2E_FIXTURES & set(getattr(item, "fixturenames", ())) or module in E2E_MODULES:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def rabbit() -> Any:
    """The test suite's private RabbitMQ node (started if it is not running)."""
    node = Node.from_environ()
    was_running = node.server_pid() is not None
    node.start()
    yield node
    if not was_running:  # started here (pytest run by hand): leave nothing behind
        node.stop()


@pytest.fixture
def exchange() -> str:
    """A fresh exchange per test, so tests never see each other's events."""
    return unique("events")


@pytest.fixture
def publisher(rabbit: Node, exchange: str) -> Any:
    p = AmqpPublisher(rabbit.url, exchange)
    yield p
    if p.conn.is_open:
        p.channel.exchange_delete(exchange)
    p.close()


@pytest.fixture
def spawn(rabbit: Node, exchange: str) -> Any:
    """Start notifyd nodes and JS clients; everything is stopped afterwards."""
    started: list[Any] = []

    class Spawner:
        def notifyd(
            self,
            *extra: str,
            env: dict | None = None,
            exchange_name: str | None = None,
            anonymous: bool = True,
        ):
            n = Notifyd(rabbit.url, exchange_name or exchange, *extra, env=env)
            if not anonymous:
                n.args.remove("--allow-anonymous")
            started.append(n)
            return n.start()

        def js(
            self,
            url: str,
            serializer: str = "json",
            realm: str = "realm1",
            auth=None,
            expect_open: bool = True,
        ):
            c = JsClient(url, serializer, realm, auth)
            started.append(c)
            return c.start(expect_open)

        def track(self, proc: Any) -> Any:
            """Stop ``proc`` (a process protocol) after the test too."""
            started.append(proc)
            return proc

    yield Spawner()
    for proc in reversed(started):
        if not proc.ended.called:
            try:
                proc.transport.signalProcess("KILL")
            except Exception:
                pass
