"""Profile notifyd under scenario T (targeted events) with py-spy.

    python bench/profile.py [--rate 3000] [--seconds 15] [--n 1000] [--native]

Starts the bench RabbitMQ node and one notifyd (pinned to core 0), connects N
clients each on its own topic, publishes round-robin at a fixed rate and
samples notifyd with ``py-spy record`` meanwhile.  Writes the collapsed stacks
to ``bench/results/profile-<time>.txt`` and prints the functions with the most
samples, by own time and including callees, as a share of the busy samples.
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run  # noqa: E402


def summarize(path: Path, top: int = 30) -> str:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        # the reactor waiting in epoll is idle time, not cost
        if "epollreactor" in frames[-1] or "Condition.wait" in frames[-1]:
            continue
        busy += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    out = [f"busy samples: {busy}", "", "own time:"]
    out += [f"  {n / busy * 100:5.1f}%  {f}" for f, n in own.most_common(top)]
    out += ["", "including callees:"]
    out += [f"  {n / busy * 100:5.1f}%  {f}" for f, n in total.most_common(top)]
    return "\n".join(out)


def user_system(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / run.CLK, int(fields[12]) / run.CLK


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=3000)
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    ap.add_argument(
        "--tool",
        choices=("py-spy", "strace", "none"),
        default="py-spy",
        help="sample with py-spy, count system calls with strace -c, or only measure CPU",
    )
    args = ap.parse_args()
    run.raise_fd_limit()
    node = run.bench_node()
    node.start()
    run.BROKER_PID = node.server_pid()
    amqp = node.url
    ex = run.fresh_exchange()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = run.ROOT / "bench" / "results" / f"profile-{stamp}.txt"
    out.parent.mkdir(exist_ok=True)
    srv = run.Server("notifyd", amqp, ex, 18087)
    try:
        lg = run.LoadGen(
            {
                "url": srv.url,
                "n": args.n,
                "mode": "wamp",
                "topicFormat": "u{i}.invoice.sent",
                "expectTotal": args.rate * args.seconds,
                "timeout": args.seconds + 300,
                "batch": 100,
                "holdOpen": True,
            }
        )
        if args.tool == "py-spy":
            command = [
                str(run.BIN / "py-spy"),
                "record",
                "--pid",
                str(srv.proc.pid),
                "--rate",
                "500",
                "--format",
                "raw",
                "--duration",
                str(args.seconds),
                "--output",
                str(out),
                *(["--native"] if args.native else []),
            ]
        elif args.tool == "strace":
            command = ["strace", "-c", "-f", "-o", str(out), "-p", str(srv.proc.pid)]
        else:
            command = ["sleep", "0"]
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = srv.cpu()
        split0 = user_system(srv.proc.pid)
        run.publish(
            amqp,
            ex,
            topicFormat="u{k}.invoice.sent",
            roundRobin=args.n,
            count=args.rate * args.seconds,
            rate=args.rate,
            paced=True,
        )
        res = lg.summary()
        cpu = srv.cpu() - cpu0
        split = [b - a for a, b in zip(split0, user_system(srv.proc.pid), strict=False)]
        lg.close()
        if args.tool == "strace":
            spy.send_signal(2)  # SIGINT: strace writes its summary
        spy.wait(args.seconds + 60)
    finally:
        srv.stop()
        node.stop()
    print(
        f"{res['events']} events at {args.rate}/s, {res['missing']} lost: "
        f"{cpu / max(res['events'], 1) * 1e6:.1f} µs notifyd CPU per event "
        f"({split[0] / max(res['events'], 1) * 1e6:.1f} user, "
        f"{split[1] / max(res['events'], 1) * 1e6:.1f} system; with the sampler attached)"
    )
    if args.tool == "py-spy":
        print(summarize(out))
        print(f"\nstacks: {out}")
    elif args.tool == "strace":
        print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
