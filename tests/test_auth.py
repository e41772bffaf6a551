"""Authentication: JWT tickets (every way a token can be wrong), WAMP-CRA,
anonymous, and the session's life ending with its ticket (on a controlled
clock)."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from autobahn.wamp import auth as ab_auth
from autobahn.wamp import message, role
from twisted.internet.task import Clock

from notifyd.auth import AuthConfigError, AuthFailed, CraAuthenticator, CraUser, TicketAuthenticator
from notifyd.authz import Authorizer, RolePolicy, Rule
from notifyd.bindings import Bindings
from notifyd.node import make_router
from notifyd.router import Policy
from notifyd.session import State, WampSession
from notifyd.testing import FakeBinder, FakePublisher, RecordingTransport
from tests.keys import SECRET, ec_pair, jwks_for, rsa_pair, token

RSA_KEY, RSA_PUB = rsa_pair()
OTHER_RSA_KEY, _ = rsa_pair()
EC_KEY, EC_PUB = ec_pair()


def hs(**kw):
    return TicketAuthenticator(["HS256"], secret=SECRET, **kw)


def test_valid_hs256_ticket_maps_claims():
    p = hs().verify(token(role="admin", account="42", other="x"))
    assert (p.authid, p.authrole, p.authmethod) == ("alice", "admin", "ticket")
    assert p.authextra == {"account": "42"} and p.expires_at > time.time()


def test_default_role_and_integer_account():
    p = hs(default_role="member").verify(token(account=42))
    assert p.authrole == "member" and p.authextra == {"account": "42"}


def test_valid_rs256_and_es256_tickets():
    assert (
        TicketAuthenticator(["RS256"], public_key=RSA_PUB).verify(token(RSA_KEY, "RS256")).authid
        == "alice"
    )
    assert (
        TicketAuthenticator(["ES256"], public_key=EC_PUB).verify(token(EC_KEY, "ES256")).authid
        == "alice"
    )


def test_jwks_chooses_the_key_by_kid():
    auth = TicketAuthenticator(["RS256"], jwks=jwks_for(RSA_KEY.public_key(), "k1", "RS256"))
    assert auth.verify(token(RSA_KEY, "RS256", headers={"kid": "k1"})).authid == "alice"
    with pytest.raises(AuthFailed, match="kid is not in the JWKS"):
        auth.verify(token(RSA_KEY, "RS256", headers={"kid": "k2"}))


REJECTED = [
    ("expired", lambda: hs().verify(token(ttl=-120)), "token expired"),
    (
        "other key",
        lambda: hs().verify(token(key=b"another-secret-of-enough-length-000000")),
        "signature is invalid",
    ),
    (
        "other rsa key",
        lambda: TicketAuthenticator(["RS256"], public_key=RSA_PUB).verify(
            token(OTHER_RSA_KEY, "RS256")
        ),
        "signature is invalid",
    ),
    (
        "alg none",
        lambda: hs().verify(
            jwt.encode({"sub": "a", "exp": time.time() + 60}, None, algorithm="none")
        ),
        "algorithm 'none' is not accepted",
    ),
    # HS/RS confusion: an HS256 token whose "secret" is the RSA public key
    (
        "hs/rs confusion",
        lambda: TicketAuthenticator(["RS256"], public_key=RSA_PUB).verify(_hs_with_public_key()),
        "algorithm 'HS256' is not accepted",
    ),
    (
        "hs/rs confusion with both configured",
        lambda: TicketAuthenticator(["HS256", "RS256"], secret=SECRET, public_key=RSA_PUB).verify(
            _hs_with_public_key()
        ),
        "signature is invalid",
    ),
    (
        "wrong audience",
        lambda: hs(audience="notifyd").verify(token(aud="other")),
        "audience is wrong",
    ),
    ("missing audience", lambda: hs(audience="notifyd").verify(token()), "lacks the aud claim"),
    (
        "wrong issuer",
        lambda: hs(issuer="https://app").verify(token(iss="https://evil")),
        "issuer is wrong",
    ),
    ("not yet valid", lambda: hs().verify(token(nbf=int(time.time()) + 3600)), "not yet valid"),
    ("no exp", lambda: hs().verify(token(exp=None)), "lacks the exp claim"),
    ("no sub", lambda: hs().verify(token(sub=None)), "lacks the sub claim"),
    ("malformed", lambda: hs().verify("not.a.jwt"), "malformed token"),
    ("garbage", lambda: hs().verify("%%%"), "malformed token"),
    ("not a string", lambda: hs().verify({"sub": "x"}), "malformed token"),
    ("bad role claim", lambda: hs().verify(token(role=["admin"])), "claim role"),
]


def _hs_with_public_key() -> str:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()).rstrip(
        b"="
    )
    body = base64.urlsafe_b64encode(
        json.dumps({"sub": "mallory", "exp": int(time.time()) + 60}).encode()
    ).rstrip(b"=")
    import hashlib
    import hmac

    sig = hmac.new(RSA_PUB, header + b"." + body, hashlib.sha256).digest()
    return (header + b"." + body + b"." + base64.urlsafe_b64encode(sig).rstrip(b"=")).decode()


@pytest.mark.parametrize("name, call, reason", REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_tickets(name, call, reason):
    with pytest.raises(AuthFailed) as e:
        call()
    assert e.value.uri == "wamp.error.authentication_failed"
    assert reason in e.value.reason
    assert "s3cret" not in e.value.reason


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"algorithms": []}, "name at least one algorithm"),
        ({"algorithms": ["HS256"]}, "needs jwt_secret_file"),
        ({"algorithms": ["HS256"], "public_key": b"x"}, "never used as an HMAC secret"),
        ({"algorithms": ["RS256"], "secret": SECRET}, "needs jwt_public_key_file or jwks_file"),
        ({"algorithms": ["HS256"], "secret": b"short"}, "at least 32 bytes"),
        ({"algorithms": ["RS256"], "public_key": b"not a pem"}, "not a PEM public key"),
        ({"algorithms": ["XX1"], "secret": SECRET}, "is not one of"),
    ],
)
def test_bad_ticket_configuration(kwargs, message):
    algorithms = kwargs.pop("algorithms")
    with pytest.raises(AuthConfigError, match=message):
        TicketAuthenticator(algorithms, **kwargs)


# -- sessions -----------------------------------------------------------------------
RULES = {"user": RolePolicy(subscribe=[Rule("acct.{authextra.account}.", "prefix")])}


def make_session(clock=None, **policy):
    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    router = make_router(
        Policy(authorizer=Authorizer(RULES), **policy),
        bindings=bindings,
        publisher=FakePublisher(),
        clock=clock or Clock(),
    )
    t = RecordingTransport()
    return WampSession(router, t), t, router


def hello(s, methods, authid=None):
    s.on_message(
        message.Hello(
            "realm1",
            {"subscriber": role.RoleSubscriberFeatures()},
            authmethods=methods,
            authid=authid,
        )
    )


def test_ticket_session_is_closed_when_the_ticket_expires():
    clock = Clock()
    clock.advance(time.time())
    s, t, router = make_session(clock, ticket=hs())
    hello(s, ["ticket"])
    assert isinstance(t.sent[0], message.Challenge) and t.sent[0].method == "ticket"
    s.on_message(message.Authenticate(token(ttl=60, account="42", now=clock.seconds())))
    welcome = t.sent[1]
    assert isinstance(welcome, message.Welcome)
    assert (welcome.authid, welcome.authrole, welcome.authmethod) == ("alice", "user", "ticket")
    assert welcome.authextra == {"account": "42"}
    s.on_message(message.Subscribe(1, "acct.42.", match="prefix"))
    assert isinstance(t.sent[2], message.Subscribed)
    clock.advance(59)
    assert s.state is State.OPEN and router.broker.subscriptions()
    clock.advance(1)
    assert router.broker.subscriptions() == [] and router.sessions == {}
    assert t.sent[-1].reason == "wamp.close.auth_expired" and t.closed
    assert not clock.getDelayedCalls()


def test_failed_ticket_aborts_with_the_specific_error():
    s, t, _ = make_session(ticket=hs())
    hello(s, ["ticket"])
    s.on_message(message.Authenticate(token(ttl=-600)))
    assert t.sent[-1].reason == "wamp.error.authentication_failed" and t.closed
    assert "expired" in t.sent[-1].message


def test_method_order_and_availability():
    s, t, _ = make_session(ticket=hs(), allow_anonymous=True)
    hello(s, ["wampcra", "anonymous", "ticket"])  # client's order; wampcra is not enabled
    assert isinstance(t.sent[0], message.Welcome) and t.sent[0].authrole == "anonymous"
    s, t, _ = make_session(ticket=hs())
    hello(s, ["anonymous"])
    assert t.sent[0].reason == "wamp.error.not_authorized"
    s, t, _ = make_session(ticket=hs())
    hello(s, ["cryptosign"])
    assert t.sent[0].reason == "wamp.error.no_auth_method"


def test_authenticate_without_challenge_is_a_violation():
    s, t, _ = make_session(ticket=hs())
    s.on_message(message.Authenticate("x"))
    assert t.sent[-1].reason == "wamp.error.protocol_violation"


@pytest.mark.parametrize("salted", [False, True])
def test_wampcra(salted):
    user = CraUser(
        secret="svc-secret",
        role="backend",
        salt="pepper" if salted else None,
        iterations=100,
        keylen=32,
    )
    s, t, _ = make_session(cra=CraAuthenticator({"billing": user}))
    hello(s, ["wampcra"], authid="billing")
    ch = t.sent[0]
    assert ch.method == "wampcra"
    key = user.secret.encode()
    if salted:
        assert (ch.extra["salt"], ch.extra["iterations"], ch.extra["keylen"]) == ("pepper", 100, 32)
        key = ab_auth.derive_key(user.secret, "pepper", 100, 32)
    # autobahn's own WAMP-CRA implementation computes the answer
    s.on_message(message.Authenticate(ab_auth.compute_wcs(key, ch.extra["challenge"]).decode()))
    w = t.sent[1]
    assert isinstance(w, message.Welcome) and (w.authid, w.authrole, w.authmethod) == (
        "billing",
        "backend",
        "wampcra",
    )


def _cra_attempt(cra, authid, secret):
    """HELLO as ``authid`` and answer the CHALLENGE with ``secret``: what the
    client sees (the CHALLENGE and the final message)."""
    s, t, _ = make_session(cra=cra)
    hello(s, ["wampcra"], authid=authid)
    ch = t.sent[0]
    assert isinstance(ch, message.Challenge) and ch.method == "wampcra"
    key = secret.encode()
    if "salt" in ch.extra:
        key = ab_auth.derive_key(secret, ch.extra["salt"], ch.extra["iterations"], 32)
    s.on_message(message.Authenticate(ab_auth.compute_wcs(key, ch.extra["challenge"]).decode()))
    return ch, t.sent[-1], t


@pytest.mark.parametrize("salted", [False, True])
def test_wampcra_unknown_user_is_answered_like_a_wrong_secret(salted):
    salt = {"salt": "pepper", "iterations": 100} if salted else {}
    cra = CraAuthenticator({"billing": CraUser(secret="svc-secret", role="backend", **salt)})
    ch_known, end_known, t1 = _cra_attempt(cra, "billing", "wrong")
    ch_unknown, end_unknown, t2 = _cra_attempt(cra, "nobody", "wrong")
    # the same CHALLENGE shape, the same ABORT
    assert set(ch_known.extra) == set(ch_unknown.extra)
    assert ("salt" in ch_unknown.extra) is salted
    if salted:
        assert ch_unknown.extra["iterations"] == ch_known.extra["iterations"]
        assert len(ch_unknown.extra["salt"]) > 0
    known, unknown = (
        json.loads(ch_known.extra["challenge"]),
        json.loads(ch_unknown.extra["challenge"]),
    )
    assert set(known) == set(unknown) and unknown["authrole"] == "backend"
    for end, t in ((end_known, t1), (end_unknown, t2)):
        assert isinstance(end, message.Abort) and t.closed
        assert end.reason == "wamp.error.authentication_failed"
    assert end_known.message == end_unknown.message
    # an unknown user's salt is stable (a real user's is too)
    if salted:
        again, _, _ = _cra_attempt(cra, "nobody", "x")
        other, _, _ = _cra_attempt(cra, "nobody2", "x")
        assert again.extra["salt"] == ch_unknown.extra["salt"] != other.extra["salt"]


def test_wampcra_wrong_and_malformed_signatures():
    cra = CraAuthenticator({"billing": CraUser(secret="svc-secret", role="backend")})
    _, end, _ = _cra_attempt(cra, "billing", "wrong")
    assert end.reason == "wamp.error.authentication_failed"
    for authid in ("billing", "nobody"):
        s, t, _ = make_session(cra=cra)
        hello(s, ["wampcra"], authid=authid)
        s.on_message(message.Authenticate("not base64 !!"))
        assert t.sent[-1].reason == "wamp.error.authentication_failed"
        assert t.sent[-1].message == "malformed signature"
    # an authid no user can have is refused at once (there is nothing to hide)
    for authid in (None, "a,b", " a", "a\u202e"):
        s, t, _ = make_session(cra=cra)
        hello(s, ["wampcra"], authid=authid)
        assert t.sent[0].reason == "wamp.error.authentication_failed" and t.closed


def test_authenticate_in_an_open_session_is_a_violation():
    s, t, _ = make_session(allow_anonymous=True)
    hello(s, ["anonymous"])
    s.on_message(message.Authenticate("x"))
    assert t.sent[-1].reason == "wamp.error.protocol_violation"


def test_odd_tokens_fail_cleanly():
    # a key that does not fit the algorithm the token names
    auth = TicketAuthenticator(["RS256", "ES256"], public_key=RSA_PUB)
    with pytest.raises(AuthFailed):
        auth.verify(token(EC_KEY, "ES256"))
    with pytest.raises(AuthFailed):
        hs().verify(token(exp=10**400))


def test_unanswered_subscribes_are_capped():
    clock = Clock()
    bindings = Bindings()
    router = make_router(
        Policy(allow_anonymous=True, max_subscriptions=5),
        bindings=bindings,
        publisher=FakePublisher(),
        clock=clock,
    )
    t = RecordingTransport()
    s = WampSession(router, t)
    hello(s, ["anonymous"])
    for i in range(1, 21):  # RabbitMQ is away: nothing gets bound
        s.on_message(message.Subscribe(i, "a.b"))
    errors = [m for m in t.sent if isinstance(m, message.Error)]
    assert len(errors) == 15 and errors[0].error == "notifyd.error.too_many_subscriptions"
    assert len(s._pending) == 5


# -- identities the targeting syntax can name ---------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        "x,y",
        "bob2 ",
        " bob",
        "a\tb",
        "a\nb",
        "a\x00",
        "a\u202eb",
        "a\u2028",
        "\ud800",
        "",
        "x" * 256,
    ],
)
@pytest.mark.parametrize("claim", ["sub", "role", "account"])
def test_identities_the_list_syntax_cannot_name_are_refused(claim, value):
    with pytest.raises(AuthFailed) as e:
        hs().verify(token(**{claim: value}))
    assert e.value.uri == "wamp.error.authentication_failed"
    assert f"claim {claim}" in e.value.reason


def test_ordinary_identities_pass():
    p = hs().verify(token(sub="bob.smith@example.com", role="user-2", account="ÄÖ 42"))
    assert (p.authid, p.authrole, p.authextra) == (
        "bob.smith@example.com",
        "user-2",
        {"account": "ÄÖ 42"},
    )


def test_extra_claims_match_case_insensitively_and_collisions_are_refused():
    auth = hs(extra_claims=("tenantId",))
    assert auth.verify(token(tenantid="7")).authextra == {"tenantId": "7"}
    assert auth.verify(token(tenantId=7)).authextra == {"tenantId": "7"}
    with pytest.raises(AuthFailed, match="several claims named"):
        auth.verify(token(tenantId="7", TENANTID="8"))
    with pytest.raises(AuthConfigError, match="differ only in case"):
        hs(extra_claims=("tenantId", "tenantid"))


def test_jwt_sub_may_not_name_a_wampcra_user():
    auth = hs(reserved_authids=("billing",))
    for sub in ("billing", "Billing"):
        with pytest.raises(AuthFailed, match="WAMP-CRA user"):
            auth.verify(token(sub=sub))
    assert auth.verify(token(sub="alice")).authid == "alice"


def test_max_token_lifetime():
    auth = hs(max_lifetime=3600, leeway=30)
    assert auth.verify(token(ttl=3600)).authid == "alice"
    with pytest.raises(AuthFailed, match="jwt_max_lifetime"):
        auth.verify(token(ttl=3601))  # exp - iat too long
    now = time.time()
    with pytest.raises(AuthFailed, match="jwt_max_lifetime"):  # no iat: exp too far ahead
        auth.verify(token(ttl=7200, iat=None))
    with pytest.raises(AuthFailed, match="jwt_max_lifetime"):  # an iat in the past does not help
        auth.verify(jwt.encode({"sub": "a", "iat": int(now), "exp": int(now + 10**6)}, SECRET))
    # the default: one day
    with pytest.raises(AuthFailed, match="jwt_max_lifetime"):
        hs().verify(token(ttl=86400 * 30))
    assert hs().verify(token(ttl=86400)).authid == "alice"
    with pytest.raises(AuthConfigError):
        hs(max_lifetime=0)
