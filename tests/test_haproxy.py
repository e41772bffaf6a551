"""Two notifyd nodes behind Debian's haproxy, with deploy/haproxy.cfg: clients
spread over both; one node is stopped gracefully; its clients (notifyd.js on
Node) reconnect through haproxy to the other and receive the next events."""

from __future__ import annotations

import os
import re
import shutil
import urllib.request

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import DeferredList
from twisted.internet.threads import deferToThread

from tests.harness import ROOT, LineProcess, Resilient
from tests.sync_notifyd import free_port

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def sessions_on(port: int) -> int:
    # the public /readyz says only whether the node is ready; /metrics counts
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        families = text_string_to_metric_families(r.read().decode())
        return int(
            sum(s.value for f in families if f.name == "notifyd_sessions" for s in f.samples)
        )


@pytest_twisted.inlineCallbacks
def test_clients_move_to_the_other_node_through_haproxy(spawn, publisher, tmp_path):
    if not os.path.exists(HAPROXY):
        pytest.fail(
            "Debian haproxy is not installed (apt-get install haproxy); make test installs it"
        )
    node1 = yield spawn.notifyd()
    node2 = yield spawn.notifyd()
    front = free_port()
    cfg = (ROOT / "deploy" / "haproxy.cfg").read_text()
    cfg = cfg.replace("bind 127.0.0.1:8080", f"bind 127.0.0.1:{front}")
    cfg = cfg.replace("127.0.0.1:8081", f"127.0.0.1:{node1.port}").replace(
        "127.0.0.1:8082", f"127.0.0.1:{node2.port}"
    )
    cfg = re.sub(r"inter 2s", "inter 500ms", cfg)
    cfg = re.sub(r"maxconn \d+", "maxconn 4000", cfg)  # this machine's FD limit
    (tmp_path / "haproxy.cfg").write_text(cfg)
    proxy = LineProcess("haproxy")
    reactor.spawnProcess(
        proxy, HAPROXY, [HAPROXY, "-db", "-f", str(tmp_path / "haproxy.cfg")], env=dict(os.environ)
    )
    try:
        clients = []
        for _ in range(4):
            c = Resilient(f"ws://127.0.0.1:{front}/ws")
            yield c.start("invoice.:prefix")
            clients.append(c)
        for c in clients:
            yield c.wait_report(lambda r: r["ev"] == "subscribed")
        on1 = yield deferToThread(sessions_on, node1.port)
        on2 = yield deferToThread(sessions_on, node2.port)
        assert (on1, on2) == (2, 2)  # leastconn spread them

        publisher.publish("invoice.sent", {"seq": 1})
        for c in clients:
            yield c.wait_report(lambda r, c=c: len(c.events()) >= 1)

        yield node1.signal("TERM")  # graceful: GOODBYE system_shutdown

        def resubscribed(c):
            return (
                len(c.sessions()) >= 2 and sum(1 for x in c.reports if x["ev"] == "subscribed") >= 2
            )

        # node1's two clients are live again (on node2) and re-subscribed
        waits = [c._w.wait(lambda: sum(map(resubscribed, clients)) == 2, 60) for c in clients]
        yield DeferredList(waits, fireOnOneCallback=True, fireOnOneErrback=True, consumeErrors=True)
        for d in waits:
            d.cancel()
        moved = [c for c in clients if resubscribed(c)]
        assert len(moved) == 2
        for c in moved:
            assert any(r.get("wampReason") == "wamp.close.system_shutdown" for r in c.reports)
        assert (yield deferToThread(sessions_on, node2.port)) == 4

        publisher.publish("invoice.paid", {"seq": 2})
        for c in clients:
            yield c.wait_report(lambda r, c=c: len(c.events()) >= 2, timeout=30)
            assert [e["args"][0]["seq"] for e in c.events()] == [1, 2]
    finally:
        for c in clients:
            if not c.ended.called:
                c.transport.signalProcess("KILL")
        if not proxy.ended.called:
            proxy.transport.signalProcess("TERM")
            yield proxy.ended
