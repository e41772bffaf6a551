"""Security against the real service: Autobahn|JS authenticates with a JWT
ticket and with WAMP-CRA; bad credentials get their errors; a disallowed
Origin is refused at the handshake; TLS works with a self-signed certificate
made here."""

from __future__ import annotations

import pytest
import pytest_twisted
from autobahn.twisted.wamp import ApplicationSession
from autobahn.twisted.websocket import WampWebSocketClientFactory, WebSocketClientFactory
from autobahn.wamp.types import ComponentConfig
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.ssl import Certificate, optionsForClientTLS

from tests.harness import RawWampPeer, with_timeout
from tests.keys import SECRET, self_signed, token

AUTHZ = """
[roles.user]
subscribe = [{ uri = "acct.{authextra.account}.", match = "prefix" }]
publish = [{ uri = "acct.{authextra.account}.chat", match = "exact" }]

[roles.backend]
subscribe = [{ uri = "", match = "prefix" }]

[wampcra.users.billing]
secret = "billing-service-secret"
role = "backend"

[wampcra.users.reports]
secret = "reports-secret"
role = "backend"
salt = "salty"
iterations = 100
keylen = 32
"""


@pytest.fixture
def secured(spawn, tmp_path):
    (tmp_path / "authz.toml").write_text(AUTHZ)
    (tmp_path / "secret").write_bytes(SECRET)

    def start(*extra):
        return spawn.notifyd(
            "--authz-file",
            str(tmp_path / "authz.toml"),
            "--jwt-secret-file",
            str(tmp_path / "secret"),
            "--jwt-algorithm",
            "HS256",
            "--jwt-audience",
            "notifyd",
            *extra,
            anonymous=False,
        )

    return start


@pytest_twisted.inlineCallbacks
def test_autobahn_js_ticket_and_wampcra(spawn, secured, publisher):
    node = yield secured()
    alice = yield spawn.js(
        node.url,
        "json",
        auth={"authmethods": ["ticket"], "ticket": token(sub="alice", account="42", aud="notifyd")},
    )
    assert (alice.authid, alice.authrole) == ("alice", "user")
    assert alice.reports[0]["authextra"] == {"account": "42"}
    billing = yield spawn.js(
        node.url,
        "msgpack",
        auth={"authmethods": ["wampcra"], "authid": "billing", "secret": "billing-service-secret"},
    )
    assert (billing.authid, billing.authrole) == ("billing", "backend")
    reports = yield spawn.js(
        node.url,
        "cbor",
        auth={"authmethods": ["wampcra"], "authid": "reports", "secret": "reports-secret"},
    )
    assert reports.authid == "reports"

    assert (yield alice.subscribe("mine", "acct.42.", "prefix"))["ev"] == "subscribed"
    denied = yield alice.subscribe("theirs", "acct.43.", "prefix")
    assert denied["ev"] == "error" and denied["error"] == "wamp.error.not_authorized"
    denied = yield alice.subscribe("all", "acct.", "prefix")  # would include other accounts
    assert denied["error"] == "wamp.error.not_authorized"
    assert (yield billing.subscribe("all", "", "prefix"))["ev"] == "subscribed"

    publisher.publish("acct.43.invoice.sent", {"n": 1})
    publisher.publish("acct.42.invoice.sent", {"n": 2})
    # targeted at another account: alice must not get it
    publisher.publish(
        "acct.42.invoice.paid", {"n": 3}, headers={"wamp-eligible-extra-account": "43"}
    )
    publisher.publish("acct.42.invoice.paid", {"n": 4}, headers={"wamp-eligible-authid": "alice"})
    publisher.publish("acct.1.done", {"n": 5})
    yield alice.wait_events("mine", 2)
    yield billing.wait_events("all", 3)
    assert [e["args"][0]["n"] for e in alice.events("mine")] == [2, 4]
    # the targeted events were not for billing (no account, not alice)
    assert [e["args"][0]["n"] for e in billing.events("all")] == [1, 2, 5]

    # publishing follows the role's rules
    alice.send(
        op="publish", tag="p1", topic="acct.42.chat", args=["hi"], options={"acknowledge": True}
    )
    alice.send(
        op="publish", tag="p2", topic="acct.43.chat", args=["hi"], options={"acknowledge": True}
    )
    r1 = yield alice.wait_report(lambda r: r.get("tag") == "p1")
    r2 = yield alice.wait_report(lambda r: r.get("tag") == "p2")
    assert r1["ev"] == "published" and r2["error"] == "wamp.error.not_authorized"


@pytest.mark.parametrize(
    "auth, error",
    [
        ({"authmethods": ["ticket"], "ticket": "expired"}, "wamp.error.authentication_failed"),
        (
            {"authmethods": ["ticket"], "ticket": "wrong-audience"},
            "wamp.error.authentication_failed",
        ),
        ({"authmethods": ["ticket"], "ticket": "garbage"}, "wamp.error.authentication_failed"),
        (
            # an unknown user is answered exactly like a wrong secret
            {"authmethods": ["wampcra"], "authid": "nobody", "secret": "x"},
            "wamp.error.authentication_failed",
        ),
        (
            {"authmethods": ["wampcra"], "authid": "billing", "secret": "wrong"},
            "wamp.error.authentication_failed",
        ),
        ({"authmethods": ["anonymous"]}, "wamp.error.not_authorized"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_rejections_from_autobahn_js(spawn, secured, auth, error):
    node = yield secured()
    tickets = {
        "expired": token(ttl=-3600, aud="notifyd"),
        "wrong-audience": token(aud="someone-else"),
        "garbage": "abc.def.ghi",
    }
    if "ticket" in auth:
        auth = {**auth, "ticket": tickets[auth["ticket"]]}
    # the secured node runs without --allow-anonymous
    client = yield spawn.js(node.url, auth=auth, expect_open=False)
    close = yield client.wait_report(lambda r: r["ev"] == "close")
    assert close["details"]["reason"] == error, close
    if error != "wamp.error.not_authorized":
        # the failure is logged: check that line (and every other) has no secret
        yield node.wait_count(r"authentication \((ticket|wampcra)\) failed", 1)
    assert node.count("s3cret") == 0
    for secret in ("billing-service-secret", tickets["expired"]):
        assert node.count(secret) == 0


@pytest_twisted.inlineCallbacks
def test_disallowed_origin_is_refused_at_the_handshake(spawn):
    node = yield spawn.notifyd("--allowed-origins", "https://app.example.com")

    @pytest_twisted.inlineCallbacks
    def handshake(origin):
        factory = WebSocketClientFactory(node.url, protocols=["wamp.2.json"], origin=origin)
        factory.protocol = RawWampPeer
        proto = yield TCP4ClientEndpoint(reactor, "127.0.0.1", node.port).connect(factory)
        try:
            yield with_timeout(proto.opened)
            return True
        except ConnectionError:
            return False

    assert (yield handshake("https://app.example.com")) is True
    assert (yield handshake("https://evil.example.net")) is False
    yield node.wait_count("origin https://evil.example.net not allowed", 1)
    assert node.count("origin https://evil.example.net not allowed") == 1

    # the default: only the page's own origin
    default = yield spawn.notifyd()
    factory_ok = f"http://127.0.0.1:{default.port}"
    node = default
    assert (yield handshake(factory_ok)) is True
    assert (yield handshake("http://127.0.0.1:1")) is False
    assert (yield handshake("null")) is False


class _Joined(ApplicationSession):
    def __init__(self, config, joined):
        super().__init__(config)
        self._joined = joined

    def onJoin(self, details):
        self._joined.callback(details)


@pytest_twisted.inlineCallbacks
def test_tls_with_a_self_signed_certificate(spawn, tmp_path):
    cert, key = self_signed(tmp_path)
    node = yield spawn.notifyd(
        "--listen", f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    tls_port = int(
        (yield node.wait_line(r"notifyd listening on 127\.0\.0\.1:(\d+) \(ssl:")).group(1)
    )
    joined: Deferred = Deferred()
    factory = WampWebSocketClientFactory(
        lambda: _Joined(ComponentConfig("realm1"), joined), url=f"wss://localhost:{tls_port}/ws"
    )
    trust = Certificate.loadPEM(cert.read_bytes())
    endpoint = SSL4ClientEndpoint(
        reactor, "127.0.0.1", tls_port, optionsForClientTLS("localhost", trust)
    )
    proto = yield endpoint.connect(factory)
    details = yield with_timeout(joined)
    assert details.realm == "realm1" and details.authmethod == "anonymous"
    assert proto.transport.getPeerCertificate() is not None
    proto._session.leave()
    # an untrusting client fails the TLS handshake
    failed: Deferred = Deferred()
    factory2 = WampWebSocketClientFactory(
        lambda: _Joined(ComponentConfig("realm1"), failed), url=f"wss://localhost:{tls_port}/ws"
    )
    endpoint2 = SSL4ClientEndpoint(reactor, "127.0.0.1", tls_port, optionsForClientTLS("localhost"))
    proto2 = yield endpoint2.connect(factory2)
    lost: Deferred = Deferred()
    proto2.onClose = lambda *a: lost.callback(a)
    yield with_timeout(lost)
    assert not failed.called
