"""
Log output.  notifyd logs through :class:`twisted.logger.Logger` only.

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
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, formatEvent
from zope.interface import implementer

_SKIP = {"format", "message", "system", "time", "isError", "why", "failure"}
_PLAIN = (str, int, float, bool, type(None))


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


def install(application: Any, log_format: str) -> None:
    """Make twistd log in ``log_format`` for ``application``."""
    if log_format == "json" and hasattr(application, "setComponent"):
        application.setComponent(ILogObserver, JsonLines())
