"""
Revocation: kill orders that end sessions at once.  No I/O.

A backend that removes a user from an account ends that user's sessions on
every node with one AMQP message, without waiting for the ticket to expire.

The control message
-------------------
Exchange ``<exchange>.control`` (a fanout exchange; every node binds a queue
of its own to it, so every node gets every order), any routing key, body
UTF-8 JSON, ``content_type`` ``application/json``::

    {"kill": {"authid": "alice"},
     "reason": "wamp.close.killed",
     "message": "removed from account 42"}

``kill`` (required) names exactly one selector:

================================= ============================================
``{"session": 1234567}``          the session with that id
``{"authid": "alice"}``           every session with that authid
``{"authrole": "user"}``          every session with that authrole
``{"extra": ["account", "42"]}``  every session whose authextra NAME (compared
                                  case-insensitively) has exactly that value
================================= ============================================

``reason`` (optional, default ``wamp.close.killed``) is the GOODBYE reason, a
WAMP URI (lower-case letters, digits and ``_`` between dots).  ``message``
(optional, at most 1,000 characters) is the GOODBYE's ``message``.
``except`` (optional, a session id) is a session the order never selects
(``wamp.session.kill_by_authid`` called by a session of that authid keeps the
caller).  Any other key, a wrong type, an empty order, several selectors or
a body that is not a UTF-8 JSON object is refused whole (the node logs it
and drops the message): an order never ends more sessions than it says.

Each selected session gets GOODBYE with the reason and message; its
subscriptions end at once and the connection is closed without waiting for
the client's GOODBYE.  Values are compared exactly (an authid ``alice``
does not select ``Alice``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from notifyd.uris import CLOSE_KILLED

_URI = re.compile(r"[0-9a-z_]+(?:\.[0-9a-z_]+)*\Z")
_SELECTORS = ("session", "authid", "authrole", "extra")
_KEYS = {"kill", "reason", "message", "except"}
MAX_MESSAGE = 1000
MAX_VALUE = 255
MAX_BODY = 64 * 1024


def _session_id(value: Any, what: str) -> int:
    if type(value) is not int or not 0 < value <= 2**53:
        raise ValueError(f"{what} must be a WAMP session id (an integer from 1 to 2**53)")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_VALUE:
        raise ValueError(f"{what} must be a non-empty string of at most {MAX_VALUE} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid UTF-8 text") from None
    return value


def check_reason(reason: Any) -> str:
    """``reason`` if it is a WAMP URI (a GOODBYE reason), else ValueError."""
    if not isinstance(reason, str) or len(reason) > MAX_VALUE or not _URI.match(reason):
        raise ValueError("reason must be a WAMP URI such as 'wamp.close.killed'")
    return reason


def check_message(message: Any) -> str | None:
    if message is None:
        return None
    if not isinstance(message, str) or len(message) > MAX_MESSAGE:
        raise ValueError(f"message must be a string of at most {MAX_MESSAGE} characters")
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("message is not valid UTF-8 text") from None
    return message


class KillOrder:
    """Which sessions to end, and with what GOODBYE."""

    __slots__ = ("session", "authid", "authrole", "extra", "reason", "message", "exclude")

    def __init__(
        self,
        session: int | None = None,
        authid: str | None = None,
        authrole: str | None = None,
        extra: tuple[str, str] | None = None,
        reason: str = CLOSE_KILLED,
        message: str | None = None,
        exclude: int | None = None,
    ) -> None:
        self.session = session
        self.authid = authid
        self.authrole = authrole
        self.extra = tuple(extra) if extra is not None else None
        self.reason = reason
        self.message = message
        #: a session id this order never selects (the caller of kill_by_*)
        self.exclude = exclude

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"KillOrder({fields})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KillOrder):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def selects(self, session: Any) -> bool:
        """Does this order end ``session`` (anything with ``session_id``,
        ``authid``, ``authrole`` and ``authextra``)?  An order without a
        selector selects nothing."""
        sid = getattr(session, "session_id", None)
        if self.exclude is not None and sid == self.exclude:
            return False
        if self.session is not None:
            return sid == self.session
        if self.authid is not None:
            return getattr(session, "authid", None) == self.authid
        if self.authrole is not None:
            return getattr(session, "authrole", None) == self.authrole
        if self.extra is not None:
            name, value = self.extra
            wanted = name.lower()
            for key, have in (getattr(session, "authextra", None) or {}).items():
                if isinstance(key, str) and key.lower() == wanted:
                    return have == value
            return False
        return False

    def to_body(self) -> bytes:
        """The control message body (see the module docstring)."""
        if self.session is not None:
            kill: dict[str, Any] = {"session": self.session}
        elif self.authid is not None:
            kill = {"authid": self.authid}
        elif self.authrole is not None:
            kill = {"authrole": self.authrole}
        elif self.extra is not None:
            kill = {"extra": list(self.extra)}
        else:
            kill = {}
        body: dict[str, Any] = {"kill": kill, "reason": self.reason}
        if self.message is not None:
            body["message"] = self.message
        if self.exclude is not None:
            body["except"] = self.exclude
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")

    @classmethod
    def from_body(cls, body: bytes) -> KillOrder:
        """Parse a control message; ValueError says what is wrong with it."""
        if not isinstance(body, (bytes, bytearray)):
            raise ValueError("a kill order is bytes")
        if len(body) > MAX_BODY:
            raise ValueError(f"a kill order is at most {MAX_BODY} bytes")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("a kill order must be UTF-8") from None
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, RecursionError) as e:
            raise ValueError(f"a kill order must be JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError("a kill order must be a JSON object")
        unknown = set(data) - _KEYS
        if unknown:
            raise ValueError(f"unknown key {sorted(unknown)[0]!r} in kill order")
        kill = data.get("kill")
        if not isinstance(kill, dict):
            raise ValueError('a kill order needs "kill": {"<selector>": value}')
        unknown = set(kill) - set(_SELECTORS)
        if unknown:
            raise ValueError(
                f"unknown selector {sorted(unknown)[0]!r} (one of {', '.join(_SELECTORS)})"
            )
        if len(kill) != 1:
            raise ValueError(f"a kill order names exactly one of {', '.join(_SELECTORS)}")
        order = cls(
            reason=check_reason(data.get("reason", CLOSE_KILLED)),
            message=check_message(data.get("message")),
            exclude=_session_id(data["except"], "except") if "except" in data else None,
        )
        ((name, value),) = kill.items()
        if name == "session":
            order.session = _session_id(value, "kill.session")
        elif name == "authid":
            order.authid = _text(value, "kill.authid")
        elif name == "authrole":
            order.authrole = _text(value, "kill.authrole")
        else:
            if not isinstance(value, list) or len(value) != 2:
                raise ValueError('kill.extra must be ["name", "value"]')
            order.extra = (_text(value[0], "kill.extra name"), _text(value[1], "kill.extra value"))
        return order


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
