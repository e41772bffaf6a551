"""A model of tenants, users, roles, subscriptions and targeted events, with
an oracle written independently of notifyd's matching, authorization and
filtering code.  Used by the property test and by its end-to-end slice."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from functools import cache

AUTHZ_TOML = """
[roles.user]
subscribe = [
  { uri = "acct.{authextra.account}.", match = "prefix" },
  { uri = "user.{authid}.", match = "prefix" },
]
[roles.admin]
subscribe = [{ uri = "", match = "prefix" }]
[roles.auditor]
subscribe = [
  { uri = "acct..invoice.sent", match = "wildcard" },
  { uri = "user.{authid}.", match = "prefix" },
]
"""
# the same rules, as the oracle reads them: (template, match)
RULES = {
    "user": [("acct.{account}.", "prefix"), ("user.{authid}.", "prefix")],
    "admin": [("", "prefix")],
    "auditor": [("acct..invoice.sent", "wildcard"), ("user.{authid}.", "prefix")],
}
USERS = [
    ("alice", "user", "1"),
    ("bob", "user", "2"),
    ("carol", "user", "12"),
    ("root", "admin", "1"),
    ("audra", "auditor", "2"),
]
PATTERNS = [
    ("acct.1.", "prefix"),
    ("acct.1", "prefix"),
    ("acct.2.invoice.", "prefix"),
    ("acct..invoice.sent", "wildcard"),
    ("acct.1.invoice.sent", "exact"),
    ("acct.12.invoice.paid", "exact"),
    ("acct.2..sent", "wildcard"),
    ("user.alice.", "prefix"),
    ("user.bob.note", "exact"),
    ("user..note", "wildcard"),
    ("acct.", "prefix"),
    ("", "prefix"),
]
TOPICS = [
    "acct.1.invoice.sent",
    "acct.1.invoice.paid",
    "acct.2.invoice.sent",
    "acct.12.invoice.paid",
    "acct.12.invoice.sent",
    "acct.2.audit.log",
    "user.alice.note",
    "user.bob.note",
]
# the universe over which "every topic a subscription can match" is judged
_PARTS = ["acct", "user", "1", "2", "12", "alice", "bob", "invoice", "sent", "paid", "note"]
UNIVERSE = [".".join(p) for n in range(1, 5) for p in itertools.product(_PARTS, repeat=n)]


def oracle_match(pattern: str, match: str, topic: str) -> bool:
    if match == "exact":
        return pattern == topic
    if match == "prefix":
        return topic[: len(pattern)] == pattern
    rx = "^" + r"\.".join("[^.]+" if p == "" else re.escape(p) for p in pattern.split(".")) + "$"
    return re.match(rx, topic) is not None


@cache
def _covered(rule: str, rule_match: str, pattern: str, match: str) -> bool:
    if match == "exact":
        return oracle_match(rule, rule_match, pattern)
    return all(
        oracle_match(rule, rule_match, t) for t in UNIVERSE if oracle_match(pattern, match, t)
    )


def oracle_may_subscribe(user: tuple[str, str, str], pattern: str, match: str) -> bool:
    authid, role, account = user
    for template, rule_match in RULES.get(role, []):
        rule = template.replace("{account}", account).replace("{authid}", authid)
        if _covered(rule, rule_match, pattern, match):
            return True
    return False


#: how a backend may send a targeting header's value (AMQP field types)
VALUE_TYPES = ["str", "array", "table", "bytes", "int", "bool"]
#: types whose meaning is the text's, if notifyd takes them at all
SAME_MEANING = {"str", "bytes", "int"}


@dataclass
class Event:
    seq: int
    topic: str
    headers: dict = field(default_factory=dict)
    # the same targeting, for the oracle (session indexes, not ids)
    eligible: list[int] | None = None
    exclude: list[int] | None = None
    #: header name -> the AMQP value type it is sent as (absent: "str")
    types: dict[str, str] = field(default_factory=dict)
    #: sent with ``wamp-retain: true``
    retain: bool = False


@dataclass
class Scenario:
    sessions: list[tuple[tuple[str, str, str], list[tuple[str, str]]]]
    events: list[Event]


def make_scenario(
    rnd: random.Random, n_events: int = 12, typed: bool = False, retain: bool = False
) -> Scenario:
    """A random scenario; ``typed``: targeting headers are also sent as
    arrays, tables, bytes, ints and bools; ``retain``: some events are sent
    with ``wamp-retain: true``."""
    sessions = []
    for _ in range(rnd.randint(2, 7)):
        user = rnd.choice(USERS)
        subs = rnd.sample(PATTERNS, rnd.randint(1, 4))
        sessions.append((user, subs))
    events = []
    for seq in range(n_events):
        e = Event(seq=seq, topic=rnd.choice(TOPICS))
        for _ in range(rnd.choice([0, 0, 1, 1, 2])):
            kind = rnd.choice(
                [
                    "eligible",
                    "exclude",
                    "eligible-authid",
                    "exclude-authid",
                    "eligible-authrole",
                    "exclude-authrole",
                    "eligible-extra-account",
                    "exclude-extra-account",
                ]
            )
            if kind == "eligible":
                e.eligible = rnd.sample(range(len(sessions)), rnd.randint(0, len(sessions)))
            elif kind == "exclude":
                e.exclude = rnd.sample(range(len(sessions)), rnd.randint(1, len(sessions)))
            elif kind.endswith("authid"):
                e.headers[f"wamp-{kind}"] = ",".join(
                    sorted(rnd.sample([u[0] for u in USERS], rnd.randint(1, 3)))
                )
            elif kind.endswith("authrole"):
                e.headers[f"wamp-{kind}"] = ",".join(
                    sorted(rnd.sample(["user", "admin", "auditor"], rnd.randint(1, 2)))
                )
            else:
                e.headers[f"wamp-{kind}"] = ",".join(
                    rnd.sample(["1", "2", "12"], rnd.randint(1, 2))
                )
        if typed:
            names = [*e.headers, *(["wamp-eligible"] if e.eligible is not None else [])]
            names += ["wamp-exclude"] if e.exclude is not None else []
            for name in names:
                e.types[name] = rnd.choice(["str", "array", "table", *VALUE_TYPES])
        e.retain = retain and rnd.random() < 0.4
        events.append(e)
    return Scenario(sessions, events)


def typed_value(value: str, kind: str) -> object:
    """``value`` (a comma-separated list) as a backend might send it."""
    items = value.split(",") if value else []
    if kind == "array":
        return items
    if kind == "table":
        return {str(i): v for i, v in enumerate(items)}
    if kind == "bytes":
        return value.encode()
    if kind == "int":
        # one number; the text form of anything else (an int cannot say it)
        return int(value) if value.isdigit() else value
    if kind == "bool":
        return bool(items)
    return value


def typed_headers(event: Event, headers: dict) -> dict:
    """``headers`` (the text form) with each value in its event's type."""
    out = {k: typed_value(v, event.types.get(k, "str")) for k, v in headers.items()}
    if event.retain:
        out["wamp-retain"] = True
    return out


def _kinds(event: Event) -> set[str]:
    return {event.types.get(name, "str") for name in event.headers} | {
        event.types.get(name, "str")
        for name, v in (("wamp-eligible", event.eligible), ("wamp-exclude", event.exclude))
        if v is not None
    }


def oracle_may_receive(scenario: Scenario, i: int, event: Event) -> bool:
    """May session ``i`` see ``event`` at all?  A targeting header sent as an
    array, a table or a bool must make notifyd refuse the event: nobody may
    see it (a RabbitMQ stream drops arrays and tables, so honouring them on
    one path and not on another would widen the audience).  Bytes and ints
    mean what their text means, if notifyd takes them."""
    if not _kinds(event) <= SAME_MEANING:
        return False
    return oracle_entitled(scenario, i, event)


def oracle_must_receive(scenario: Scenario, i: int, event: Event) -> bool:
    """Must session ``i`` see ``event``?  Only if every header was a string
    (anything else may be refused as a whole)."""
    return _kinds(event) <= {"str"} and oracle_entitled(scenario, i, event)


def _listed(value, item) -> bool:
    return item in value.split(",")


def oracle_entitled(scenario: Scenario, i: int, event: Event) -> bool:
    user, subs = scenario.sessions[i]
    authid, role, account = user
    if not any(
        oracle_may_subscribe(user, p, m) and oracle_match(p, m, event.topic) for p, m in subs
    ):
        return False
    if event.eligible is not None and i not in event.eligible:
        return False
    if event.exclude is not None and i in event.exclude:
        return False
    h = event.headers
    checks = [
        ("wamp-eligible-authid", authid, True),
        ("wamp-exclude-authid", authid, False),
        ("wamp-eligible-authrole", role, True),
        ("wamp-exclude-authrole", role, False),
        ("wamp-eligible-extra-account", account, True),
        ("wamp-exclude-extra-account", account, False),
    ]
    for name, value, eligible in checks:
        if name in h and _listed(h[name], value) != eligible:
            return False
    return True
