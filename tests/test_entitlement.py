"""No session ever receives an event it is not entitled to, and every
entitled session receives it: property-based over tenants, users, roles,
subscriptions (all three match policies) and targeted events, checked
against an independent oracle (tests/entitlement.py); then one scenario end
to end with Autobahn|JS clients holding JWT tickets, a real notifyd and a
real RabbitMQ.

The same over every header value type a backend can send (strings, arrays,
tables, bytes, ints, bools): in the broker, and end to end on the event log
(``--history '#'``) by each path an event takes to a session: live from the
log, by resume (``_resume_after``), by ``wamp.subscription.get_events`` and
retained (``wamp-retain`` + ``get_retained``).  A targeting header sent as an
array, a table or a bool must keep the event from everyone."""

from __future__ import annotations

import json
import random
import urllib.request

import pika
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notifyd.authz import Authorizer, Identity, load_authz
from notifyd.bindings import Bindings
from notifyd.broker import Broker
from notifyd.events import BadEvent, decode_delivery
from notifyd.testing import FakeBinder
from tests.entitlement import (
    AUTHZ_TOML,
    TOPICS,
    Event,
    Scenario,
    make_scenario,
    oracle_entitled,
    oracle_match,
    oracle_may_receive,
    oracle_may_subscribe,
    oracle_must_receive,
    typed_headers,
)
from tests.harness import unique
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


def run_in_broker(scenario: Scenario, authz: Authorizer, typed: bool = False):
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
        headers = headers_for(e, ids)
        if typed:
            headers = typed_headers(e, headers)
        props = pika.BasicProperties(content_type="application/json", headers=headers)
        body = json.dumps({"seq": e.seq}).encode()
        try:
            event = decode_delivery(e.topic, props, body, 10000)
        except BadEvent:
            assert typed, (e, headers)
            continue
        broker.dispatch(event)
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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.randoms(use_true_random=False))
def test_no_header_value_type_widens_targeting(tmp_path_factory, rnd):
    """Targeting headers as arrays, tables, bytes, ints and bools (the AMQP
    field types) on the live path: never wider than the oracle allows."""
    path = tmp_path_factory.getbasetemp() / "authz.toml"
    path.write_text(AUTHZ_TOML)
    roles, _ = load_authz(str(path))
    scenario = make_scenario(rnd, typed=True)
    sessions = run_in_broker(scenario, Authorizer(roles), typed=True)
    for i, s in enumerate(sessions):
        got = {ev.args[0]["seq"] for ev in s.got}
        may = {e.seq for e in scenario.events if oracle_may_receive(scenario, i, e)}
        must = {e.seq for e in scenario.events if oracle_must_receive(scenario, i, e)}
        assert got <= may, ("not entitled", i, scenario.sessions[i], got - may)
        assert must <= got, ("missed", i, scenario.sessions[i], must - got)


# -- the event log, end to end ------------------------------------------------------


def _position(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/position", timeout=10) as r:
        return json.load(r)["position"]


def _seqs(events, seed: int) -> set[int]:
    """The scenario events (of run ``seed``: the log holds earlier runs too)."""
    return {
        e["args"][0]["seq"]
        for e in events
        if e["args"] and e["args"][0].get("run") == seed and e["args"][0]["seq"] >= 0
    }


class _LogRun:
    """One scenario on a logged node: clients, their subscriptions and the
    oracle's view of each (a later session of the same user is a new index:
    no session-id list names it)."""

    def __init__(self, spawn, node, scenario: Scenario, seed: int) -> None:
        self.spawn, self.node, self.scenario, self.seed = spawn, node, scenario, seed

    @pytest_twisted.inlineCallbacks
    def connect(self, user, subs, serializer: str, options=None, prefix: str = "s"):
        """A client of ``user`` subscribed to ``subs``; returns it and the
        tags of its authorized subscriptions with their (pattern, match)."""
        authid, role, account = user
        c = yield self.spawn.js(
            self.node.url,
            serializer,
            auth={
                "authmethods": ["ticket"],
                "ticket": token(sub=authid, role=role, account=account),
            },
        )
        tags = {}
        for n, (pattern, match) in enumerate(subs):
            tag = f"{prefix}{n}"
            r = yield c.subscribe(tag, pattern, match, options=options)
            if oracle_may_subscribe(user, pattern, match):
                assert r["ev"] == "subscribed", (user, pattern, match, r)
                tags[tag] = (pattern, match, r["id"])
            else:
                assert r["ev"] == "error", r
        return c, tags

    def oracle(self, index: int, user, subs):
        scenario = Scenario([*self.scenario.sessions], self.scenario.events)
        while len(scenario.sessions) <= index:
            scenario.sessions.append((user, subs))
        scenario.sessions[index] = (user, subs)
        return scenario

    def check(self, path: str, scenario: Scenario, i: int, got: set[int], pattern=None):
        events = [
            e
            for e in scenario.events
            if pattern is None or oracle_match(pattern[0], pattern[1], e.topic)
        ]
        may = {e.seq for e in events if oracle_may_receive(scenario, i, e)}
        must = {e.seq for e in events if oracle_must_receive(scenario, i, e)}
        where = (self.seed, path, i, scenario.sessions[i][0], pattern)
        assert got <= may, ("NOT ENTITLED", where, sorted(got - may), self._show(got - may))
        return must - got

    def _show(self, seqs):
        return [
            (e.seq, e.topic, e.headers, e.eligible, e.exclude, e.types)
            for e in self.scenario.events
            if e.seq in seqs
        ]


@pytest_twisted.inlineCallbacks
def test_log_paths_end_to_end(spawn, publisher, rabbit, tmp_path):
    """With ``--history '#'``, every path from the log to a session, with
    targeting headers of every AMQP value type: no session ever receives an
    event it is not entitled to; entitled sessions get the events whose
    headers were all strings."""
    (tmp_path / "authz.toml").write_text(AUTHZ_TOML)
    (tmp_path / "secret").write_bytes(SECRET)
    stream = unique("entitlement")
    node = yield spawn.notifyd(
        "--authz-file",
        str(tmp_path / "authz.toml"),
        "--jwt-secret-file",
        str(tmp_path / "secret"),
        "--jwt-algorithm",
        "HS256",
        "--history",
        "#",
        "--history-stream",
        stream,
        "--retained-stream",
        stream + ".retained",
    )
    try:
        for seed in (5, 17):
            yield _one_log_scenario(spawn, node, publisher, seed)
    finally:
        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        ch = conn.channel()
        for q in (stream, stream + ".retained"):
            ch.queue_delete(q)
        conn.close()


@pytest_twisted.inlineCallbacks
def _one_log_scenario(spawn, node, publisher, seed):
    from twisted.internet import threads

    scenario = make_scenario(random.Random(seed), n_events=16, typed=True, retain=True)
    # finding 2 of issue 11, always in: an array or table meant to narrow the
    # audience, which a stream drops, must not let the event reach everyone
    n = len(scenario.events)
    scenario.events += [
        Event(n, "acct.1.invoice.sent", {"wamp-eligible-authid": "alice"}, retain=True),
        Event(n + 1, "acct.1.invoice.paid", {"wamp-exclude-authid": "alice,root"}),
        Event(n + 2, "user.bob.note", {"wamp-eligible-authrole": "admin"}, retain=True),
        Event(n + 3, "acct.2.invoice.sent", {"wamp-exclude-extra-account": "2"}, retain=True),
    ]
    for e, kind in zip(scenario.events[n:], ["array", "array", "table", "array"], strict=True):
        e.types = {name: kind for name in e.headers}
    run = _LogRun(spawn, node, scenario, seed)
    sers = ["json", "msgpack", "cbor"]
    clients = []
    for i, (user, subs) in enumerate(scenario.sessions):
        c, tags = yield run.connect(user, subs, sers[i % 3])
        r = yield c.subscribe("done", f"user.{user[0]}.done.{seed}")
        assert r["ev"] == "subscribed"
        clients.append((c, tags))
    ids = [c.session for c, _ in clients]
    start = yield threads.deferToThread(_position, node.port)
    for e in scenario.events:
        headers = typed_headers(e, headers_for(e, ids))
        publisher.publish(e.topic, {"seq": e.seq, "run": seed}, headers=headers)
    for user in {u for u, _ in scenario.sessions}:
        publisher.publish(f"user.{user[0]}.done.{seed}", {"seq": -1})
    missed = []

    # 1. live, from the log
    for i, (c, _tags) in enumerate(clients):
        yield c.wait_events("done", 1)
        got = _seqs((e for e in c.events() if e["tag"] != "done"), seed)
        missed.append(("live", i, run.check("live", scenario, i, got)))

    # 2. wamp.subscription.get_events, on each of each session's subscriptions
    for i, (c, tags) in enumerate(clients):
        for tag, (pattern, match, sub) in tags.items():
            res = yield c.call(f"h{tag}", "wamp.subscription.get_events", sub, 1000)
            assert res["ev"] == "result", res
            got = _seqs(res["value"], seed)
            missed.append(
                ("get_events", i, run.check("get_events", scenario, i, got, (pattern, match)))
            )

    # 3. resume: a new session of each user replays the log from before
    #    the events; a sentinel on every topic, published after, ends each
    #    subscription's replay (live follows replay, in order)
    resumed = []
    for i, (user, subs) in enumerate(scenario.sessions):
        c, tags = yield run.connect(
            user, subs, sers[(i + 1) % 3], options={"_resume_after": start}, prefix="r"
        )
        resumed.append((len(scenario.sessions) + i, user, subs, c, tags))
    for topic in TOPICS:
        publisher.publish(topic, {"seq": -2})
    for index, user, subs, c, tags in resumed:
        scen = run.oracle(index, user, subs)
        for tag, (pattern, match, _sub) in tags.items():
            if any(oracle_match(pattern, match, t) for t in TOPICS):
                yield c.wait_report(
                    lambda r, tag=tag, c=c: any(
                        e["args"][0]["seq"] == -2 for e in c.events(tag) if e["args"]
                    )
                )
            got = _seqs(c.events(tag), seed)
            missed.append(
                ("resume", index, run.check("resume", scen, index, got, (pattern, match)))
            )

    # 4. retained: a new session of each user with get_retained gets, per
    #    topic, the last retained event it may see (or none)
    for i, (user, subs) in enumerate(scenario.sessions):
        index = 2 * len(scenario.sessions) + i
        c, tags = yield run.connect(
            user, subs, sers[(i + 2) % 3], options={"get_retained": True}, prefix="k"
        )
        c.send(op="subscribe", tag="mark", topic=f"user.{user[0]}.done.{seed}.k")
        yield c.wait_report(lambda r: r.get("tag") == "mark" and r["ev"] == "subscribed")
        publisher.publish(f"user.{user[0]}.done.{seed}.k", {"seq": -3})
        yield c.wait_events("mark", 1)
        scen = run.oracle(index, user, subs)
        retained_seqs = {e.seq for e in scenario.events if e.retain}
        for tag, (pattern, match, _sub) in tags.items():
            retained = [e for e in c.events(tag) if e.get("retained")]
            got = _seqs(retained, seed)
            assert got <= retained_seqs, (seed, "retained but never sent retained", got)
            run.check("retained", scen, index, got, (pattern, match))

    # every entitled session received every all-string event on every path
    assert not [m for m in missed if m[2]], (seed, [m for m in missed if m[2]])
