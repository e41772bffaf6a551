"""
A private RabbitMQ node for development, demos and tests.

This module runs Debian's ``rabbitmq-server`` as a node of its own, with every
file in a project-local folder and every listener on 127.0.0.1, so it never
touches (or depends on) a system-wide RabbitMQ.  It uses only the standard
library, so ``make`` can call it before or after the virtualenv exists::

    python3 -m devtools.devbroker start     # start (idempotent), wait until ready
    python3 -m devtools.devbroker stop      # graceful stop, then stop its epmd
    python3 -m devtools.devbroker status
    python3 -m devtools.devbroker url       # print the AMQP URL
    python3 -m devtools.devbroker ctl list_bindings   # rabbitmqctl for this node
    python3 -m devtools.devbroker cluster start|stop|status|urls   # 3-node cluster
    python3 -m devtools.devbroker cluster ctl 1 cluster_status     # rabbitmqctl, node 1

Settings come from the environment: ``NOTIFYD_DEV_DIR`` (default
``.rabbitmq`` in the current directory), ``NOTIFYD_DEV_AMQP_PORT`` (26720),
``NOTIFYD_DEV_NODENAME`` (``notifyd-dev``).  The distribution port is the AMQP
port + 1 and the private epmd listens on the AMQP port + 2.

The cluster (:class:`Cluster`) uses ``NOTIFYD_DEV_CLUSTER_DIR`` (default
``.rabbitmq/cluster``) and ``NOTIFYD_DEV_CLUSTER_PORT`` (26790): node *i*
listens for AMQP on that port + 10*i (distribution + 1) and all nodes share
one epmd on that port + 2.  Ports in use by the project: 26720 demo/dev
node, 26730 test node, 26740 bench node (26743-26744 its STOMP listeners),
26760-26781 test cluster, 26790-26811 dev cluster: all below the kernel's
ephemeral range (32768-60999 on Linux), so no client socket of a test or a
benchmark can hold one (epmd does not bind over a TIME_WAIT port).

Facts this relies on (see shared/STACK-NOTES.md): the ``/usr/sbin`` wrappers
switch user and directory, so the scripts under ``/usr/lib/rabbitmq/bin`` are
called directly, with the same environment for the server and ``rabbitmqctl``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

RABBITMQ_BIN = Path(os.environ.get("NOTIFYD_RABBITMQ_BIN", "/usr/lib/rabbitmq/bin"))


class NodeError(RuntimeError):
    """The private node could not be started or controlled."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@dataclass
class Node:
    """One private RabbitMQ node living in ``base``."""

    base: Path
    amqp_port: int = 26720
    name: str = "notifyd-dev"
    #: Host part of the Erlang node name; must resolve to 127.0.0.1.
    host: str = "localhost"
    #: Port of a *shared* epmd (cluster nodes).  None: a private epmd on the
    #: AMQP port + 2, which ``stop`` stops with the node.
    epmd: int | None = None
    #: Erlang cookie.  None: a random one, kept in the node's folder.
    cookie: str | None = None
    #: Extra emulator flags, after the ones every node gets.
    erl_args: str = ""
    #: Extra environment for the server and ``rabbitmqctl``.
    extra_env: dict[str, str] = field(default_factory=dict)
    #: Extra ``rabbitmq.conf`` lines.
    extra_conf: tuple[str, ...] = ()
    #: Plugins to enable (shipped with Debian's rabbitmq-server), e.g.
    #: ``("rabbitmq_web_stomp",)`` for the benchmarks' Web-STOMP peer; their
    #: listeners must be put on loopback through ``extra_conf``.
    plugins: tuple[str, ...] = ()

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Node:
        env = os.environ if environ is None else environ
        return cls(
            base=Path(env.get("NOTIFYD_DEV_DIR", ".rabbitmq")).absolute(),
            amqp_port=int(env.get("NOTIFYD_DEV_AMQP_PORT", "26720")),
            name=env.get("NOTIFYD_DEV_NODENAME", "notifyd-dev"),
        )

    @property
    def dist_port(self) -> int:
        return self.amqp_port + 1

    @property
    def epmd_port(self) -> int:
        return self.amqp_port + 2 if self.epmd is None else self.epmd

    @property
    def nodename(self) -> str:
        """The Erlang node name, e.g. ``notifyd-dev@localhost``."""
        return f"{self.name}@{self.host}"

    @property
    def mnesia_dir(self) -> Path:
        return self.base / "mnesia" / self.nodename

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
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.amqp_port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=(
                "-kernel inet_dist_use_interface {127,0,0,1} " + self.erl_args
            ).strip(),
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
        env.update(self.extra_env)
        return env

    def _prepare(self) -> None:
        b = self.base
        for sub in ("home", "mnesia", "log", "plugins-expand"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        cookie = b / "home" / ".erlang.cookie"
        if self.cookie is not None:
            if not cookie.exists() or cookie.read_text() != self.cookie:
                if cookie.exists():
                    cookie.chmod(0o600)
                cookie.write_text(self.cookie)
        elif not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
        cookie.chmod(0o400)
        (b / "rabbitmq-env.conf").write_text("")
        (b / "enabled_plugins").write_text(f"[{','.join(self.plugins)}].\n")
        (b / "rabbitmq.conf").write_text(
            "\n".join(
                [
                    f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}",
                    "loopback_users.guest = true",
                    "log.console = false",
                    "log.file.level = info",
                    "vm_memory_high_watermark.relative = 0.2",
                    "disk_free_limit.absolute = 50MB",
                    *self.extra_conf,
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
        """Start the node unless it runs already; return once it is ready.

        An Erlang distribution that fails to come up (``nodistribution``:
        the node could not register with its epmd, seen on loaded machines)
        is retried once with a fresh epmd."""
        server = self.launch()
        try:
            self.wait_ready(timeout, server)
        except NodeError as e:
            if "nodistribution" not in str(e) or self.epmd is not None:
                raise
            self._stop_epmd()
            self.wait_ready(timeout, self.launch())

    def launch(self) -> subprocess.Popen | None:
        """Start the server process unless one runs already; do not wait.

        Returns the new process (for :meth:`wait_ready`), or None.
        """
        if not (RABBITMQ_BIN / "rabbitmq-server").exists():
            raise NodeError("rabbitmq-server is not installed (apt-get install -y rabbitmq-server)")
        if self.server_pid() is not None:
            return None
        self._prepare()
        if self.epmd is None:
            self._start_epmd()
        with open(self.base / "log" / "server.out", "ab") as log:
            return subprocess.Popen(
                [str(RABBITMQ_BIN / "rabbitmq-server")],
                env=self.environ(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(self.base),
            )

    def wait_ready(self, timeout: float = 120, server: subprocess.Popen | None = None) -> None:
        """Poll until the node has booted (``await_startup``).

        ``server`` is the process from :meth:`launch`: if it exits, fail fast.
        """
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
                    f"rabbitmq-server {self.nodename} exited during start-up (is another node "
                    f"using port {self.amqp_port}, {self.dist_port} or {self.epmd_port}?):\n{tail}"
                )
            if time.monotonic() > deadline:
                raise NodeError(
                    f"RabbitMQ {self.nodename} did not start within {timeout:.0f}s; "
                    f"see {self.base / 'log'}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 60, *, stop_epmd: bool | None = None) -> None:
        """Stop the node gracefully (SIGTERM), then its epmd.

        ``stop_epmd`` defaults to whether the epmd is the node's own (no shared
        ``epmd`` port given).
        """
        pid = self.server_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            # Wait for the process, not the pid file: RabbitMQ deletes the file
            # early in its shutdown, seconds before the VM exits.
            while _alive(pid):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        if stop_epmd if stop_epmd is not None else self.epmd is None:
            self._stop_epmd()

    def _start_epmd(self, timeout: float = 10) -> None:
        """Start the node's own epmd and wait until it accepts connections,
        so the node's distribution never races its start-up."""
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-daemon"], env=self.environ(), capture_output=True, timeout=10)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # rabbitmq-server starts one itself; its error says more
                time.sleep(0.1)

    def _stop_epmd(self) -> None:
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run(
            [epmd, "-kill"],
            env=self.environ(),
            capture_output=True,
            timeout=10,
        )


#: Emulator flags for cluster nodes: three VMs share a small machine, so each
#: gets one scheduler (and one dirty CPU scheduler), few async threads and a
#: smaller process table.  Busy-waiting is already off (``+sbwt none``).
CLUSTER_ERL_ARGS = "+S 1:1 +SDcpu 1:1 +SDio 4 +A 8 +P 65536"
#: Unbound schedulers: the default binding (``db``) would pin every VM's first
#: scheduler to the same core.
CLUSTER_ENV = {"RABBITMQ_SCHEDULER_BIND_TYPE": "u"}
#: Smaller Ra write-ahead log (quorum queues, stream coordinator) than the
#: default 512 MB, which is kept in memory until it is flushed.
CLUSTER_CONF = ("raft.wal_max_size_bytes = 64000000",)

_NODE_ATOM = re.compile(r"'?([A-Za-z0-9_.\-]+@[A-Za-z0-9_.\-]+)'?")


@dataclass
class Cluster:
    """A RabbitMQ cluster of ``size`` private nodes on loopback.

    Node ``i`` lives in ``base/node{i}``, is called ``{prefix}-{i}@localhost``
    and listens for AMQP on ``first_port + 10*i`` (distribution: + 1).  All
    nodes share one epmd on ``first_port + 2`` and one Erlang cookie, kept in
    ``base/.erlang.cookie``.  Node 0 is the one the others join.
    """

    base: Path
    first_port: int
    size: int = 3
    prefix: str = "notifyd-cl"
    nodes: list[Node] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.base = Path(self.base).absolute()
        if self.size < 1:
            raise ValueError("a cluster needs at least one node")
        self.nodes = [
            Node(
                base=self.base / f"node{i}",
                amqp_port=self.first_port + 10 * i,
                name=f"{self.prefix}-{i}",
                epmd=self.epmd_port,
                erl_args=CLUSTER_ERL_ARGS,
                extra_env=dict(CLUSTER_ENV),
                extra_conf=CLUSTER_CONF,
            )
            for i in range(self.size)
        ]

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> Cluster:
        env = os.environ if environ is None else environ
        return cls(
            base=Path(env.get("NOTIFYD_DEV_CLUSTER_DIR", ".rabbitmq/cluster")).absolute(),
            first_port=int(env.get("NOTIFYD_DEV_CLUSTER_PORT", "26790")),
        )

    @property
    def epmd_port(self) -> int:
        return self.first_port + 2

    @property
    def nodenames(self) -> list[str]:
        return [n.nodename for n in self.nodes]

    def urls(self) -> list[str]:
        """The AMQP URL of each node (guest/guest, from loopback only)."""
        return [n.url for n in self.nodes]

    def ctl(self, i: int, *args: str, timeout: float = 60, check: bool = True) -> str:
        """Run ``rabbitmqctl`` against node ``i``."""
        return self.nodes[i].ctl(*args, timeout=timeout, check=check)

    def status(self, i: int = 0) -> dict | None:
        """``cluster_status`` of node ``i`` as a dict, or None if it does not answer."""
        try:
            out = self.ctl(i, "cluster_status", "--formatter", "json", timeout=30, check=False)
            status = json.loads(out)
        except (subprocess.TimeoutExpired, ValueError):
            return None
        return status if isinstance(status, dict) and "running_nodes" in status else None

    def running_nodes(self, i: int = 0) -> set[str]:
        """The nodes that node ``i`` sees running (empty if it does not answer)."""
        status = self.status(i)
        return set(status["running_nodes"]) if status else set()

    # -- start -----------------------------------------------------------------

    def start(self, timeout: float = 240) -> None:
        """Start every node (running ones are kept), cluster them, wait until all run.

        Nodes 1..n join node 0 unless they are members already.  Left-over state
        that cannot work (a node that was clustered with a node 0 that has since
        been wiped, members that are not part of this cluster) is reset.
        """
        deadline = time.monotonic() + timeout
        self._prepare()
        indexes = range(self.size)
        # Launch all at once: a node that was not the last to stop waits for
        # its peers while booting, and booting in parallel is faster anyway.
        servers = {i: self.nodes[i].launch() for i in indexes}
        for i in indexes:
            self._wait_ready(i, servers[i], deadline)
        for i in indexes[1:]:
            self._join(i)
        self._forget_strangers()
        self._wait_clustered(deadline)

    def start_node(self, i: int, timeout: float = 180) -> None:
        """(Re)start node ``i``; return once it runs as a member of the cluster."""
        deadline = time.monotonic() + timeout
        self._prepare([i])
        self._wait_ready(i, self.nodes[i].launch(), deadline)
        if i > 0:
            self._join(i)
        self._wait_clustered(deadline, via=i)

    def _prepare(self, indexes: Iterable[int] | None = None) -> None:
        """Give the nodes the shared cookie; reset state they cannot start from."""
        self.base.mkdir(parents=True, exist_ok=True)
        cookie_file = self.base / ".erlang.cookie"
        if not cookie_file.exists():
            cookie_file.write_text(os.urandom(16).hex().upper())
            cookie_file.chmod(0o400)
        cookie = cookie_file.read_text().strip()
        for node in self.nodes:
            node.cookie = cookie
        ours = set(self.nodenames)
        first = self.nodes[0]
        # Node 0 first: the others are checked against what it remembers.
        for i in sorted(range(self.size) if indexes is None else indexes):
            node = self.nodes[i]
            if node.server_pid() is not None:
                continue
            members = self._members_on_disk(node)
            stale = bool(members - ours)  # clustered with nodes that are not ours
            if i > 0 and first.nodename in members:
                # clustered with a node 0 that no longer knows this node
                stale = stale or node.nodename not in self._members_on_disk(first)
            if stale:
                self._wipe(node)

    @staticmethod
    def _members_on_disk(node: Node) -> set[str]:
        """The cluster members a stopped node recorded (empty for a fresh node)."""
        try:
            text = (node.mnesia_dir / "cluster_nodes.config").read_text()
        except OSError:
            return set()
        return set(_NODE_ATOM.findall(text))

    @staticmethod
    def _wipe(node: Node) -> None:
        shutil.rmtree(node.mnesia_dir, ignore_errors=True)
        (node.base / "feature_flags").unlink(missing_ok=True)

    def _wait_ready(self, i: int, server: subprocess.Popen | None, deadline: float) -> None:
        node = self.nodes[i]
        try:
            node.wait_ready(max(deadline - time.monotonic(), 1), server)
        except NodeError:
            if i == 0 or server is None or server.poll() is None:
                raise
            # A joining node that cannot boot from its state (e.g. an
            # inconsistent cluster): start it afresh, it joins again below.
            self._wipe(node)
            node.wait_ready(max(deadline - time.monotonic(), 1), node.launch())

    def _join(self, i: int) -> None:
        """Make node ``i`` a running member of node 0's cluster."""
        first, node = self.nodes[0].nodename, self.nodes[i].nodename
        s0 = self.status(0)
        if s0 is None:
            raise NodeError(f"cluster_status failed on {first}")
        if node in s0["running_nodes"]:
            return  # node 0 sees it running: it is a member
        si = self.status(i)
        if si is None:
            raise NodeError(f"cluster_status failed on {node}")
        known_to_first = node in s0["disk_nodes"] + s0.get("ram_nodes", [])
        if known_to_first and first in si["disk_nodes"] + si.get("ram_nodes", []):
            if node not in s0["running_nodes"]:
                self.ctl(i, "start_app", timeout=120)
            return
        self.ctl(i, "stop_app")
        if known_to_first:  # node 0 remembers an earlier incarnation of it
            self.ctl(0, "forget_cluster_node", node)
        # force_reset: the node's own view of its cluster may be stale, and a
        # plain reset would ask those (former) peers to let it leave.
        self.ctl(i, "force_reset")
        self.ctl(i, "join_cluster", first, timeout=120)
        self.ctl(i, "start_app", timeout=120)

    def _forget_strangers(self) -> None:
        """Remove members node 0 remembers but which are not part of this cluster."""
        status = self.status(0)
        if status is None:
            return
        ours = set(self.nodenames)
        for name in status["disk_nodes"] + status.get("ram_nodes", []):
            if name not in ours and name not in status["running_nodes"]:
                self.ctl(0, "forget_cluster_node", name)

    def _wait_clustered(self, deadline: float, via: int = 0) -> None:
        ours = set(self.nodenames)
        while True:
            seen = self.running_nodes(via)
            if ours <= seen:
                return
            if time.monotonic() > deadline:
                raise NodeError(
                    f"cluster did not form: {self.nodenames[via]} sees {sorted(seen)} running, "
                    f"expected {sorted(ours)}; see {self.base}/node*/log"
                )
            time.sleep(0.5)

    # -- stop ------------------------------------------------------------------

    def stop_node(self, i: int, timeout: float = 60) -> None:
        """Stop node ``i`` gracefully; the others keep running (failover tests)."""
        self.nodes[i].stop(timeout, stop_epmd=False)

    def stop(self, timeout: float = 60) -> None:
        """Stop every node, node 0 last (so it can boot alone), then the shared epmd."""
        for node in reversed(self.nodes):
            node.stop(timeout, stop_epmd=False)
        self.nodes[0]._stop_epmd()


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


def cluster_main(args: list[str]) -> int:
    """``python -m devtools.devbroker cluster start|stop|status|urls|ctl I ARGS…``"""
    cluster = Cluster.from_environ()
    cmd = args[0] if args else "status"
    if cmd == "start":
        t0 = time.monotonic()
        cluster.start()
        print(
            f"RabbitMQ cluster of {cluster.size} ready in {time.monotonic() - t0:.1f}s "
            f"(files in {cluster.base}):"
        )
        for url in cluster.urls():
            print(f"  {url}")
    elif cmd == "stop":
        cluster.stop()
        print("RabbitMQ cluster stopped")
    elif cmd == "status":
        alive = [n.server_pid() for n in cluster.nodes]
        seen: set[str] = set()
        for i, pid in enumerate(alive):
            if pid and not seen:
                seen = cluster.running_nodes(i)
        for node, pid in zip(cluster.nodes, alive, strict=True):
            state = f"running (pid {pid})" if pid else "stopped"
            member = " in cluster" if node.nodename in seen else ""
            print(f"{node.nodename} {node.url} {state}{member}")
        return 0 if all(alive) and set(cluster.nodenames) <= seen else 1
    elif cmd == "urls":
        print("\n".join(cluster.urls()))
    elif cmd == "ctl":
        sys.stdout.write(cluster.ctl(int(args[1]), *args[2:]))
    else:
        print(f"unknown command cluster {cmd!r}: use start, stop, status, urls or ctl N ...")
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    if args[:1] == ["cluster"]:
        try:
            return cluster_main(args[1:])
        except NodeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
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
            print(f"unknown command {cmd!r}: use start, stop, restart, status, url, ctl or cluster")
            return 2
    except NodeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
