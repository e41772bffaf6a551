"""Authorization rules: containment, placeholders, default deny, the file."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notifyd.auth import AuthConfigError
from notifyd.authz import Authorizer, Identity, RolePolicy, Rule, contains, fill, load_authz
from notifyd.topics import InvalidTopic, matches, validate_pattern


@pytest.mark.parametrize(
    "rule, request_, allowed",
    [
        (("acct.42.", "prefix"), ("acct.42.invoice.sent", "exact"), True),
        (("acct.42.", "prefix"), ("acct.42.", "prefix"), True),
        (("acct.42.", "prefix"), ("acct.42.inv", "prefix"), True),
        (("acct.42.", "prefix"), ("acct.4", "prefix"), False),
        (("acct.42.", "prefix"), ("acct.", "prefix"), False),
        (("acct.42.", "prefix"), ("acct.42..sent", "wildcard"), True),
        (("acct.42.", "prefix"), ("acct..invoice", "wildcard"), False),
        (("acct.42.", "prefix"), ("acct.43.x", "exact"), False),
        (("", "prefix"), ("anything.at.all", "wildcard"), True),
        (("a.b", "exact"), ("a.b", "exact"), True),
        (("a.b", "exact"), ("a.b", "wildcard"), True),
        (("a.b", "exact"), ("a.", "wildcard"), False),
        (("a.b", "exact"), ("a.b", "prefix"), False),
        (("acct..sent", "wildcard"), ("acct.42.sent", "exact"), True),
        (("acct..sent", "wildcard"), ("acct.42.sent", "wildcard"), True),
        (("acct..sent", "wildcard"), ("acct..sent", "wildcard"), True),
        (("acct.42.sent", "wildcard"), ("acct..sent", "wildcard"), False),
        (("acct..sent", "wildcard"), ("acct.", "prefix"), False),
        (("acct..sent", "wildcard"), ("acct.42.sent.x", "exact"), False),
    ],
)
def test_containment(rule, request_, allowed):
    assert contains(*rule, *request_) is allowed


def test_placeholders_fill_from_the_session():
    ident = Identity("alice", "user", {"account": "42"})
    assert fill("acct.{authextra.account}.user.{authid}.", ident) == "acct.42.user.alice."
    assert fill("role.{authrole}", ident) == "role.user"


@pytest.mark.parametrize("account", [None, "", "4.2", "#", "*", "a b", 42])
def test_placeholder_values_that_could_widen_a_rule_match_nothing(account):
    ident = Identity("alice", "user", {} if account is None else {"account": account})
    assert fill("acct.{authextra.account}.", ident) is None
    authz = Authorizer(
        {"user": RolePolicy(subscribe=[Rule("acct.{authextra.account}.", "prefix")])}
    )
    assert not authz.may_subscribe(ident, "acct.", "prefix")
    assert not authz.may_subscribe(ident, "acct.4.2.x", "exact")


def test_default_deny_and_roles():
    authz = Authorizer(
        {
            "user": RolePolicy(
                subscribe=[Rule("acct.{authextra.account}.", "prefix")],
                publish=[Rule("chat.{authextra.account}.", "prefix")],
            ),
            "norules": RolePolicy(),
        },
        allow_publish=("public.",),
    )
    alice = Identity("alice", "user", {"account": "42"})
    assert authz.may_subscribe(alice, "acct.42.invoice.", "prefix")
    assert not authz.may_subscribe(alice, "acct.43.invoice.", "prefix")
    assert not authz.may_subscribe(Identity("x", "norules", {}), "acct.42.", "prefix")
    assert not authz.may_subscribe(Identity("x", "ghost", {}), "anything", "exact")
    assert authz.may_publish(alice, "chat.42.room")
    assert not authz.may_publish(alice, "chat.43.room")
    assert authz.may_publish(
        Identity("x", "norules", {}), "public.notice"
    )  # allow_publish: every role
    assert not authz.may_publish(alice, "wamp.session.on_join")


def test_without_rules_everything_may_be_subscribed():
    authz = Authorizer(None, allow_publish=())
    assert authz.may_subscribe(Identity("a", "anonymous", {}), "", "prefix")
    assert not authz.may_publish(Identity("a", "anonymous", {}), "x.y")


components = st.sampled_from(["a", "b", "acct", "42", "43", "x"])


@st.composite
def patterns(draw):
    match = draw(st.sampled_from(["exact", "prefix", "wildcard"]))
    parts = draw(
        st.lists(
            st.one_of(components, st.just("")) if match == "wildcard" else components,
            min_size=1,
            max_size=4,
        )
    )
    uri = ".".join(parts)
    if match == "prefix":
        uri = uri[: draw(st.integers(0, len(uri)))]
    try:
        validate_pattern(uri, match)
    except InvalidTopic:
        return draw(patterns())
    return uri, match


topics = st.lists(components, min_size=1, max_size=5).map(".".join)


@settings(max_examples=500)
@given(patterns(), patterns(), st.lists(topics, min_size=1, max_size=20))
def test_containment_is_sound(rule, request_, sample):
    """If a rule is said to contain a subscription, every topic the
    subscription matches is matched by the rule."""
    if contains(*rule, *request_):
        for topic in sample:
            if matches(*request_, topic):
                assert matches(*rule, topic), (rule, request_, topic)


def test_authz_file(tmp_path):
    p = tmp_path / "authz.toml"
    p.write_text(
        """
[roles.user]
subscribe = [{ uri = "acct.{authextra.account}.", match = "prefix" }, "announcements"]
publish = [{ uri = "chat.{authextra.account}.", match = "prefix" }]

[wampcra.users.billing]
secret = "svc"
role = "backend"
extra = { account = 42 }
"""
    )
    roles, users = load_authz(str(p))
    assert roles["user"].subscribe == [
        Rule("acct.{authextra.account}.", "prefix"),
        Rule("announcements", "exact"),
    ]
    assert users["billing"].role == "backend" and users["billing"].extra == {"account": "42"}


@pytest.mark.parametrize(
    "text, message",
    [
        ("[roles.user]\nsubscribe = [{ uri = 'a b', match = 'exact' }]\n", "bad component"),
        ("[roles.user]\nsubscribe = [{ uri = 'a', match = 'regex' }]\n", "unknown match policy"),
        ("[roles.user]\nread = []\n", "may only have subscribe and publish"),
        ("[users]\n", "unknown section 'users'"),
        ("[wampcra.users.x]\nrole = 'r'\n", "needs a secret"),
        ("[roles.user\n", "not valid TOML"),
        # WAMP-CRA identities the targeting syntax could not name
        ("[wampcra.users.'a,b']\nsecret = 's'\nrole = 'r'\n", "the authid contains ','"),
        ("[wampcra.users.' a']\nsecret = 's'\nrole = 'r'\n", "leading or trailing whitespace"),
        ('[wampcra.users."a\\u0007"]\nsecret = "s"\nrole = "r"\n', "the authid contains the"),
        ("[wampcra.users.x]\nsecret = 's'\nrole = 'r,s'\n", "role contains ','"),
        ("[wampcra.users.x]\nsecret = 's'\nrole = 'r'\nextra = { a = 'x,y' }\n", "extra.a"),
        (
            "[wampcra.users.x]\nsecret = 's'\nrole = 'r'\nextra = { tenantId = '1', tenantid = '2' }\n",
            "differ only in case",
        ),
        ("[wampcra.users.x]\nsecret = 's'\nrole = 'r'\nextra = { a = [1] }\n", "string or an"),
        ("[wampcra.users.x]\nsecret = 's'\nrole = 'r'\niterations = 'many'\n", "iterations"),
        ("[wampcra.users.x]\nsecret = 's'\nrole = 'r'\nsalt = 5\n", "salt"),
    ],
)
def test_bad_authz_files(tmp_path, text, message):
    p = tmp_path / "authz.toml"
    p.write_text(text)
    with pytest.raises(AuthConfigError, match=message):
        load_authz(str(p))


def test_example_authz_file_loads():
    from pathlib import Path

    roles, users = load_authz(
        str(Path(__file__).resolve().parent.parent / "docs/examples/authz.toml")
    )
    assert set(roles) == {"user", "admin", "backend"} and set(users) == {"dashboard"}


def test_authextra_placeholders_match_names_case_insensitively():
    ident = Identity("alice", "user", {"tenantId": "7"})
    assert fill("t.{authextra.tenantid}.", ident) == "t.7."
    assert fill("t.{authextra.TENANTID}.", ident) == "t.7."


def test_subscribe_checker_agrees_with_may_subscribe():
    authz = Authorizer(
        {
            "user": RolePolicy(
                subscribe=[Rule("acct.{authextra.account}.", "prefix"), Rule("news", "exact")]
            )
        }
    )
    ident = Identity("alice", "user", {"account": "42"})
    check = authz.subscribe_checker(ident)
    for uri, match in [
        ("acct.42.x", "exact"),
        ("acct.42.", "prefix"),
        ("acct.43.", "prefix"),
        ("news", "exact"),
        ("news", "prefix"),
        ("acct..x", "wildcard"),
    ]:
        assert check(uri, match) == authz.may_subscribe(ident, uri, match)
    assert not authz.subscribe_checker(Identity("x", "nobody", {}))("news", "exact")
    assert Authorizer(None).subscribe_checker(ident)("anything", "prefix")
