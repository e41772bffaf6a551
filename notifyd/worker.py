"""
``python -m notifyd.worker``: one worker process of ``--workers`` (see
:mod:`notifyd.workers`, which starts it).

It reads its spec, one JSON line, from standard input: its index, its
settings and the listening sockets it inherited (file descriptors).  It runs
a full node on those sockets, logs JSON lines on standard output for the
parent to relay, stops gracefully on SIGTERM or SIGINT, and by itself when
its parent is gone.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from typing import Any

from twisted.internet.endpoints import AdoptedStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import globalLogBeginner, jsonFileLogObserver

from notifyd import logs
from notifyd.config import Config
from notifyd.logs import Logger
from notifyd.tap import NotifydService

_log = Logger()


def _watch_parent(reactor: Any, parent: int) -> LoopingCall:
    def check() -> None:
        if os.getppid() != parent and reactor.running:
            _log.warn("the notifyd parent process is gone; stopping")
            reactor.stop()

    watch = LoopingCall(check)
    watch.clock = reactor
    watch.start(1.0, now=False)
    return watch


def _to_parent(observer: Any) -> Any:
    """``observer``, with a failure's traceback as text (JSON keeps its
    frames but not the exception's value)."""

    def observe(event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is not None:
            event = dict(event, worker_traceback=failure.getTraceback())
        observer(event)

    return observe


def _stop_on_signals(reactor: Any) -> None:
    """SIGTERM or SIGINT stops the worker once.  (Twisted's own handlers,
    replaced here, complain about a second signal: a terminal's Ctrl-C
    reaches the parent and the worker, and the parent then sends SIGTERM.)"""
    stopping: list[bool] = []

    def stop() -> None:
        if not stopping and reactor.running:
            stopping.append(True)
            reactor.stop()

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(stop)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main() -> None:
    """Run one worker from the spec on standard input."""
    spec = json.loads(sys.stdin.buffer.readline())
    from twisted.internet import reactor

    settings = Config(spec["settings"])
    logs.install(None, "json")
    logs.set_level(settings.log_level)
    globalLogBeginner.beginLoggingTo(
        [_to_parent(jsonFileLogObserver(sys.stdout))], redirectStandardIO=False, discardBuffer=True
    )
    endpoints = [
        (
            s["description"],
            AdoptedStreamServerEndpoint(reactor, s["fd"], getattr(socket, "AF_" + s["family"])),
        )
        for s in spec["listen"]
    ]
    service = NotifydService(settings, reactor, listen_endpoints=endpoints, admin_access_log=False)
    failed: list[bool] = []

    def start() -> None:
        try:
            service.startService()
        except Exception:
            _log.failure("worker {index} cannot start", index=spec["index"])
            failed.append(True)
            reactor.stop()

    reactor.callWhenRunning(start)
    reactor.callWhenRunning(_stop_on_signals, reactor)
    reactor.callWhenRunning(_watch_parent, reactor, spec.get("parent", os.getppid()))
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: service.stopService() if service.running else None
    )
    reactor.run()
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
