"""
The checks of setting values: each takes a value, returns it if notifyd can
use it and raises :class:`ConfigError` saying what is wrong otherwise.

:data:`notifyd.settings.SETTINGS` names one check per setting;
:func:`notifyd.config.load` runs them and puts the setting's name and source
in front of the message.  :func:`age_seconds` converts a checked age.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value notifyd cannot use."""


def _matching(pattern: str, problem: str) -> Callable[[str], str]:
    """A check that the whole value matches ``pattern`` (else ``problem``)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise ConfigError(problem)
        return value

    return check


def amqp_url(value: str) -> str:
    import pika

    if not re.match(r"amqps?://", value):
        raise ConfigError("must be an amqp:// or amqps:// URL")
    try:
        pika.URLParameters(value)
    except Exception as e:
        raise ConfigError(f"is not a valid AMQP URL ({e})")
    return value


def amqp_urls(values: list[str]) -> list[str]:
    if not values:
        raise ConfigError("needs at least one URL")
    return [amqp_url(v) for v in values]


def binding_keys(values: list[str]) -> list[str]:
    for v in values:
        if not re.fullmatch(r"(?:[^\s.#*]+|\*|#)(?:\.(?:[^\s.#*]+|\*|#))*", v):
            raise ConfigError(
                f"{v!r} is not an AMQP binding key such as 'invoice.#', 'account.*.sent' or '#'"
            )
    return values


def age(value: str) -> str:
    if not re.fullmatch(r"\d+[YMDhms]", value):
        raise ConfigError("must be a number and a unit: Y, M, D, h, m or s (e.g. '7D', '12h')")
    return value


_AGE_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


def age_seconds(value: str) -> float:
    """A RabbitMQ age such as ``7D`` or ``12h`` in seconds (M: 30 days)."""
    return float(int(value[:-1]) * _AGE_UNITS[value[-1]])


exchange = _matching(
    r"[A-Za-z0-9_.:\-]{1,255}",
    "must be 1-255 characters of letters, digits, '-', '_', '.' or ':'",
)


realm = _matching(
    r"[A-Za-z][A-Za-z\d_\-@.]{2,254}",
    "must start with a letter and have 3-255 letters, digits or _-@.",
)


def endpoints(values: list[str]) -> list[str]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    if not values:
        raise ConfigError("needs at least one endpoint")
    for v in values:
        try:
            serverFromString(reactor, v)
        except Exception as e:
            raise ConfigError(
                f"{v!r} is not a listening endpoint such as 'tcp:8080:interface=127.0.0.1' ({e})"
            )
    return values


def endpoints_or_none(values: list[str]) -> list[str]:
    return endpoints(values) if values else values


def one_of(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}")
        return value

    return check


def prefixes(values: list[str]) -> list[str]:
    for v in values:
        if v != "*" and not re.fullmatch(r"[^\s#*]+", v):
            raise ConfigError(f"{v!r} is not a topic prefix (or '*' for every topic)")
    return values


def file(value: str | None) -> str | None:
    if value is not None and not Path(value).is_file():
        raise ConfigError(f"{value!r} is not a readable file")
    return value


def algorithms(values: list[str]) -> list[str]:
    from notifyd.auth import ALGORITHMS

    for v in values:
        if v not in ALGORITHMS:
            raise ConfigError(f"{v!r} is not one of {', '.join(sorted(ALGORITHMS))}")
    return values


def origins(values: list[str]) -> list[str]:
    for v in values:
        if v != "*" and not re.fullmatch(r"https?://[A-Za-z0-9*.\-]+(:\d+|:\*)?", v):
            raise ConfigError(
                f"{v!r} is not an origin such as 'https://app.example.com', "
                "'https://*.example.com' or '*'"
            )
    return values


claim = _matching(
    r"[A-Za-z_][A-Za-z0-9_\-]{0,63}",
    "must be a claim name (letters, digits, _ and -)",
)


role = _matching(
    r"[A-Za-z0-9_\-]{1,64}",
    "must be a role name (letters, digits, _ and -)",
)


def each(check: Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    """A list validator that applies ``check`` to every item."""

    def check_all(values: list[str]) -> list[str]:
        for v in values:
            check(v)
        return values

    return check_all


roles = each(role)
claims = each(claim)


def between(lo: float, hi: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not lo <= value <= hi:
            raise ConfigError(f"must be between {lo} and {hi}")
        return value

    return check


def compaction(value: int) -> int:
    """0 (off) or a threshold of at least 4 keys."""
    if value != 0 and not 4 <= value <= 10_000_000:
        raise ConfigError("must be 0 (off) or between 4 and 10000000")
    return value


def directory(value: str | None) -> str | None:
    if value is not None and not Path(value).is_dir():
        raise ConfigError(f"{value!r} is not a directory")
    return value


def workers(value: str) -> str:
    """``auto`` or a whole number of worker processes from 1 to 256."""
    text = str(value).strip().lower()
    if text == "auto":
        return text
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise ConfigError("must be 'auto' or a whole number from 1 to 256")
    return str(int(text))
