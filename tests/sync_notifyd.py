"""A blocking notifyd child process for tests that do not run the reactor
(the browser test drives Playwright's synchronous API).  Waits are on lines
the process prints, each with a timeout."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
from typing import Any

from tests.harness import ROOT, notifyd_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SyncNotifyd:
    def __init__(self, amqp_url: str, exchange: str, port: int, *extra: str) -> None:
        self.args = notifyd_args(amqp_url, exchange, port, *extra)
        self.port = port
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> SyncNotifyd:
        self.lines = []
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
            env=dict(os.environ),
            text=True,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()
        self.wait_line(r"notifyd ready", timeout)
        return self

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout: float = 30) -> Any:
        rx = re.compile(pattern)

        def found() -> Any:
            return next((m for m in map(rx.search, self.lines) if m), None) or (
                self.proc.poll() is not None and "exited"
            )

        with self._cond:
            if not self._cond.wait_for(found, timeout):
                raise TimeoutError(f"no {pattern!r} from notifyd: {self.lines[-20:]}")
            m = found()
        if m == "exited":
            raise RuntimeError(f"notifyd exited: {self.lines[-30:]}")
        return m

    def stop(self, timeout: float = 30) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            return self.proc.wait(timeout)
        return self.proc.returncode if self.proc else 0
