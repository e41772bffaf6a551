"""The soak test: ``make soak`` (docs/operations.md, "Soak test").

Mixed load against two notifyd nodes that share a private RabbitMQ node
(``.rabbitmq/soak``), for ``--minutes`` (default 30):

* a publisher (:class:`notifyd.publisher.Publisher`, the documented
  contract) sends numbered events at ``--rate`` per second to three topics,
  all kept in the event log (``--history '#'``);
* ``--clients`` web/notifyd.js clients on Node (tests/js/resilient.cjs), each
  given both nodes' URLs, subscribe by prefix; they reconnect and resume by
  themselves;
* every ``--every`` seconds a fault, in turn: RabbitMQ is stopped and
  started again, or one notifyd node is SIGKILLed (and started again a few
  seconds later, so clients move between nodes).

At the end the publisher stops, the clients get up to two minutes to catch
up, and for every client the run counts events published, delivered
(distinct), lost, duplicated and reordered (within each of its two
subscriptions: order across subscriptions is not promised), and the gaps
notifyd.js reported.
The figures go to standard output and ``bench/results/soak-<time>.json``;
the exit status is 1 if any client lost an event.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT))

from devtools.devbroker import Node  # noqa: E402
from notifyd.publisher import Publisher, PublishFailed  # noqa: E402

TOPICS = ("invoice.sent", "client.created", "invoice.paid")


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class NotifydNode:
    """One ``twistd notifyd`` process on a fixed port."""

    def __init__(self, name: str, port: int, url: str, exchange: str, stream: str, logdir: Path):
        self.name, self.port = name, port
        self.args = [
            str(BIN / "twistd"),
            "-n",
            "--pidfile=",
            "notifyd",
            "--amqp-url",
            url,
            "--exchange",
            exchange,
            "--listen",
            f"tcp:{port}:interface=127.0.0.1",
            "--allow-anonymous",
            "--history",
            "#",
            "--history-stream",
            stream,
            "--retained-stream",
            stream + ".retained",
            "--amqp-max-retry-delay",
            "1",
            "--max-connections-per-address",
            "0",
        ]
        self.logfile = logdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        out = open(self.logfile, "a")
        self.proc = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2):
                    return
            except Exception:
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not become ready; see {self.logfile}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Client:
    """A notifyd.js client on Node; records the seq of every event."""

    def __init__(self, urls: str) -> None:
        self.proc = subprocess.Popen(
            [
                "node",
                str(ROOT / "tests/js/resilient.cjs"),
                urls,
                "invoice.:prefix",
                "client.:prefix",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
            text=True,
        )
        self.seqs: list[int] = []
        self.gaps: list[dict] = []
        self.sessions = 0
        self.live = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r["ev"] == "event":
                self.seqs.append(r["args"][0]["seq"])
            elif r["ev"] == "gap":
                self.gaps.append(r)
            elif r["ev"] == "state" and r["state"] == "live":
                self.sessions += 1
                self.live.set()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def figures(self, published: int) -> dict:
        seen = set(self.seqs)
        first = min(seen) if seen else 0
        # order is per subscription: "invoice." gets seq % 3 in (0, 2),
        # "client." gets seq % 3 == 1 (see TOPICS)
        reordered = 0
        high = {"invoice.": -1, "client.": -1}
        firsts: set[int] = set()
        for s in self.seqs:
            if s in firsts:
                continue
            firsts.add(s)
            sub = "client." if TOPICS[s % len(TOPICS)].startswith("client.") else "invoice."
            if s < high[sub]:
                reordered += 1
            high[sub] = max(high[sub], s)
        return {
            "first": first,
            "delivered": len(seen),
            "lost": sum(1 for s in range(first, published) if s not in seen),
            "duplicated": len(self.seqs) - len(seen),
            "reordered": reordered,
            "gaps": len(self.gaps),
            "sessions": self.sessions,
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--rate", type=float, default=50.0, help="events per second")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--every", type=float, default=150.0, help="seconds between faults")
    args = p.parse_args(argv)

    env = {
        **os.environ,
        "NOTIFYD_DEV_DIR": str(ROOT / ".rabbitmq" / "soak"),
        "NOTIFYD_DEV_AMQP_PORT": "26740",
        "NOTIFYD_DEV_NODENAME": "notifyd-soak",
    }
    rabbit = Node.from_environ(env)
    logdir = ROOT / "bench" / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    logdir.mkdir(parents=True, exist_ok=True)
    log(f"starting RabbitMQ (logs of this run in {logdir})")
    rabbit.start()
    run = uuid.uuid4().hex[:8]
    exchange, stream = f"soak-{run}", f"soak-{run}"
    nodes = [
        NotifydNode(name, port, rabbit.url, exchange, stream, logdir)
        for name, port in (("a", 18601), ("b", 18602))
    ]
    for node in nodes:
        node.start()
    urls = ",".join(f"ws://127.0.0.1:{n.port}/ws" for n in nodes)
    clients = [Client(urls) for _ in range(args.clients)]
    for c in clients:
        if not c.live.wait(60):
            raise RuntimeError("a client did not connect")
    time.sleep(2)  # their SUBSCRIBEs are answered

    published = [0]
    failures: list[str] = []
    stop = threading.Event()

    def publish() -> None:
        pub = Publisher(rabbit.url, exchange, logged=["#"], retry_for=600)
        interval = 1.0 / args.rate
        next_at = time.monotonic()
        while not stop.is_set():
            seq = published[0]
            try:
                pub.publish(TOPICS[seq % len(TOPICS)], {"seq": seq})
            except PublishFailed as e:
                failures.append(str(e))
                continue
            published[0] += 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
            else:
                next_at = time.monotonic()
        pub.close()
        log(f"publisher: {published[0]} events, {pub.retries} retries")

    publisher = threading.Thread(target=publish)
    publisher.start()
    faults: list[tuple[float, str]] = []
    started = time.monotonic()
    end = started + args.minutes * 60
    turn = 0
    try:
        while time.monotonic() + args.every < end:
            time.sleep(args.every)
            kind = ("rabbitmq restart", "SIGKILL a", "SIGKILL b")[turn % 3]
            turn += 1
            t = time.monotonic() - started
            log(f"fault {turn}: {kind} (published so far: {published[0]})")
            if kind == "rabbitmq restart":
                rabbit.stop()
                time.sleep(3)
                rabbit.start()
            else:
                node = nodes[0] if kind.endswith("a") else nodes[1]
                node.kill()
                time.sleep(5)
                node.start()
            faults.append((round(t, 1), kind))
        time.sleep(max(0.0, end - time.monotonic()))
    finally:
        stop.set()
        publisher.join()
    total = published[0]
    log(f"publishing stopped at {total}; waiting for the clients to catch up")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if all(c.figures(total)["lost"] == 0 for c in clients):
            break
        time.sleep(1)
    figures = [c.figures(total) for c in clients]
    for c in clients:
        c.close()
    for node in nodes:
        node.stop()
    rabbit.stop()
    summary = {
        "minutes": args.minutes,
        "rate": args.rate,
        "clients": args.clients,
        "published": total,
        "publish_failures": len(failures),
        "faults": faults,
        "lost": sum(f["lost"] for f in figures),
        "duplicated": sum(f["duplicated"] for f in figures),
        "reordered": sum(f["reordered"] for f in figures),
        "gaps": sum(f["gaps"] for f in figures),
        "sessions": sum(f["sessions"] for f in figures),
        "per_client": figures,
    }
    (logdir / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: v for k, v in summary.items() if k != "per_client"}, indent=2))
    print("client  delivered  lost  duplicated  reordered  gaps  sessions")
    for i, f in enumerate(figures):
        print(
            f"{i:6}  {f['delivered']:9}  {f['lost']:4}  {f['duplicated']:10}  "
            f"{f['reordered']:9}  {f['gaps']:4}  {f['sessions']:8}"
        )
    return 1 if summary["lost"] or summary["reordered"] or failures else 0


if __name__ == "__main__":
    sys.exit(main())
