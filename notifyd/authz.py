"""
Authorization: what a session may subscribe to and publish.  No I/O.

Rules come from the authz file (TOML), per role::

    [roles.user]
    subscribe = [
      { uri = "acct.{authextra.account}.", match = "prefix" },
      { uri = "user.{authid}.", match = "prefix" },
      { uri = "announcements", match = "exact" },
    ]
    publish = [{ uri = "chat.{authextra.account}.", match = "prefix" }]

    [roles.backend]
    subscribe = [{ uri = "", match = "prefix" }]   # everything

    [wampcra.users.billing]
    secret = "a long random secret"
    role = "backend"
    # salt = "…", iterations = 1000, keylen = 32   (optional PBKDF2)
    # extra = { account = "42" }

Semantics:

* **Default deny.**  An action is allowed only if a rule of the session's
  role allows it.  A role without rules may do nothing.
* **Containment.**  A subscription (topic, match) is allowed only if *every*
  topic it can match is allowed by one rule: an exact rule allows that
  topic; a prefix rule ``p`` allows exact topics and prefixes starting with
  ``p`` and wildcards whose fixed leading part starts with ``p``; a
  wildcard rule allows exact topics and wildcards it covers position by
  position.  Publishing checks the exact topic.
* **Placeholders** ``{authid}``, ``{authrole}`` and ``{authextra.NAME}``
  are filled from the session (``NAME`` is matched case-insensitively, like
  every claim name).  A value that is missing, empty or not a
  single topic component (it contains ``.``, ``#``, ``*`` or whitespace)
  makes the rule match nothing, so identities cannot widen their rules.

WAMP-CRA users: the authid (the table name), role and every ``extra`` value
must be an identity the targeting headers can name (see :mod:`notifyd.auth`:
no ``,``, no surrounding whitespace, no control characters); ``extra`` names
that differ only in case are refused.  Anything else stops notifyd at start.

Without an authz file (anonymous demo and test set-ups) every role may
subscribe to everything, and publishing follows ``allow_publish`` alone.
``allow_publish`` prefixes are granted to every role in both cases.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from notifyd.auth import AuthConfigError, CraUser, check_identity_component, identity_problem
from notifyd.config import ConfigError, read_toml
from notifyd.topics import MATCH_EXACT, MATCH_PREFIX, MATCH_WILDCARD, InvalidTopic, validate_pattern

_PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[A-Za-z0-9_\-]+)?)\}")


@dataclass(frozen=True)
class Rule:
    uri: str
    match: str


@dataclass
class RolePolicy:
    subscribe: list[Rule] = field(default_factory=list)
    publish: list[Rule] = field(default_factory=list)


class Identity:
    """What a rule's placeholders can refer to."""

    def __init__(self, authid: str | None, authrole: str | None, authextra: dict[str, Any] | None):
        self.authid = authid
        self.authrole = authrole
        self.authextra = authextra or {}
        self._folded: dict[str, Any] | None = None

    def lookup(self, name: str) -> str | None:
        if name == "authid":
            return self.authid
        if name == "authrole":
            return self.authrole
        if name.startswith("authextra."):
            if self._folded is None:
                self._folded = {
                    k.lower(): v for k, v in self.authextra.items() if isinstance(k, str)
                }
            value = self._folded.get(name[len("authextra.") :].lower())
            return value if isinstance(value, str) else None
        return None


def fill(uri: str, identity: Identity) -> str | None:
    """The rule URI with placeholders filled, or None if one cannot be."""
    failed = False

    def sub(m: re.Match[str]) -> str:
        nonlocal failed
        value = identity.lookup(m.group(1))
        if value is None or not check_identity_component(value):
            failed = True
            return ""
        return value

    filled = _PLACEHOLDER.sub(sub, uri)
    return None if failed else filled


def _fixed_head(parts: list[str]) -> tuple[str, bool]:
    """For a wildcard: the text every matching topic starts with, and
    whether the pattern has no empty component at all."""
    for i, part in enumerate(parts):
        if not part:
            head = ".".join(parts[:i])
            return (head + "." if i else ""), False
    return ".".join(parts), True


def contains(rule_uri: str, rule_match: str, uri: str, match: str) -> bool:
    """Does every topic that (uri, match) can match also match the rule?"""
    if match == MATCH_WILDCARD:
        parts = uri.split(".")
        if all(parts):  # no wildcard position: it is an exact topic
            return contains(rule_uri, rule_match, uri, MATCH_EXACT)
    if rule_match == MATCH_EXACT:
        return match == MATCH_EXACT and uri == rule_uri
    if rule_match == MATCH_PREFIX:
        if match in (MATCH_EXACT, MATCH_PREFIX):
            return uri.startswith(rule_uri)
        head, _ = _fixed_head(uri.split("."))
        return head.startswith(rule_uri)
    if rule_match == MATCH_WILDCARD:
        want = rule_uri.split(".")
        if match == MATCH_PREFIX:
            return False  # a prefix reaches topics of any length
        got = uri.split(".")
        if len(got) != len(want):
            return False
        return all(w == "" or (g != "" and g == w) for w, g in zip(want, got, strict=True))
    return False


class Authorizer:
    """Role policies plus the global ``allow_publish`` prefixes."""

    def __init__(
        self,
        roles: dict[str, RolePolicy] | None,
        allow_publish: tuple[str, ...] = (),
        cra_users: dict[str, CraUser] | None = None,
    ) -> None:
        self.roles = roles
        self.allow_publish = tuple(allow_publish)
        self.cra_users = cra_users or {}

    @property
    def has_rules(self) -> bool:
        return self.roles is not None

    def may_subscribe(self, identity: Identity, uri: str, match: str) -> bool:
        if self.roles is None:
            return True
        policy = self.roles.get(identity.authrole or "")
        return policy is not None and self._allowed(policy.subscribe, identity, uri, match)

    def may_publish(self, identity: Identity, topic: str) -> bool:
        if topic.startswith("wamp."):
            return False
        for prefix in self.allow_publish:
            if prefix == "*" or topic.startswith(prefix):
                return True
        if self.roles is None:
            return False
        policy = self.roles.get(identity.authrole or "")
        return policy is not None and self._allowed(policy.publish, identity, topic, MATCH_EXACT)

    def subscribe_checker(self, identity: Identity) -> Any:
        """``may_subscribe`` for one identity, with the rules filled once:
        for checking many subscriptions (the meta API)."""
        if self.roles is None:
            return lambda uri, match: True
        policy = self.roles.get(identity.authrole or "")
        if policy is None:
            return lambda uri, match: False
        filled = [
            (uri, rule.match)
            for rule in policy.subscribe
            if (uri := fill(rule.uri, identity)) is not None
        ]

        def check(uri: str, match: str) -> bool:
            return any(contains(r_uri, r_match, uri, match) for r_uri, r_match in filled)

        return check

    @staticmethod
    def _allowed(rules: list[Rule], identity: Identity, uri: str, match: str) -> bool:
        for rule in rules:
            filled = fill(rule.uri, identity)
            if filled is not None and contains(filled, rule.match, uri, match):
                return True
        return False


def _rules(path: str, where: str, items: Any) -> list[Rule]:
    if not isinstance(items, list):
        raise AuthConfigError(f"authz_file {path}: {where} must be a list of rules")
    rules = []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"uri": item, "match": MATCH_EXACT}
        if not isinstance(item, dict) or set(item) - {"uri", "match"} or "uri" not in item:
            raise AuthConfigError(
                f'authz_file {path}: {where}[{i}] must be {{ uri = "…", match = "exact|prefix|wildcard" }}'
            )
        match = item.get("match", MATCH_EXACT)
        uri = item["uri"]
        probe = _PLACEHOLDER.sub("x", uri) if isinstance(uri, str) else uri
        try:
            validate_pattern(probe, match)
        except InvalidTopic as e:
            raise AuthConfigError(f"authz_file {path}: {where}[{i}]: {e}")
        rules.append(Rule(uri, match))
    return rules


def load_authz(path: str) -> tuple[dict[str, RolePolicy], dict[str, CraUser]]:
    """Roles and wampcra users from an authz file."""
    try:
        data = read_toml(path, "authz_file")
    except ConfigError as e:
        raise AuthConfigError(str(e)) from None
    unknown = set(data) - {"roles", "wampcra"}
    if unknown:
        raise AuthConfigError(f"authz_file {path}: unknown section {sorted(unknown)[0]!r}")
    roles: dict[str, RolePolicy] = {}
    for name, body in data.get("roles", {}).items():
        if not isinstance(body, dict) or set(body) - {"subscribe", "publish"}:
            raise AuthConfigError(
                f"authz_file {path}: [roles.{name}] may only have subscribe and publish"
            )
        roles[name] = RolePolicy(
            subscribe=_rules(path, f"roles.{name}.subscribe", body.get("subscribe", [])),
            publish=_rules(path, f"roles.{name}.publish", body.get("publish", [])),
        )
    users: dict[str, CraUser] = {}
    for name, body in data.get("wampcra", {}).get("users", {}).items():
        problem = identity_problem(name)
        if problem is not None:
            raise AuthConfigError(f"authz_file {path}: wampcra user {name!r}: the authid {problem}")
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("secret"), str)
            or not body["secret"]
        ):
            raise AuthConfigError(f"authz_file {path}: [wampcra.users.{name}] needs a secret")
        if not isinstance(body.get("role"), str):
            raise AuthConfigError(f"authz_file {path}: [wampcra.users.{name}] needs a role")
        problem = identity_problem(body["role"])
        if problem is not None:
            raise AuthConfigError(f"authz_file {path}: [wampcra.users.{name}] role {problem}")
        extra = body.get("extra", {})
        if not isinstance(extra, dict):
            raise AuthConfigError(
                f"authz_file {path}: [wampcra.users.{name}] extra must be a table"
            )
        seen: dict[str, str] = {}
        for k, v in extra.items():
            if k.lower() in seen:
                raise AuthConfigError(
                    f"authz_file {path}: [wampcra.users.{name}] extra names "
                    f"{seen[k.lower()]!r} and {k!r} differ only in case"
                )
            seen[k.lower()] = k
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                raise AuthConfigError(
                    f"authz_file {path}: [wampcra.users.{name}] extra.{k} must be a "
                    "string or an integer"
                )
            problem = identity_problem(str(v))
            if problem is not None:
                raise AuthConfigError(
                    f"authz_file {path}: [wampcra.users.{name}] extra.{k} {problem}"
                )
        salt = body.get("salt")
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise AuthConfigError(
                f"authz_file {path}: [wampcra.users.{name}] salt must be a non-empty string"
            )
        kdf = {}
        for key, default, lo, hi in (("iterations", 1000, 1, 10_000_000), ("keylen", 32, 16, 128)):
            value = body.get(key, default)
            if type(value) is not int or not lo <= value <= hi:
                raise AuthConfigError(
                    f"authz_file {path}: [wampcra.users.{name}] {key} must be an "
                    f"integer from {lo} to {hi}"
                )
            kdf[key] = value
        users[name] = CraUser(
            secret=body["secret"],
            role=body["role"],
            extra={k: str(v) for k, v in extra.items()},
            salt=salt,
            iterations=kdf["iterations"],
            keylen=kdf["keylen"],
        )
    return roles, users
