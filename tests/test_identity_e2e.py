"""Identity, revocation and rate limits against a real notifyd with real
clients (Autobahn|JS on Node, and a raw WebSocket peer where the exact bytes
matter): a meta role kills another user's sessions, a SUBSCRIBE over the
limit is refused, WAMP-CRA does not tell unknown users from wrong secrets,
and identities the targeting syntax cannot name are refused."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
import pytest_twisted
from twisted.internet.defer import inlineCallbacks

from tests.harness import raw_peer
from tests.keys import SECRET, token

AUTHZ = """
[roles.user]
subscribe = [{ uri = "acct.{authextra.account}.", match = "prefix" }]

[roles.backend]
subscribe = [{ uri = "", match = "prefix" }]

[wampcra.users.billing]
secret = "billing-service-secret"
role = "backend"
salt = "salty"
iterations = 100
keylen = 32
"""

BILLING = {"authmethods": ["wampcra"], "authid": "billing", "secret": "billing-service-secret"}


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
            "--meta-api-roles",
            "backend",
            *extra,
            anonymous=False,
        )

    return start


def ticket(sub="alice", **claims):
    return {"authmethods": ["ticket"], "ticket": token(sub=sub, account="42", **claims)}


@pytest_twisted.inlineCallbacks
def test_meta_role_kills_another_users_sessions(spawn, secured):
    node = yield secured()
    alice = yield spawn.js(node.url, "json", auth=ticket())
    alice2 = yield spawn.js(node.url, "msgpack", auth=ticket())
    bob = yield spawn.js(node.url, "json", auth=ticket("bob"))
    billing = yield spawn.js(node.url, "cbor", auth=BILLING)
    assert (yield alice.subscribe("s", "acct.42.", "prefix"))["ev"] == "subscribed"

    # an ordinary user may not
    denied = yield bob.call("k0", "wamp.session.kill_by_authid", "alice")
    assert denied["error"] == "wamp.error.not_authorized"

    res = yield billing.call(
        "k1", "wamp.session.kill_by_authid", "alice", message="removed from account"
    )
    assert res["ev"] == "result" and sorted(res["value"]) == sorted([alice.session, alice2.session])
    for client in (alice, alice2):
        close = yield client.wait_report(lambda r: r["ev"] == "close")
        assert close["details"]["reason"] == "wamp.close.killed", close
        assert close["details"]["message"] == "removed from account"
    yield node.wait_count("killing session", 2)

    # by session id: null; one's own session or an unknown one: no_such_session
    res = yield billing.call("k2", "wamp.session.kill", bob.session)
    assert res["ev"] == "result" and res["value"] is None
    close = yield bob.wait_report(lambda r: r["ev"] == "close")
    assert close["details"]["reason"] == "wamp.close.killed"
    own = yield billing.call("k3", "wamp.session.kill", billing.session)
    assert own["error"] == "wamp.error.no_such_session"
    gone = yield billing.call("k4", "wamp.session.kill", bob.session)
    assert gone["error"] == "wamp.error.no_such_session"
    # the caller is never killed by kill_by_authrole
    res = yield billing.call("k5", "wamp.session.kill_by_authrole", "backend")
    assert res["value"] == []
    assert not [r for r in billing.reports if r["ev"] == "close"]


@pytest_twisted.inlineCallbacks
def test_subscribe_over_the_rate_limit_is_refused(spawn):
    node = yield spawn.notifyd("--subscribe-rate", "0.001", "--subscribe-burst", "3")
    client = yield spawn.js(node.url, "json")
    answers = []
    for i in range(5):
        answers.append((yield client.subscribe(f"s{i}", f"t.{i}")))
    assert [a["ev"] for a in answers] == ["subscribed"] * 3 + ["error"] * 2
    assert answers[-1]["error"] == "notifyd.error.rate_limited"
    # the session is still open and other requests go on
    res = yield client.call("c", "wamp.subscription.lookup", "t.0")
    assert res["ev"] == "result" and res["value"] == answers[0]["id"]


@inlineCallbacks
def _cra(port, authid, secret):
    """HELLO wampcra as ``authid``, answer with ``secret``: the CHALLENGE
    and the ABORT/WELCOME, as the raw JSON messages."""
    peer = yield raw_peer(port)
    peer.sendMessage(
        json.dumps(
            [
                1,
                "realm1",
                {"roles": {"subscriber": {}}, "authmethods": ["wampcra"], "authid": authid},
            ]
        ).encode()
    )
    challenge = yield peer.wait_message(lambda m: m[0] in (3, 4))
    assert challenge[0] == 4, challenge
    extra = challenge[2]
    key = secret.encode()
    if "salt" in extra:
        key = base64.b64encode(
            hashlib.pbkdf2_hmac(
                "sha256", key, extra["salt"].encode(), extra["iterations"], extra["keylen"]
            )
        )
    sig = base64.b64encode(hmac.new(key, extra["challenge"].encode(), hashlib.sha256).digest())
    peer.sendMessage(json.dumps([5, sig.decode(), {}]).encode())
    end = yield peer.wait_message(lambda m: m[0] in (2, 3))
    return challenge, end


@pytest_twisted.inlineCallbacks
def test_wampcra_unknown_user_looks_like_a_wrong_secret(spawn, secured):
    node = yield secured()
    ch_wrong, end_wrong = yield _cra(node.port, "billing", "not-the-secret")
    ch_unknown, end_unknown = yield _cra(node.port, "nobody", "not-the-secret")
    ch_again, _ = yield _cra(node.port, "nobody", "x")
    assert set(ch_wrong[2]) == set(ch_unknown[2]) == {"challenge", "salt", "iterations", "keylen"}
    assert (ch_unknown[2]["iterations"], ch_unknown[2]["keylen"]) == (100, 32)
    assert ch_again[2]["salt"] == ch_unknown[2]["salt"]  # stable, like a real salt
    a, b = json.loads(ch_wrong[2]["challenge"]), json.loads(ch_unknown[2]["challenge"])
    assert set(a) == set(b) and b["authrole"] == a["authrole"]
    assert end_wrong[0] == end_unknown[0] == 3
    assert end_wrong[2] == end_unknown[2] == "wamp.error.authentication_failed"
    assert end_wrong[1] == end_unknown[1]
    # and the right secret still works
    _, end = yield _cra(node.port, "billing", "billing-service-secret")
    assert end[0] == 2
    yield node.wait_count(r"no such wampcra user", 1)


@pytest.mark.parametrize(
    "auth",
    [
        ticket("x,y"),
        ticket("bob2 "),
        ticket("a\u202eb"),
        ticket("alice", role="user,admin"),
        {"authmethods": ["ticket"], "ticket": token(sub="carol", account="42,43")},
        ticket("billing"),  # a WAMP-CRA user's authid
        ticket("alice", ttl=86400 * 7),  # longer than jwt_max_lifetime
    ],
    ids=["comma", "space", "bidi", "role-comma", "extra-comma", "cra-authid", "lifetime"],
)
@pytest_twisted.inlineCallbacks
def test_tickets_with_unnameable_identities_are_refused(spawn, secured, auth):
    node = yield secured()
    client = yield spawn.js(node.url, auth=auth, expect_open=False)
    close = yield client.wait_report(lambda r: r["ev"] == "close")
    assert close["details"]["reason"] == "wamp.error.authentication_failed", close


@pytest_twisted.inlineCallbacks
def test_control_message_kills_by_authextra(spawn, secured, publisher, exchange):
    import pika

    node = yield secured()
    alice = yield spawn.js(node.url, "json", auth=ticket("alice"))
    carol = yield spawn.js(
        node.url,
        "json",
        auth={"authmethods": ["ticket"], "ticket": token(sub="carol", account="7")},
    )
    assert (yield alice.subscribe("s", "acct.42.", "prefix"))["ev"] == "subscribed"
    # a malformed order is refused whole and ends nothing
    publisher.channel.basic_publish(
        f"{exchange}.control", "", b'{"kill": {"authid": "alice", "authrole": "user"}}'
    )
    yield node.wait_count("refused control message", 1)
    publisher.channel.basic_publish(
        f"{exchange}.control",
        "",
        json.dumps({"kill": {"extra": ["ACCOUNT", "42"]}, "message": "account closed"}).encode(),
        pika.BasicProperties(content_type="application/json"),
    )
    close = yield alice.wait_report(lambda r: r["ev"] == "close")
    assert close["details"] == {"reason": "wamp.close.killed", "message": "account closed"}
    # carol (account 7) is still there
    res = yield carol.call("c", "wamp.subscription.list")
    assert res["ev"] == "result"
    assert not [r for r in carol.reports if r["ev"] == "close"]
