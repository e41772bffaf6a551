"""notifyd benchmark suite: ``make bench`` (full) or ``make bench-quick``.

Runs every scenario against a real RabbitMQ (a private node of its own), with
the server under test pinned to core 0 and the load generator and publisher
on core 1, and prints a table plus the CPU each process used.  Results go to
``bench/results/<time>.json``.  The reference peers (the seed design and the
raw ceiling) run in the same invocation, so ratios compare like with like.

Scenarios (see docs/performance.md):
  A  fan-out throughput: N subscribers of one topic, publisher as fast as it can
  B  latency at a fixed 20 events/s to N subscribers (p50/p99/max)
  C  RSS per idle WAMP session (HELLO + one SUBSCRIBE)
  D  many topics: each client subscribed to its own topic, events to random ones
  E  connection storm: connect + HELLO + SUBSCRIBE for M clients, time to all subscribed
  F  two notifyd processes (one per core, clients split between them) against one
  H  history cost: A and B with and without ``--history '#'``, and the time to
     resume (replay) 10,000 missed events into one client
  R  reconnect storm: N clients on one node, each on its own logged topic,
     while events flow; the node is killed (SIGKILL) and every client
     reconnects at once to a second node, resuming from its last publication
     id: time until all are subscribed again, and nothing lost
  T  targeted events: N subscribers, each on its own topic (u<i>.invoice.sent),
     events round-robin so each reaches exactly one; server CPU per event at a
     fixed rate (the client core cannot hide the server's cost), and the most
     events/s unpaced; losses and order

Peers: seed (hand-rolled Tornado broadcaster), ceiling (raw asyncio writer) and,
for A, B and T, RabbitMQ's own Web-STOMP plugin ("webstomp": STOMP over
WebSocket, one queue per subscription, all inside the RabbitMQ process, so its
server CPU is RabbitMQ's).

Run a subset with ``--only A,F``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
BIN = Path(PY).parent
sys.path.insert(0, str(ROOT))

from devtools.devbroker import Node  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
SERVER_CPU, CLIENT_CPU = ("0", "1") if CORES > 1 else ("0", "0")

QUICK = {
    "A": (1000, 60),
    "B": (1000, 5),
    "C": 2000,
    "D": (2000, 2000),
    "E": 2000,
    "F": (1000, 60),
    # H: (N, events) as in A, (N, seconds) as in B, events to resume
    "H": ((500, 60), (500, 5), 10000),
    # T: N, fixed rate (events/s), seconds at that rate, events for the unpaced run
    "T": (1000, 2000, 5, 10000),
    # R: clients, event rate, seconds before the kill, seconds after it
    "R": (2000, 500, 3, 6),
    # X: sessions x per-user topics each
    "X": (200, 100),
}
FULL = {
    "A": (1000, 300),
    "B": (1000, 15),
    "C": 5000,
    "D": (5000, 5000),
    "E": 5000,
    "F": (2000, 300),
    "H": ((1000, 300), (1000, 15), 10000),
    "T": (1000, 3000, 20, 40000),
    "R": (5000, 500, 5, 15),
    "X": (1000, 100),
}
#: pid of the bench RabbitMQ node (its CPU is reported where it matters)
BROKER_PID: int | None = None
#: the bench node's Web-STOMP listener (the "webstomp" peer), on loopback
WEB_STOMP_PORT = 26744
PEERS = ("seed", "notifyd", "webstomp", "ceiling")


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpu: str, args: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *args] if CORES > 1 else args


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def tree_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (``--workers``)."""
    total = cpu_seconds(pid)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        try:
            total += tree_cpu(int(child))
        except OSError:
            pass
    return total


def broker_cpu() -> float | None:
    try:
        return cpu_seconds(BROKER_PID) if BROKER_PID else None
    except OSError:
        return None


def cpu_delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Server:
    def __init__(
        self,
        kind: str,
        amqp: str,
        exchange: str,
        port: int,
        cpu: str | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.kind = kind
        self.port = port
        if kind == "notifyd":
            args = [
                str(BIN / "twistd"),
                "-n",
                "--pidfile=",
                "notifyd",
                "--amqp-url",
                amqp,
                "--exchange",
                exchange,
                "--listen",
                f"tcp:{port}:interface=127.0.0.1:backlog=4096",
                "--allow-anonymous",
                "--max-connections",
                "100000",
                "--max-connections-per-address",
                "0",
                "--max-subscriptions-per-session",
                "10",
                *(extra or []),
            ]
            # with --workers, the parent's line once every worker is ready
            ready = "workers consuming" if "--workers" in (extra or []) else "notifyd ready"
        else:
            args = [PY, str(ROOT / "bench" / f"{kind}.py"), str(port), amqp, exchange]
            ready = "READY"
        self.proc = subprocess.Popen(
            pinned(cpu or SERVER_CPU, args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=str(ROOT),
            preexec_fn=raise_fd_limit,
        )
        for line in self.proc.stdout:
            if ready in line:
                break
        else:
            raise RuntimeError(f"{kind} did not start")
        # keep draining its output so it never blocks on a full pipe
        import threading

        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def cpu(self) -> float:
        return tree_cpu(self.proc.pid)

    def rss(self) -> int:
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class WebStomp:
    """RabbitMQ's Web-STOMP plugin as a peer: it runs inside the bench node,
    so its CPU is the node's."""

    kind = "webstomp"
    url = f"ws://127.0.0.1:{WEB_STOMP_PORT}/ws"

    def cpu(self) -> float:
        return broker_cpu() or 0.0

    def stop(self) -> None:
        pass


def serve(
    kind: str,
    amqp: str,
    exchange: str,
    port: int,
    extra: list[str] | None = None,
    cpu: str | None = None,
):
    """The server of one peer: a process of our own, or the bench node's
    Web-STOMP listener (the exchange must exist before STOMP subscribes)."""
    if kind == "webstomp":
        declare_exchange(amqp, exchange)
        return WebStomp()
    return Server(kind, amqp, exchange, port, cpu=cpu, extra=extra)


def client_mode(kind: str) -> str:
    return {"notifyd": "wamp", "webstomp": "stomp"}.get(kind, "raw")


def declare_exchange(amqp: str, exchange: str) -> None:
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(amqp))
    try:
        conn.channel().exchange_declare(exchange, exchange_type="topic", durable=True)
    finally:
        conn.close()


class LoadGen:
    def __init__(self, cfg: dict, pin: bool = True) -> None:
        args = ["node", str(ROOT / "bench" / "loadgen.cjs"), json.dumps(cfg)]
        self.proc = subprocess.Popen(
            pinned(CLIENT_CPU, args) if pin else args,
            stdout=subprocess.PIPE,
            stdin=subprocess.PIPE,
            text=True,
            preexec_fn=raise_fd_limit,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"load generator failed: {line}")
        self.ready_ms = int(line.split()[1])

    def result(self) -> dict:
        self.proc.stdin.close()
        out = json.loads(self.proc.stdout.readline())
        self.proc.wait(30)
        out["cpu"] = None
        return out

    def summary(self) -> dict:
        """The summary of a ``holdOpen`` run: its connections stay open until
        :meth:`close`, so the server's CPU can be read before they close."""
        out = json.loads(self.proc.stdout.readline())
        out["cpu"] = None
        return out

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def publisher_command(amqp: str, exchange: str, **cfg) -> list[str]:
    """``bench/publisher.py`` with ``cfg``, pinned to the client core."""
    return pinned(
        CLIENT_CPU,
        [
            PY,
            str(ROOT / "bench" / "publisher.py"),
            json.dumps({"url": amqp, "exchange": exchange, **cfg}),
        ],
    )


def publish(amqp: str, exchange: str, **cfg) -> dict:
    args = publisher_command(amqp, exchange, **cfg)
    return json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)


def fresh_exchange() -> str:
    return f"bench-{uuid.uuid4().hex[:8]}"


class HistoryStreams:
    """``--history '#'`` on fresh streams named after the exchange; ``drop()``
    deletes them (and the exchanges) again."""

    def __init__(self, amqp: str, exchange: str) -> None:
        self.amqp = amqp
        self.exchange = exchange
        self.log = f"{exchange}.history"
        self.retained = f"{exchange}.retained-log"
        self.args = [
            "--history",
            "#",
            "--history-stream",
            self.log,
            "--retained-stream",
            self.retained,
        ]

    def drop(self) -> None:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(self.amqp))
        try:
            ch = conn.channel()
            for queue in (self.log, self.retained):
                ch.queue_delete(queue)
            for exchange in (f"{self.exchange}.retained", self.exchange):
                ch.exchange_delete(exchange)
        finally:
            conn.close()


def scenario_a(
    amqp: str,
    kind: str,
    n: int,
    k: int,
    *,
    port: int = 18080,
    topic: str = "bench.a",
    history: bool = False,
) -> dict:
    ex = fresh_exchange()
    streams = HistoryStreams(amqp, ex) if history else None
    srv = serve(kind, amqp, ex, port, extra=streams.args if streams else None)
    try:
        lg = LoadGen(
            {
                "url": srv.url,
                "n": n,
                "mode": client_mode(kind),
                "topics": [topic],
                "expect": k,
                "timeout": 300,
                "holdOpen": True,
                "stompExchange": ex,
            }
        )
        cpu0, bcpu0 = srv.cpu(), broker_cpu()
        t0 = time.time()
        publish(amqp, ex, topic=topic, count=k, rate=0)
        res = lg.summary()
        cpu, bcpu = srv.cpu() - cpu0, cpu_delta(bcpu0, broker_cpu())
        lg.close()
    finally:
        srv.stop()
        if streams:
            streams.drop()
    delivered = n * k - res["missing"]
    seconds = (res["last_recv"] or t0) - t0
    return {
        "kind": kind,
        "n": n,
        "events": k,
        "delivered": delivered,
        "missing": res["missing"],
        "gaps": res["gaps"],
        "duplicates": res["duplicates"],
        "seconds": seconds,
        "deliveries_per_s": delivered / seconds if seconds > 0 else 0,
        "server_cpu_s": cpu,
        "cpu_per_delivery_us": cpu / delivered * 1e6 if delivered else None,
        "broker_cpu_s": bcpu,
        "latency_ms": res["latency_ms"],
    }


def scenario_b(
    amqp: str,
    kind: str,
    n: int,
    seconds: int,
    *,
    port: int = 18081,
    topic: str = "bench.b",
    history: bool = False,
) -> dict:
    ex = fresh_exchange()
    streams = HistoryStreams(amqp, ex) if history else None
    srv = serve(kind, amqp, ex, port, extra=streams.args if streams else None)
    k = 20 * seconds
    try:
        lg = LoadGen(
            {
                "url": srv.url,
                "n": n,
                "mode": client_mode(kind),
                "topics": [topic],
                "expect": k,
                "timeout": seconds + 120,
                "stompExchange": ex,
            }
        )
        cpu0, bcpu0 = srv.cpu(), broker_cpu()
        publish(amqp, ex, topic=topic, count=k, rate=20)
        res = lg.result()
        cpu, bcpu = srv.cpu() - cpu0, cpu_delta(bcpu0, broker_cpu())
    finally:
        srv.stop()
        if streams:
            streams.drop()
    return {
        "kind": kind,
        "n": n,
        "rate": 20,
        "events": k,
        "missing": res["missing"],
        "gaps": res["gaps"],
        "latency_ms": res["latency_ms"],
        "server_cpu_s": cpu,
        "server_cpu_pct": cpu / seconds * 100,
        "broker_cpu_s": bcpu,
    }


def scenario_t(
    amqp: str,
    kind: str,
    n: int,
    rate: int,
    count: int,
    *,
    port: int = 18086,
    extra: list[str] | None = None,
    cpu: str | None = None,
    receipt: bool = False,
) -> dict:
    """T: ``count`` events round-robin over ``n`` own-topic subscribers, at
    ``rate`` events/s (0: as fast as the publisher goes); with ``receipt``
    every event asks for a delivery receipt."""
    ex = fresh_exchange()
    srv = serve(kind, amqp, ex, port, extra=extra, cpu=cpu)
    topic = "u{i}.invoice.sent"
    try:
        lg = LoadGen(
            {
                "url": srv.url,
                "n": n,
                "mode": client_mode(kind),
                "topicFormat": topic,
                "expectTotal": count,
                "timeout": 600,
                "batch": 100,
                "holdOpen": True,
                "stompExchange": ex,
            }
        )
        cpu0, bcpu0 = srv.cpu(), broker_cpu()
        t0 = time.time()
        publish(
            amqp,
            ex,
            topicFormat=topic.replace("{i}", "{k}"),
            roundRobin=n,
            count=count,
            rate=rate,
            paced=True,
            receipt=receipt,
        )
        res = lg.summary()
        cpu, bcpu = srv.cpu() - cpu0, cpu_delta(bcpu0, broker_cpu())
        lg.close()
    finally:
        srv.stop()
    delivered = res["events"]
    seconds = (res["last_recv"] or t0) - t0
    return {
        "kind": kind,
        "n": n,
        "rate": rate,
        "events": count,
        "delivered": delivered,
        "missing": res["missing"],
        # each connection checks its sequence numbers only go up
        "out_of_order": res["duplicates"],
        "seconds": seconds,
        "events_per_s": delivered / seconds if seconds > 0 else 0,
        "server_cpu_s": cpu,
        "cpu_per_event_us": cpu / delivered * 1e6 if delivered else None,
        "broker_cpu_s": bcpu,
        "broker_cpu_per_event_us": bcpu / delivered * 1e6 if delivered and bcpu else None,
        "latency_ms": res["latency_ms"],
    }


#: scenario P's variants: (name, notifyd options, events ask for receipts)
P_VARIANTS = (
    ("off", [], False),
    ("presence+receipts on, unused", ["--presence", "--receipts"], False),
    ("receipts on, every event", ["--presence", "--receipts"], True),
)


def scenario_p(amqp: str, n: int, rate: int, count: int, rounds: int = 2) -> list[dict]:
    """P: T (``n`` own-topic subscribers at ``rate``/s) for notifyd with
    presence and receipts off, on but unused, and on with a receipt asked
    for every event; the variants interleaved ``rounds`` times (issue 16)."""
    out = []
    for r in range(rounds):
        for name, extra, receipt in P_VARIANTS:
            x = scenario_t(amqp, "notifyd", n, rate, count, extra=extra, receipt=receipt)
            out.append({"variant": name, "round": r, **x})
    return out


def _ready_after(port: int, timeout: float = 900) -> float:
    """Seconds until notifyd's /readyz answers 200 (polled every 20 ms)."""
    import urllib.error
    import urllib.request

    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                if r.status == 200:
                    return time.time() - t0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.02)
    raise RuntimeError("notifyd did not become ready again")


def scenario_x(node: Node, sessions: int, topics: int, compaction: int, port: int = 18087) -> dict:
    """X: ``sessions`` x ``topics`` distinct per-user subscriptions
    (``user.<i>.t<j>``) on one node; RabbitMQ restarted; how long until
    every subscription is live again, then one event to each session."""
    global BROKER_PID
    amqp = node.url
    ex = fresh_exchange()
    extra = [
        "--binding-compaction",
        str(compaction),
        "--amqp-max-retry-delay",
        "0.5",
        "--max-subscriptions-per-session",
        str(topics),
    ]
    srv = serve("notifyd", amqp, ex, port, extra=extra)
    try:
        t0 = time.time()
        lg = LoadGen(
            {
                "url": srv.url,
                "n": sessions,
                "mode": "wamp",
                "topicFormat": "user.{i}.t{j}",
                "topicsPerConn": topics,
                "expectTotal": sessions,
                "timeout": 1800,
                "batch": 50,
                "holdOpen": True,
            }
        )
        subscribed_s = time.time() - t0
        t1 = time.time()
        node.stop()
        node.start()
        BROKER_PID = node.server_pid()
        up = time.time()
        restart_s = up - t1
        ready_s = _ready_after(port)
        publish(amqp, ex, topicFormat="user.{k}.t7", roundRobin=sessions, count=sessions)
        res = lg.summary()
        lg.close()
    finally:
        srv.stop()
    return {
        "compaction": compaction,
        "sessions": sessions,
        "subscriptions": sessions * topics,
        "subscribed_s": subscribed_s,
        "rabbitmq_restart_s": restart_s,
        "live_again_s": ready_s,
        "delivered": res["events"],
        "missing": res["missing"],
    }


def scenario_u(amqp: str, keys: int, count: int, port: int = 18088) -> dict:
    """U: the cost of a delivery nobody on the node wants: a compacted group
    (``keys`` subscriptions in ``user.``) and ``count`` events to other
    users' topics, which the group binding brings and the node drops."""
    ex = fresh_exchange()
    srv = serve("notifyd", amqp, ex, port, extra=["--binding-compaction", "256"])
    try:
        lg = LoadGen(
            {
                "url": srv.url,
                "n": keys,
                "mode": "wamp",
                "topicFormat": "user.{i}.t0",
                "expectTotal": 1,
                "timeout": 600,
                "holdOpen": True,
            }
        )
        cpu0 = srv.cpu()
        t0 = time.time()
        publish(amqp, ex, topicFormat="user.other{k}.t0", roundRobin=1000, count=count)
        # one wanted event last: once it arrived, every unwanted one was handled
        publish(amqp, ex, topic="user.0.t0", count=1)
        res = lg.summary()
        seconds = time.time() - t0
        cpu = srv.cpu() - cpu0
        lg.close()
    finally:
        srv.stop()
    return {
        "keys": keys,
        "unwanted": count,
        "server_cpu_s": cpu,
        "cpu_per_unwanted_us": cpu / count * 1e6,
        "seconds": seconds,
        "wanted_delivered": res["events"],
    }


def scenario_w(amqp: str, n: int, count: int) -> list[dict]:
    """W: T unpaced with one worker (on the server core) and with two
    (``--workers 2``, on every core: this machine has no third core to keep
    the load generator, publisher and RabbitMQ apart from them)."""
    out = []
    for workers, cpu in ((1, SERVER_CPU), (2, f"0-{CORES - 1}")):
        extra = ["--workers", str(workers), "--admin-listen", "tcp:0:interface=127.0.0.1"]
        result = scenario_t(
            amqp, "notifyd", n, 0, count, extra=extra if workers > 1 else None, cpu=cpu
        )
        result["workers"] = workers
        result["cpus"] = cpu
        out.append(result)
    return out


def scenario_r(amqp: str, n: int, rate: int, before: int, after: int) -> dict:
    """R: the reconnect storm of a dying node."""
    ex = fresh_exchange()
    streams = HistoryStreams(amqp, ex)
    first = Server("notifyd", amqp, ex, 18088, extra=streams.args)
    second = Server("notifyd", amqp, ex, 18089, extra=streams.args)
    topic = "u{i}.invoice.sent"
    count = rate * (before + after)
    try:
        start = log_position(second)
        lg = LoadGen(
            {
                "url": first.url,
                "reconnectUrl": second.url,
                "resumeFrom": start,
                "n": n,
                "mode": "wamp",
                "topicFormat": topic,
                "checkPublications": True,
                "expectSeq": n,
                "expectTotal": count,
                "timeout": before + after + 60,
                "batch": 100,
            }
        )
        cpu0 = second.cpu()
        pub = subprocess.Popen(
            publisher_command(
                amqp,
                ex,
                topicFormat=topic.replace("{i}", "{k}"),
                roundRobin=n,
                count=count,
                rate=rate,
                paced=True,
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(before)
        killed = time.time()
        first.proc.kill()
        pub.wait(after + 120)
        res = lg.result()
        cpu = second.cpu() - cpu0
    finally:
        first.stop()
        second.stop()
        streams.drop()
    storm = res["storm"]
    return {
        "clients": n,
        "rate": rate,
        "events": count,
        "received": res["events"],
        "missing": res["missing"],
        "duplicates": res["duplicates"],
        "disorder": (res["publications"] or {}).get("disorder"),
        "resubscribed": res["resubscribed"],
        "all_resubscribed_s": (storm["last_resubscribed"] or killed) - killed
        if res["resubscribed"] == n
        else None,
        "first_drop_s": (storm["first_drop"] or killed) - killed,
        "second_node_cpu_s": cpu,
        "reason": res["reason"],
    }


def scenario_ce(amqp: str, m: int) -> dict:
    ex = fresh_exchange()
    srv = Server("notifyd", amqp, ex, 18082)
    try:
        rss0 = srv.rss()
        cpu0 = srv.cpu()
        lg = LoadGen(
            {
                "url": srv.url,
                "n": m,
                "mode": "wamp",
                "topics": ["bench.idle"],
                "timeout": 600,
                "batch": 100,
            }
        )
        cpu = srv.cpu() - cpu0
        time.sleep(
            1.0
        )  # let allocator and buffers settle before reading RSS (a measurement, not a test)
        rss1 = srv.rss()
        lg.result()
    finally:
        srv.stop()
    return {
        "connections": m,
        "subscribed_s": lg.ready_ms / 1000,
        "server_cpu_s": cpu,
        "rss_before_kib": rss0,
        "rss_after_kib": rss1,
        "rss_per_session_kib": (rss1 - rss0) / m,
    }


def scenario_s(amqp: str, users: int, tabs: int) -> list[dict]:
    """S: ``users`` browsers with ``tabs`` tabs each, every tab subscribed to
    its user's topic: notifyd.js sharing one session per browser (one
    connection per user) against every tab on its own."""
    out = []
    for shared in (True, False):
        ex = fresh_exchange()
        srv = Server("notifyd", amqp, ex, 18087)
        n = users if shared else users * tabs
        try:
            rss0 = srv.rss()
            lg = LoadGen(
                {
                    "url": srv.url,
                    "n": n,
                    "mode": "wamp",
                    "topicFormat": "user.{i}.notifications",
                    "tabsPerTopic": 1 if shared else tabs,
                    "timeout": 600,
                    "batch": 100,
                }
            )
            # let allocator and buffers settle before reading RSS (a
            # measurement, not a test)
            time.sleep(1.0)
            rss1 = srv.rss()
            lg.result()
        finally:
            srv.stop()
        out.append(
            {
                "shared": shared,
                "users": users,
                "tabs": tabs,
                "sessions": n,
                "rss_before_kib": rss0,
                "rss_after_kib": rss1,
                "rss_added_kib": rss1 - rss0,
            }
        )
    return out


def scenario_d(amqp: str, m: int, k: int) -> dict:
    ex = fresh_exchange()
    srv = Server("notifyd", amqp, ex, 18083)
    try:
        lg = LoadGen(
            {
                "url": srv.url,
                "n": m,
                "mode": "wamp",
                "topicPerClient": "bench.user",
                "expectTotal": k,
                "timeout": 600,
                "batch": 100,
                "holdOpen": True,
            }
        )
        cpu0 = srv.cpu()
        t0 = time.time()
        publish(amqp, ex, topic="bench.user", topics=m, count=k, rate=0)
        res = lg.summary()
        cpu = srv.cpu() - cpu0
        lg.close()
    finally:
        srv.stop()
    return {
        "clients": m,
        "events": k,
        "delivered": res["events"],
        "missing": res["missing"],
        "duplicates": res["duplicates"],
        "seconds": (res["last_recv"] or t0) - t0,
        "server_cpu_s": cpu,
        "cpu_per_event_us": cpu / max(res["events"], 1) * 1e6,
        "subscribe_all_s": lg.ready_ms / 1000,
    }


def scenario_f(amqp: str, n: int, k: int) -> dict:
    """The same fan-out through one notifyd, then through two (one per core,
    half the clients each).  The load generators are not pinned here: with
    two cores they share the machine with the servers in both runs."""
    out = {}
    for procs in (1, 2):
        ex = fresh_exchange()
        servers = [
            Server("notifyd", amqp, ex, 18084 + i, cpu=str(i % max(CORES, 1))) for i in range(procs)
        ]
        try:
            gens = [
                LoadGen(
                    {
                        "url": srv.url,
                        "n": n // procs,
                        "mode": "wamp",
                        "topics": ["bench.f"],
                        "expect": k,
                        "timeout": 300,
                    },
                    pin=False,
                )
                for srv in servers
            ]
            cpu0 = [srv.cpu() for srv in servers]
            t0 = time.time()
            publish(amqp, ex, topic="bench.f", count=k, rate=0)
            results = [g.result() for g in gens]
            cpu = [srv.cpu() - c for srv, c in zip(servers, cpu0, strict=True)]
        finally:
            for srv in servers:
                srv.stop()
        delivered = sum((n // procs) * k - r["missing"] for r in results)
        seconds = max(r["last_recv"] or t0 for r in results) - t0
        out[procs] = {
            "processes": procs,
            "delivered": delivered,
            "missing": sum(r["missing"] for r in results),
            "seconds": seconds,
            "deliveries_per_s": delivered / seconds if seconds > 0 else 0,
            "server_cpu_s": cpu,
        }
    out["ratio"] = out[2]["deliveries_per_s"] / max(out[1]["deliveries_per_s"], 1)
    return out


def log_position(srv: Server) -> int:
    """The newest publication id in the event log (``GET /position``)."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/position", timeout=10) as r:
        return json.load(r)["position"]


def scenario_h_resume(amqp: str, count: int, runs: int = 2) -> list[dict]:
    """``count`` events are logged while no client is connected; then one
    client subscribes with ``_resume_after`` the position from before them,
    ``runs`` times (a new client each time).  Timed from sending SUBSCRIBE
    until the last replayed EVENT arrived."""
    ex = fresh_exchange()
    streams = HistoryStreams(amqp, ex)
    srv = Server("notifyd", amqp, ex, 18086, extra=streams.args)
    topic = "bench.h.resume"
    out = []
    try:
        after = log_position(srv)
        publish(amqp, ex, topic=topic, count=count, rate=0)
        # every event is in the log (and the node's live consumer has seen it)
        deadline = time.time() + 120
        while log_position(srv) < after + count:
            if time.time() > deadline:
                raise RuntimeError("the events did not reach the event log")
            time.sleep(0.05)
        for _ in range(runs):
            cpu0, bcpu0 = srv.cpu(), broker_cpu()
            lg = LoadGen(
                {
                    "url": srv.url,
                    "n": 1,
                    "mode": "wamp",
                    "topics": [topic],
                    "subscribeOptions": {"_resume_after": after},
                    "checkPublications": True,
                    "expect": count,
                    "timeout": 300,
                }
            )
            res = lg.result()
            cpu, bcpu = srv.cpu() - cpu0, cpu_delta(bcpu0, broker_cpu())
            pubs = res["publications"] or {}
            sent = res["subscribe_sent"]
            seconds = (res["last_recv"] or sent) - sent
            out.append(
                {
                    "events": count,
                    "resume_after": after,
                    "received": res["events"],
                    "missing": res["missing"],
                    "gaps": res["gaps"],
                    "duplicates": res["duplicates"],
                    # publication ids after + 1 .. after + count, each above the last
                    "in_order": pubs.get("disorder") == 0
                    and pubs.get("first") == after + 1
                    and pubs.get("last") == after + count,
                    "publications": pubs,
                    "subscribed_s": res["subscribed_at"] - sent,
                    "first_event_s": (res["first_recv"] or sent) - sent,
                    "seconds": seconds,
                    "events_per_s": res["events"] / seconds if seconds > 0 else 0,
                    "server_cpu_s": cpu,
                    "broker_cpu_s": bcpu,
                    "client_cpu_s": res["cpu_s"],
                }
            )
    finally:
        srv.stop()
        streams.drop()
    return out


#: plain / history runs of H in "ABBA" order, so neither always goes first
H_ORDER = (False, True, True, False)


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def scenario_h(amqp: str, sizes: tuple) -> dict:
    """The price of history: A and B on one notifyd without and with
    ``--history '#'`` (every event then comes through the stream), in ABBA
    order, and resumes of ``resume`` missed events."""
    (n, k), (bn, secs), resume = sizes
    out: dict = {
        "order": ["history" if h else "plain" for h in H_ORDER],
        "fanout": {"plain": [], "history": []},
        "latency": {"plain": [], "history": []},
    }
    for history in H_ORDER:
        out["fanout"]["history" if history else "plain"].append(
            scenario_a(amqp, "notifyd", n, k, port=18086, topic="bench.h", history=history)
        )
    for history in H_ORDER:
        out["latency"]["history" if history else "plain"].append(
            scenario_b(amqp, "notifyd", bn, secs, port=18086, topic="bench.h", history=history)
        )
    out["resume"] = scenario_h_resume(amqp, resume)
    summary: dict = {}
    for label in ("plain", "history"):
        fan, lat = out["fanout"][label], out["latency"][label]
        summary[label] = {
            "deliveries_per_s": _mean([x["deliveries_per_s"] for x in fan]),
            "cpu_per_delivery_us": _mean([x["cpu_per_delivery_us"] for x in fan]),
            "lost": sum(x["missing"] for x in fan) + sum(x["missing"] for x in lat),
            "gaps": sum(x["gaps"] for x in fan) + sum(x["gaps"] for x in lat),
            "duplicates": sum(x["duplicates"] for x in fan),
            "latency_p50_ms": _mean([x["latency_ms"]["p50"] for x in lat]),
            "latency_p99_ms": _mean([x["latency_ms"]["p99"] for x in lat]),
            "server_cpu_pct_20_per_s": _mean([x["server_cpu_pct"] for x in lat]),
        }
    summary["resume"] = {
        "seconds": _mean([x["seconds"] for x in out["resume"]]),
        "events_per_s": _mean([x["events_per_s"] for x in out["resume"]]),
        "complete": all(
            x["missing"] == 0 and x["gaps"] == 0 and x["duplicates"] == 0 and x["in_order"]
            for x in out["resume"]
        ),
    }
    out["summary"] = summary
    out["ratio"] = summary["history"]["deliveries_per_s"] / max(
        summary["plain"]["deliveries_per_s"], 1
    )
    return out


def git_commit() -> str | None:
    """The commit measured (``+dirty`` with uncommitted changes)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return None
    return f"{head}+dirty" if head and dirty else head or None


def bench_node() -> Node:
    """The benchmarks' private RabbitMQ node, with the Web-STOMP plugin on
    loopback (the "webstomp" peer)."""
    return Node(
        base=ROOT / ".rabbitmq" / "bench",
        amqp_port=26740,
        name="notifyd-bench",
        plugins=("rabbitmq_web_stomp",),
        extra_conf=(
            "web_stomp.tcp.ip = 127.0.0.1",
            f"web_stomp.tcp.port = {WEB_STOMP_PORT}",
            f"stomp.listeners.tcp.1 = 127.0.0.1:{WEB_STOMP_PORT - 1}",
        ),
    )


def main() -> int:
    quick = "--quick" in sys.argv
    sizes = QUICK if quick else FULL
    raise_fd_limit()
    node = bench_node()
    node.start()
    amqp = node.url
    global BROKER_PID
    BROKER_PID = node.server_pid()
    results: dict = {
        "quick": quick,
        "cores": CORES,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "commit": git_commit(),
    }
    only = set()
    for arg in sys.argv[1:]:
        if arg.startswith("--only"):
            only = set(sys.argv[sys.argv.index(arg) + 1].split(","))

    def want(name: str) -> bool:
        return not only or name in only

    try:
        if want("A"):
            n, k = sizes["A"]
            results["A"] = [scenario_a(amqp, kind, n, k) for kind in PEERS]
        if want("B"):
            n, secs = sizes["B"]
            results["B"] = [scenario_b(amqp, kind, n, secs) for kind in PEERS]
        if want("C") or want("E"):
            results["CE"] = scenario_ce(amqp, sizes["C"])
        if want("D"):
            m, k = sizes["D"]
            results["D"] = scenario_d(amqp, m, k)
        if want("F"):
            n, k = sizes["F"]
            results["F"] = scenario_f(amqp, n, k)
        if want("H"):
            results["H"] = scenario_h(amqp, sizes["H"])
        if want("R"):
            results["R"] = scenario_r(amqp, *sizes["R"])
        if want("T"):
            n, rate, secs, unpaced = sizes["T"]
            results["T"] = {
                "fixed": [scenario_t(amqp, kind, n, rate, rate * secs) for kind in PEERS],
                "max": [scenario_t(amqp, kind, n, 0, unpaced) for kind in PEERS],
            }
        if want("P"):
            n, rate, secs, _ = sizes["T"]
            results["P"] = scenario_p(amqp, n, rate, rate * secs)
        if want("S"):
            results["S"] = scenario_s(amqp, 1000, 5)
        if want("X"):
            sessions, topics = sizes["X"]
            # BENCH_X_COMPACTION=256 runs only the compacted case (the other
            # takes about 10 minutes at 1000 x 100)
            values = os.environ.get("BENCH_X_COMPACTION", "256,0").split(",")
            results["X"] = [scenario_x(node, sessions, topics, int(c)) for c in values]
        if want("U"):
            results["U"] = [scenario_u(amqp, 300, 20000) for _ in range(2)]
        if want("W"):
            n, _, _, unpaced = sizes["T"]
            results["W"] = scenario_w(amqp, n, unpaced)
    finally:
        node.stop()
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{results['time'].replace(':', '')}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(results, indent=2))
    report(results)
    print(f"\nresults: {path}")
    return 0


def report(r: dict) -> None:
    print(
        f"\nnotifyd benchmark ({'quick' if r['quick'] else 'full'}), {r['cores']} cores; "
        f"server pinned to core {SERVER_CPU}, load generator and publisher to core {CLIENT_CPU}\n"
    )
    if "F" in r:
        f = r["F"]
        print(
            f"F  two processes vs one: {f[2]['deliveries_per_s']:.0f} vs {f[1]['deliveries_per_s']:.0f} "
            f"deliveries/s = {f['ratio']:.2f}x (target >= 1.7); server CPU {f[2]['server_cpu_s']} vs "
            f"{f[1]['server_cpu_s']} s; lost {f[1]['missing'] + f[2]['missing']}\n"
        )
    a = {x["kind"]: x for x in r.get("A", [])}
    if a:
        print("A  fan-out throughput (N subscribers, one topic)")
        print(
            f"   {'peer':<9} {'N':>5} {'events':>7} {'deliv/s':>10} {'server CPU':>11} {'µs CPU/deliv':>13} {'lost':>5} {'gaps':>5}"
        )
        for kind in PEERS:
            if kind not in a:
                continue
            x = a[kind]
            print(
                f"   {kind:<9} {x['n']:>5} {x['events']:>7} {x['deliveries_per_s']:>10.0f} "
                f"{x['server_cpu_s']:>10.2f}s {x['cpu_per_delivery_us'] or 0:>13.2f} {x['missing']:>5} {x['gaps']:>5}"
            )
        print(
            f"   notifyd / seed = {a['notifyd']['deliveries_per_s'] / a['seed']['deliveries_per_s']:.2f}x "
            f"(target >= 4), notifyd / ceiling = {a['notifyd']['deliveries_per_s'] / a['ceiling']['deliveries_per_s']:.2f}x (target >= 0.7)"
        )
    if "B" in r:
        b = {x["kind"]: x for x in r["B"]}
        print("\nB  latency at 20 events/s")
        print(
            f"   {'peer':<9} {'N':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'server CPU':>11} {'lost':>5}"
        )
        for kind in PEERS:
            if kind not in b:
                continue
            x = b[kind]
            lat = x["latency_ms"]
            print(
                f"   {kind:<9} {x['n']:>5} {lat['p50']:>8.1f} {lat['p99']:>8.1f} {lat['max']:>8.1f} "
                f"{x['server_cpu_pct']:>10.0f}% {x['missing']:>5}"
            )
        ratio = b["notifyd"]["latency_ms"]["p99"] / max(b["ceiling"]["latency_ms"]["p99"], 0.001)
        print(f"   notifyd p99 / ceiling p99 = {ratio:.2f}x (target <= 3)")
    if "CE" in r:
        ce = r["CE"]
        print(
            f"\nC  RSS per idle WAMP session: {ce['rss_per_session_kib']:.2f} KiB "
            f"({ce['connections']} sessions; {ce['rss_before_kib']} -> {ce['rss_after_kib']} KiB; target <= 8)"
        )
        print(
            f"E  connection storm: {ce['connections']} connect+HELLO+SUBSCRIBE in {ce['subscribed_s']:.2f} s "
            f"(server CPU {ce['server_cpu_s']:.2f} s; target < 10 s for 5000)"
        )
    if "D" in r:
        d = r["D"]
        per_a = (a["notifyd"]["cpu_per_delivery_us"] or 0) if a else 0
        print(
            f"D  many topics: {d['clients']} clients, own topic each, {d['events']} events to random ones: "
            f"{d['cpu_per_event_us']:.1f} µs CPU/event vs {per_a:.1f} µs/delivery in A "
            f"= {d['cpu_per_event_us'] / max(per_a, 0.001):.2f}x (target <= 1.5); lost {d['missing']}; "
            f"{d['clients']} subscriptions bound in {d['subscribe_all_s']:.2f} s"
        )
    if "H" in r:
        report_h(r["H"])
    if "T" in r:
        report_t(r["T"])
    if "P" in r:
        report_p(r["P"])
    if "X" in r:
        print("\nX  per-user subscriptions on one node, RabbitMQ restarted (issue 18)")
        for x in r["X"]:
            print(
                f"   compaction {x['compaction']:>4}: {x['subscriptions']} subscriptions "
                f"({x['sessions']} sessions) subscribed in {x['subscribed_s']:.1f} s; RabbitMQ "
                f"restart {x['rabbitmq_restart_s']:.1f} s; all live again {x['live_again_s']:.2f} s "
                f"after it was up; {x['delivered']} of {x['sessions']} test events, "
                f"{x['missing']} missing"
            )
    if "U" in r:
        print("\nU  deliveries nobody on the node wants (a compacted group)")
        for x in r["U"]:
            print(
                f"   {x['unwanted']} unwanted: {x['server_cpu_s']:.2f} s server CPU = "
                f"{x['cpu_per_unwanted_us']:.1f} µs each ({x['seconds']:.1f} s)"
            )
    if "W" in r:
        report_w(r["W"])
    if "S" in r:
        print("\nS  1000 browsers x 5 tabs, every tab on its user's topic")
        for x in r["S"]:
            how = (
                "one session per browser (notifyd.js sharing)"
                if x["shared"]
                else "every tab its own"
            )
            print(
                f"   {how:<46} sessions {x['sessions']:>5}  server RSS +{x['rss_added_kib'] / 1024:.1f} MiB"
                f" ({x['rss_before_kib'] / 1024:.1f} -> {x['rss_after_kib'] / 1024:.1f} MiB)"
            )
    if "R" in r:
        x = r["R"]
        done = x["all_resubscribed_s"]
        print(
            f"\nR  reconnect storm: {x['clients']} clients, own logged topic each, {x['rate']} events/s; "
            f"node killed: all {x['resubscribed']} resumed on the other node in "
            f"{f'{done:.2f} s' if done is not None else 'NOT ALL'} (target < 10 s); "
            f"{x['received']} of {x['events']} events received, {x['missing']} lost, "
            f"{x['duplicates']} duplicates, {x['disorder']} out of order; "
            f"second node CPU {x['second_node_cpu_s']:.2f} s"
        )


def report_t(t: dict) -> None:
    print("\nT  targeted events: N subscribers, own topic each, each event to exactly one")
    print(
        f"   {'peer':<9} {'N':>5} {'rate/s':>7} {'events':>7} {'events/s':>9} {'server CPU':>11} "
        f"{'µs CPU/event':>13} {'RabbitMQ µs/ev':>15} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'disorder':>8}"
    )
    for run in ("fixed", "max"):
        for x in t[run]:
            lat = x["latency_ms"]
            rmq = x["broker_cpu_per_event_us"]
            print(
                f"   {x['kind']:<9} {x['n']:>5} {x['rate'] or 'max':>7} {x['events']:>7} "
                f"{x['events_per_s']:>9.0f} {x['server_cpu_s']:>10.2f}s "
                f"{x['cpu_per_event_us'] or 0:>13.1f} {rmq if rmq is not None else 0:>15.1f} "
                f"{lat['p50'] or 0:>7.1f} {lat['p99'] or 0:>7.1f} {x['missing']:>5} {x['out_of_order']:>8}"
            )
    fixed = {x["kind"]: x for x in t["fixed"]}
    if "notifyd" in fixed:
        print(
            f"   notifyd: {fixed['notifyd']['cpu_per_event_us'] or 0:.1f} µs server CPU per targeted "
            f"event at {fixed['notifyd']['rate']}/s (target <= 25)"
        )


def report_p(p: list) -> None:
    print("\nP  presence and receipts: T at a fixed rate, notifyd only (issue 16)")
    print(
        f"   {'variant':<30} {'N':>5} {'rate/s':>7} {'events/s':>9} {'server CPU':>11} "
        f"{'µs CPU/event':>13} {'RabbitMQ µs/ev':>15} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5}"
    )
    for x in p:
        lat = x["latency_ms"]
        rmq = x["broker_cpu_per_event_us"]
        print(
            f"   {x['variant']:<30} {x['n']:>5} {x['rate']:>7} {x['events_per_s']:>9.0f} "
            f"{x['server_cpu_s']:>10.2f}s {x['cpu_per_event_us'] or 0:>13.1f} "
            f"{rmq if rmq is not None else 0:>15.1f} {lat['p50'] or 0:>7.1f} "
            f"{lat['p99'] or 0:>7.1f} {x['missing']:>5}"
        )


def report_w(w: list) -> None:
    print("\nW  --workers: T unpaced, workers 1 vs 2")
    print(
        f"   {'workers':>7} {'cpus':>5} {'N':>5} {'events':>7} {'events/s':>9} {'server CPU':>11} "
        f"{'µs CPU/event':>13} {'p50 ms':>7} {'p99 ms':>7} {'lost':>5} {'disorder':>8}"
    )
    for x in w:
        lat = x["latency_ms"]
        print(
            f"   {x['workers']:>7} {x['cpus']:>5} {x['n']:>5} {x['events']:>7} "
            f"{x['events_per_s']:>9.0f} {x['server_cpu_s']:>10.2f}s "
            f"{x['cpu_per_event_us'] or 0:>13.1f} {lat['p50'] or 0:>7.1f} {lat['p99'] or 0:>7.1f} "
            f"{x['missing']:>5} {x['out_of_order']:>8}"
        )


def _secs(x: float | None) -> str:
    return f"{x:.2f}s" if x is not None else "-"


def report_h(h: dict) -> None:
    print("\nH  history cost: one notifyd without and with --history '#' (runs in ABBA order)")
    print(
        f"   {'':<8} {'N':>5} {'events':>7} {'deliv/s':>10} {'server CPU':>11} "
        f"{'µs CPU/deliv':>13} {'RabbitMQ CPU':>13} {'lost':>5} {'gaps':>5}"
    )
    seen = {"plain": 0, "history": 0}
    for label in h["order"]:
        x = h["fanout"][label][seen[label]]
        seen[label] += 1
        print(
            f"   {label:<8} {x['n']:>5} {x['events']:>7} {x['deliveries_per_s']:>10.0f} "
            f"{x['server_cpu_s']:>10.2f}s {x['cpu_per_delivery_us'] or 0:>13.2f} "
            f"{_secs(x['broker_cpu_s']):>13} {x['missing']:>5} {x['gaps']:>5}"
        )
    sm = h["summary"]
    print(
        f"   mean: history {sm['history']['deliveries_per_s']:.0f} vs plain "
        f"{sm['plain']['deliveries_per_s']:.0f} deliveries/s = {h['ratio']:.2f}x; "
        f"{sm['history']['cpu_per_delivery_us']:.2f} vs {sm['plain']['cpu_per_delivery_us']:.2f} "
        f"µs CPU/delivery"
    )
    print("   latency at 20 events/s:")
    print(
        f"   {'':<8} {'N':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'server CPU':>11} "
        f"{'RabbitMQ CPU':>13} {'lost':>5}"
    )
    seen = {"plain": 0, "history": 0}
    for label in h["order"]:
        x = h["latency"][label][seen[label]]
        seen[label] += 1
        q = x["latency_ms"]
        print(
            f"   {label:<8} {x['n']:>5} {q['p50']:>8.1f} {q['p99']:>8.1f} {q['max']:>8.1f} "
            f"{x['server_cpu_pct']:>10.0f}% {_secs(x['broker_cpu_s']):>13} {x['missing']:>5}"
        )
    print(
        f"   mean p50/p99: history {sm['history']['latency_p50_ms']:.1f}/"
        f"{sm['history']['latency_p99_ms']:.1f} ms vs plain {sm['plain']['latency_p50_ms']:.1f}/"
        f"{sm['plain']['latency_p99_ms']:.1f} ms"
    )
    for rs in h["resume"]:
        print(
            f"   resume {rs['events']} missed events: all in {rs['seconds']:.2f} s after SUBSCRIBE "
            f"= {rs['events_per_s']:.0f} events/s (first EVENT after "
            f"{rs['first_event_s'] * 1000:.0f} ms); CPU: server {rs['server_cpu_s']:.2f} s, "
            f"RabbitMQ {_secs(rs['broker_cpu_s'])}, client {rs['client_cpu_s']:.2f} s; "
            f"lost {rs['missing']}, gaps {rs['gaps']}, dup {rs['duplicates']}, "
            f"ids in order: {'yes' if rs['in_order'] else 'NO'}"
        )
    lost = sm["plain"]["lost"] + sm["history"]["lost"]
    print(
        f"   lost in fan-out and latency runs: {lost}; "
        f"resumes complete: {'yes' if sm['resume']['complete'] else 'NO'}"
    )


if __name__ == "__main__":
    sys.exit(main())
