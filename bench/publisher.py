"""Benchmark publisher: ~265-byte JSON events with a send timestamp.

    python bench/publisher.py '{"url": ..., "exchange": ..., "topic": "bench.t",
                                 "count": 200, "rate": 0}'

rate 0 publishes as fast as the connection allows; otherwise at
``rate`` events per second, each one confirmed -- or, with "paced": true, at
(with "receipt": true every event asks for a delivery receipt: header
``notifyd-receipt`` and a ``message_id``)
``rate`` without waiting for confirms (for rates a confirm round trip per
event cannot reach; scenario T).  With "topics": N, each event goes to a random
``<topic>.<k>`` (k < N); with "roundRobin": N and "topicFormat" (``{k}`` in
it), event ``seq`` goes to ``topicFormat`` with k = seq mod N.  Prints one JSON
line with what it sent.
"""

from __future__ import annotations

import json
import random
import sys
import time

import pika


def main() -> None:
    cfg = json.loads(sys.argv[1])
    conn = pika.BlockingConnection(pika.URLParameters(cfg["url"]))
    ch = conn.channel()
    ch.exchange_declare(cfg["exchange"], exchange_type="topic", durable=True)
    rate = cfg.get("rate", 0)
    if rate and not cfg.get("paced"):
        ch.confirm_delivery()  # paced: confirm each one
    # as fast as possible: no per-message confirm (losses would show up as
    # gaps at the load generator, which checks every sequence number)
    props = pika.BasicProperties(content_type="application/json")
    pad = "x" * 150
    interval = 1.0 / rate if rate else 0.0
    start = time.time()
    rnd = random.Random(7)
    for seq in range(cfg["count"]):
        if interval:
            delay = start + seq * interval - time.time()
            if delay > 0:
                time.sleep(delay)
        topic = cfg.get("topic", "")
        if cfg.get("roundRobin"):
            topic = cfg["topicFormat"].format(k=seq % cfg["roundRobin"])
        elif cfg.get("topics"):
            topic = f"{topic}.{rnd.randrange(cfg['topics'])}"
        body = json.dumps(
            {
                "seq": seq,
                "sent": time.time(),
                "invoice": f"INV-{seq:06d}",
                "client": "Acme Ltd",
                "amount": 1250.0,
                "currency": "EUR",
                "pad": pad,
            }
        ).encode()
        if cfg.get("receipt"):
            props = pika.BasicProperties(
                content_type="application/json",
                headers={"notifyd-receipt": True},
                message_id=f"bench-{seq}",
            )
        ch.basic_publish(cfg["exchange"], topic, body, props)
    conn.close()
    print(json.dumps({"sent": cfg["count"], "seconds": time.time() - start}))


if __name__ == "__main__":
    main()
