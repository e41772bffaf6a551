"""
Log output.  notifyd logs through :class:`Logger` (a :class:`twisted.logger.Logger`) only.

* ``text`` (default): twistd's usual human-readable lines.
* ``json``: one JSON object per line on standard output, for journald, Loki,
  Elasticsearch…::

    {"time": "2026-11-28T03:04:05.123456+00:00", "level": "info",
     "namespace": "notifyd.amqp.AMQPService",
     "message": "connecting to RabbitMQ at 127.0.0.1:5672",
     "host": "127.0.0.1", "port": 5672}

  The event's own fields (``peer``, ``reason``, ``key``…) are kept when they
  are plain values; failures add ``traceback``.

Info-level lines never carry event payloads, tokens, signatures or secrets:
they name peers, topics, routing keys, reasons and counts.

Everything a client, a token or RabbitMQ sent is escaped before it reaches a
log line: every module logs through :class:`Logger` (``from notifyd.logs
import Logger``), which replaces C0 and C1 control characters (ESC of ANSI
sequences, CR, LF, TAB…), Unicode bidi controls (U+202A–U+202E,
U+2066–U+2069, U+200E, U+200F, U+061C), U+2028/U+2029 and lone surrogates in
its fields by visible escapes (``\\x1b``, ``\\u202e``, ``\\ud800``); other
non-ASCII text (``é``, ``日本``) is kept.  A backslash is not escaped, so
escaping is idempotent.  A line holding a lone surrogate is therefore written,
never dropped, by both outputs.  Lines from other libraries (Twisted,
Autobahn) pass through :func:`escape_event` once :func:`install` has run.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime
from enum import Enum
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.logger import Logger as _TwistedLogger
from twisted.python.failure import Failure
from zope.interface import implementer

_SKIP = {"format", "message", "system", "time", "isError", "why", "failure"}
_PLAIN = (str, int, float, bool, type(None))

# C0, DEL, C1; line and paragraph separators; bidi controls; lone surrogates
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SURROGATE = re.compile("[\ud800-\udfff]")
# values whose str() is already safe: numbers, bytes (repr), containers
# (their str() is the repr of their items, which escapes all of the above)
_SAFE = (int, float, bool, type(None), bytes, bytearray, list, tuple, dict, set, frozenset)
_CONSTANT = type(LogLevel.info)  # constantly's NamedConstant


def _escape_char(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str) -> str:
    """``text`` with control, bidi and separator characters and lone
    surrogates replaced by visible escapes (``\\x1b``, ``\\u202e``,
    ``\\ud800``)."""
    return _UNSAFE.sub(_escape_char, text)


class _Escaped:
    """Formats like the object it wraps, escaped (for exceptions and other
    objects whose ``str()`` may repeat what a client sent)."""

    __slots__ = ("_obj",)

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def __format__(self, spec: str) -> str:
        return escape(format(self._obj, spec))

    def __str__(self) -> str:
        return escape(str(self._obj))

    def __repr__(self) -> str:
        return escape(repr(self._obj))

    def __getattr__(self, name: str) -> Any:
        return escape_value(getattr(self._obj, name))

    def __getitem__(self, key: Any) -> Any:
        return escape_value(self._obj[key])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return escape_value(self._obj(*args, **kwargs))


def escape_value(value: Any) -> Any:
    """A log field as it may reach an observer: strings escaped, safe plain
    values as they are, anything else wrapped so its text is escaped."""
    if isinstance(value, str):
        return escape(value)
    if isinstance(value, (_SAFE, Failure, _Escaped, _CONSTANT, Enum)):
        return value
    return _Escaped(value)


class Logger(_TwistedLogger):
    """:class:`twisted.logger.Logger` whose fields are escaped (see the
    module's docstring) before any observer sees them."""

    #: the lowest level notifyd's own loggers write (setting ``log_level``);
    #: debug lines (each binding change, say) are dropped by default
    level: LogLevel = LogLevel.info

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level < Logger.level:
            return
        for key, value in kwargs.items():
            if not key.startswith("log_"):
                kwargs[key] = escape_value(value)
        super().emit(level, format, **kwargs)


def escape_event(event: dict[str, Any]) -> None:
    """Escape, in place, an event that did not come through :class:`Logger`
    (Twisted's, Autobahn's): its string fields fully, and lone surrogates in
    its format and legacy text, which would otherwise make a text log drop the
    whole line."""
    for key, value in event.items():
        if not isinstance(value, str):
            continue
        if not key.startswith("log_") and key not in ("format", "message", "system"):
            event[key] = escape(value)
        elif key in ("log_format", "log_text", "format"):
            event[key] = _SURROGATE.sub(_escape_char, value)


@implementer(ILogObserver)
class JsonLines:
    """Writes each log event as one line of JSON."""

    def __init__(self, out: IO[str] | None = None) -> None:
        # the real stdout: twistd later points sys.stdout into the log itself
        self._out = out or sys.__stdout__

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), tz=UTC).isoformat(),
            "level": getattr(level, "name", "info"),
            "namespace": event.get("log_namespace", "-"),
            "message": formatEvent(event),
        }
        for key, value in event.items():
            if not key.startswith("log_") and key not in _SKIP and isinstance(value, _PLAIN):
                record.setdefault(key, value)
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self._out.write(json.dumps(record, default=str) + "\n")
        self._out.flush()


_installed: list[Any] = []


def set_level(name: str) -> None:
    """Write notifyd's own log lines from level ``name`` (debug, info, warn,
    error) up."""
    Logger.level = LogLevel.levelWithName(name)


def install(application: Any, log_format: str) -> None:
    """Make twistd log in ``log_format`` for ``application``, and make lines
    from other libraries safe to write: :func:`escape_event` runs before the
    observers twistd adds later, and a text log on standard output writes
    anything left unencodable as a backslash escape instead of dropping it."""
    if not _installed:
        _installed.append(escape_event)
        globalLogPublisher.addObserver(escape_event)
        out = sys.__stdout__
        if log_format == "text" and out is not None and hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")
    if log_format == "json" and hasattr(application, "setComponent"):
        application.setComponent(ILogObserver, JsonLines())


def configure(application: Any, log_format: str, log_level: str) -> None:
    """:func:`install` for ``application`` and :func:`set_level`: what a
    service tree does when twistd attaches it to its application."""
    install(application, log_format)
    set_level(log_level)
