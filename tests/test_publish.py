"""Client PUBLISH through RabbitMQ, with the standard options working across
nodes, and backend targeting with the same AMQP headers."""

from __future__ import annotations

import pytest_twisted

from notifyd import config


@pytest_twisted.inlineCallbacks
def test_publish_options_across_two_nodes(spawn, publisher):
    a = yield spawn.notifyd("--allow-publish", "chat.")
    b = yield spawn.notifyd("--allow-publish", "chat.")
    alice = yield spawn.js(a.url, "json")
    bob = yield spawn.js(b.url, "msgpack")
    carol = yield spawn.js(b.url, "cbor")
    for c in (alice, bob, carol):
        yield c.subscribe("room", "chat.room")

    def pub(client, tag, seq, **options):
        client.send(
            op="publish",
            tag=tag,
            topic="chat.room",
            args=[{"seq": seq}],
            options={"acknowledge": True, **options},
        )
        return client.wait_report(
            lambda r: r.get("tag") == tag and r["ev"] in ("published", "error")
        )

    # default exclude_me: everyone but alice
    r = yield pub(alice, "p1", 1)
    assert r["ev"] == "published" and r["id"]
    # eligible: only bob, on the other node
    yield pub(alice, "p2", 2, eligible=[bob.session])
    # exclude: not carol; exclude_me false: alice too; disclosed
    yield pub(alice, "p3", 3, exclude=[carol.session], exclude_me=False, disclose_me=True)
    # a refused topic gets its error
    alice.send(
        op="publish", tag="p4", topic="invoice.sent", args=[1], options={"acknowledge": True}
    )
    r = yield alice.wait_report(lambda r: r.get("tag") == "p4")
    assert r["ev"] == "error" and r["error"] == "wamp.error.not_authorized"
    # the backend targets one session with the same header
    publisher.publish("chat.room", {"seq": 4}, headers={"wamp-eligible": str(carol.session)})
    publisher.publish("chat.room", {"seq": 5})
    for c in (alice, bob, carol):
        yield c.wait_report(lambda r, c=c: any(e["args"][0]["seq"] == 5 for e in c.events("room")))

    def seqs(c):
        return [e["args"][0]["seq"] for e in c.events("room")]

    assert seqs(alice) == [3, 5]
    assert seqs(bob) == [1, 2, 3, 5]
    assert seqs(carol) == [1, 4, 5]
    disclosed = [e for e in bob.events("room") if e["args"][0]["seq"] == 3][0]
    assert disclosed["publisher"] == alice.session
    assert all(e["publisher"] is None for e in bob.events("room") if e["args"][0]["seq"] != 3)
    # the publication id of a client PUBLISH is the same on every node
    p1 = [r for r in alice.reports if r.get("tag") == "p1"][0]["id"]
    assert [e["publication"] for e in bob.events("room") if e["args"][0]["seq"] == 1] == [p1]
    assert [e["publication"] for e in carol.events("room") if e["args"][0]["seq"] == 1] == [p1]


@pytest_twisted.inlineCallbacks
def test_kwargs_and_multiple_args_round_trip(spawn):
    node = yield spawn.notifyd("--allow-publish", "*")
    c = yield spawn.js(node.url, "cbor")
    yield c.subscribe("t", "any.topic")
    c.send(
        op="publish",
        tag="p",
        topic="any.topic",
        args=[1, "two"],
        kwargs={"three": 3},
        options={"exclude_me": False},
    )
    yield c.wait_events("t", 1)
    e = c.events("t")[0]
    assert e["args"] == [1, "two"] and e["kwargs"] == {"three": 3}


def test_permissive_example_config_allows_everything():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "docs" / "examples" / "permissive.toml"
    c = config.load(str(path), {}, {})
    assert c.allow_anonymous and c.allow_publish == ["*"]
