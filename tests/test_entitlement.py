"""No session ever receives an event it is not entitled to, and every
entitled session receives it: property-based over tenants, users, roles,
subscriptions (all three match policies) and targeted events, checked
against an independent oracle (tests/entitlement.py); then one scenario end
to end with Autobahn|JS clients holding JWT tickets, a real notifyd and a
real RabbitMQ."""

from __future__ import annotations

import json
import random

import pika
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifyd.authz import Authorizer, Identity, load_authz
from notifyd.bindings import Bindings
from notifyd.broker import Broker
from notifyd.events import decode_delivery
from notifyd.testing import FakeBinder
from tests.entitlement import (
    AUTHZ_TOML,
    Scenario,
    make_scenario,
    oracle_entitled,
    oracle_may_subscribe,
)
from tests.keys import SECRET, token


class FakeSession:
    def __init__(self, sid, user):
        self.session_id = sid
        self.authid, self.authrole, account = user
        self.authextra = {"account": account}
        self.got: list = []

    def send_event(self, event):
        self.got.append(event)


def headers_for(event, ids):
    h = dict(event.headers)
    if event.eligible is not None:
        h["wamp-eligible"] = ",".join(str(ids[i]) for i in event.eligible)
    if event.exclude is not None:
        h["wamp-exclude"] = ",".join(str(ids[i]) for i in event.exclude)
    return h


def run_in_broker(scenario: Scenario, authz: Authorizer):
    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    broker = Broker(bindings)
    sessions = [FakeSession(1000 + i, user) for i, (user, _) in enumerate(scenario.sessions)]
    for s, (user, subs) in zip(sessions, scenario.sessions, strict=True):
        for pattern, match in subs:
            allowed = authz.may_subscribe(
                Identity(s.authid, s.authrole, s.authextra), pattern, match
            )
            assert allowed == oracle_may_subscribe(user, pattern, match), (user, pattern, match)
            if allowed:
                broker.subscribe(s, pattern, match)
    ids = [s.session_id for s in sessions]
    for e in scenario.events:
        props = pika.BasicProperties(content_type="application/json", headers=headers_for(e, ids))
        broker.dispatch(decode_delivery(e.topic, props, json.dumps({"seq": e.seq}).encode(), 10000))
    return sessions


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_every_session_gets_exactly_what_it_is_entitled_to(tmp_path_factory, rnd):
    path = tmp_path_factory.getbasetemp() / "authz.toml"
    path.write_text(AUTHZ_TOML)
    roles, _ = load_authz(str(path))
    scenario = make_scenario(rnd)
    sessions = run_in_broker(scenario, Authorizer(roles))
    for i, s in enumerate(sessions):
        got = {ev.args[0]["seq"] for ev in s.got}
        want = {e.seq for e in scenario.events if oracle_entitled(scenario, i, e)}
        assert got == want, (i, scenario.sessions[i], got ^ want)
        # one EVENT per (subscription, event): never a duplicate
        keys = [(ev.subscription, ev.args[0]["seq"]) for ev in s.got]
        assert len(keys) == len(set(keys))


@pytest_twisted.inlineCallbacks
def test_end_to_end_slice(spawn, publisher, tmp_path):
    (tmp_path / "authz.toml").write_text(AUTHZ_TOML)
    (tmp_path / "secret").write_bytes(SECRET)
    node = yield spawn.notifyd(
        "--authz-file",
        str(tmp_path / "authz.toml"),
        "--jwt-secret-file",
        str(tmp_path / "secret"),
        "--jwt-algorithm",
        "HS256",
    )
    for seed in (3, 11):
        scenario = make_scenario(random.Random(seed), n_events=16)
        clients = []
        for i, (user, subs) in enumerate(scenario.sessions):
            authid, role, account = user
            ticket = token(sub=authid, role=role, account=account)
            c = yield spawn.js(
                node.url,
                ["json", "msgpack", "cbor"][i % 3],
                auth={"authmethods": ["ticket"], "ticket": ticket},
            )
            assert (c.authid, c.authrole) == (authid, role)
            for n, (pattern, match) in enumerate(subs):
                r = yield c.subscribe(f"s{n}", pattern, match)
                if oracle_may_subscribe(user, pattern, match):
                    assert r["ev"] == "subscribed", (user, pattern, match, r)
                else:
                    assert r["ev"] == "error" and r["error"] == "wamp.error.not_authorized", r
            r = yield c.subscribe("done", f"user.{authid}.done.{seed}")
            assert r["ev"] == "subscribed"
            clients.append(c)
        ids = [c.session for c in clients]
        pairs = [
            oracle_entitled(scenario, i, e) for i in range(len(clients)) for e in scenario.events
        ]
        assert 0 < sum(pairs) < len(pairs)  # the slice exercises both outcomes
        for e in scenario.events:
            publisher.publish(e.topic, {"seq": e.seq}, headers=headers_for(e, ids))
        for user in {u for u, _ in scenario.sessions}:
            publisher.publish(f"user.{user[0]}.done.{seed}", {"seq": -1})
        for i, c in enumerate(clients):
            yield c.wait_events("done", 1)
            got = {e["args"][0]["seq"] for e in c.events() if e["tag"] != "done"} - {-1}
            want = {e.seq for e in scenario.events if oracle_entitled(scenario, i, e)}
            assert got == want, (seed, i, scenario.sessions[i], got ^ want)
        for c in clients:
            yield c.exit()
