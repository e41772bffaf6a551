"""
A private RabbitMQ node for development, demos and tests.

This module runs Debian's ``rabbitmq-server`` as a node of its own, with every
file in a project-local folder and every listener on 127.0.0.1, so it never
touches (or depends on) a system-wide RabbitMQ.  It uses only the standard
library, so ``make`` can call it before or after the virtualenv exists::

    python3 -m notifyd.devbroker start     # start (idempotent), wait until ready
    python3 -m notifyd.devbroker stop      # graceful stop, then stop its epmd
    python3 -m notifyd.devbroker status
    python3 -m notifyd.devbroker url       # print the AMQP URL
    python3 -m notifyd.devbroker ctl list_bindings   # rabbitmqctl for this node

Settings come from the environment: ``NOTIFYD_DEV_DIR`` (default
``.rabbitmq`` in the current directory), ``NOTIFYD_DEV_AMQP_PORT`` (56720),
``NOTIFYD_DEV_NODENAME`` (``notifyd-dev``).  The distribution port is the AMQP
port + 1 and the private epmd listens on the AMQP port + 2.

Facts this relies on (see shared/STACK-NOTES.md): the ``/usr/sbin`` wrappers
switch user and directory, so the scripts under ``/usr/lib/rabbitmq/bin`` are
called directly, with the same environment for the server and ``rabbitmqctl``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RABBITMQ_BIN = Path(os.environ.get("NOTIFYD_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


class NodeError(RuntimeError):
    """The private node could not be started or controlled."""


@dataclass
class Node:
    """One private RabbitMQ node living in ``base``."""

    base: Path
    amqp_port: int = 56720
    name: str = "notifyd-dev"

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Node:
        env = os.environ if environ is None else environ
        return cls(
            base=Path(env.get("NOTIFYD_DEV_DIR", ".rabbitmq")).absolute(),
            amqp_port=int(env.get("NOTIFYD_DEV_AMQP_PORT", "56720")),
            name=env.get("NOTIFYD_DEV_NODENAME", "notifyd-dev"),
        )

    @property
    def dist_port(self) -> int:
        return self.amqp_port + 1

    @property
    def epmd_port(self) -> int:
        return self.amqp_port + 2

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    @property
    def pidfile(self) -> Path:
        return self.base / "rabbit.pid"

    def environ(self) -> dict[str, str]:
        """The environment shared by the server and ``rabbitmqctl``."""
        b = self.base
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(b / "home"),
            RABBITMQ_NODENAME=f"{self.name}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=("-kernel inet_dist_use_interface {127,0,0,1}"),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(b / "log"),
            RABBITMQ_PID_FILE=str(self.pidfile),
            RABBITMQ_PLUGINS_EXPAND_DIR=str(b / "plugins-expand"),
            RABBITMQ_FEATURE_FLAGS_FILE=str(b / "feature_flags"),
            RABBITMQ_LOGS=str(b / "log" / "rabbit.log"),
        )
        return env

    def _prepare(self) -> None:
        b = self.base
        for sub in ("home", "mnesia", "log", "plugins-expand"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        cookie = b / "home" / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
        cookie.chmod(0o400)
        (b / "rabbitmq-env.conf").write_text("")
        (b / "enabled_plugins").write_text("[].\n")
        (b / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
                    "loopback_users.guest = true",
                    "log.console = false",
                    "log.file.level = info",
                    "vm_memory_high_watermark.relative = 0.2",
                    "disk_free_limit.absolute = 50MB",
                    "",
                ]
            )
        )

    def server_pid(self) -> int | None:
        """The pid of a live server process, if any."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except OSError:
            return None
        return pid

    def ctl(self, *args: str, timeout: float = 60, check: bool = True) -> str:
        """Run ``rabbitmqctl`` against this node and return its output."""
        proc = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), *args],
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"rabbitmqctl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, timeout: float = 120) -> None:
        """Start the node unless it runs already; return once it is ready."""
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise NodeError("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")
        server = None
        if self.server_pid() is None:
            self._prepare()
            log = open(self.base / "log" / "server.out", "ab")
            server = subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.environ(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(self.base),
            )
        deadline = time.monotonic() + timeout
        while True:
            proc = subprocess.run(
                [
                    str(RABBITMQ_BIN / "rabbitmqctl"),
                    "-q",
                    "await_startup",
                    "--timeout",
                    "10",
                ],
                env=self.environ(),
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0 and self.server_pid() is not None:
                return
            if server is not None and server.poll() is not None:
                tail = (self.base / "log" / "server.out").read_text(errors="replace")[-600:]
                raise NodeError(
                    f"rabbitmq-server exited during start-up (is another node using ports "
                    f"{self.amqp_port}-{self.epmd_port}?):\n{tail}"
                )
            if time.monotonic() > deadline:
                raise NodeError(
                    f"RabbitMQ did not start within {timeout:.0f}s; see {self.base / 'log'}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 60) -> None:
        """Stop the node gracefully (SIGTERM) and its private epmd."""
        pid = self.server_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.server_pid() is not None:
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        self._stop_epmd()

    def _stop_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run(
            [epmd, "-kill"],
            env=self.environ(),
            capture_output=True,
            timeout=10,
        )


def wait_http(url: str, timeout: float = 30) -> bool:
    """Poll ``url`` until it answers 200 (for scripts; tests wait on events)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    node = Node.from_environ()
    cmd = args[0] if args else "status"
    try:
        if cmd == "start":
            node.start()
            print(f"RabbitMQ node {node.name} ready at {node.url} (files in {node.base})")
        elif cmd == "stop":
            node.stop()
            print(f"RabbitMQ node {node.name} stopped")
        elif cmd == "restart":
            node.stop()
            node.start()
        elif cmd == "status":
            pid = node.server_pid()
            print(f"running (pid {pid})" if pid else "stopped")
            return 0 if pid else 1
        elif cmd == "wait-http":
            return 0 if wait_http(args[1]) else 1
        elif cmd == "url":
            print(node.url)
        elif cmd == "ctl":
            sys.stdout.write(node.ctl(*args[1:]))
        else:
            print(f"unknown command {cmd!r}: use start, stop, restart, status, url or ctl")
            return 2
    except NodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
