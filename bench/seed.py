"""The seed design, for ratios: what teams hand-roll today.

A Tornado ``WebSocketHandler`` plus a pika consumer (pika's Tornado adapter)
that ``json.dumps`` each message and ``write_message``s it to every socket.
No WAMP, no filtering: every client gets every event -- except a client
that names its topic in the URL (``/ws?topic=u7.invoice.sent``, scenario T),
which gets the events of that routing key only.

    python bench/seed.py PORT AMQP_URL EXCHANGE
"""

from __future__ import annotations

import json
import sys

import pika
from pika.adapters.tornado_connection import TornadoConnection
from tornado import ioloop, web, websocket

CLIENTS: set = set()
#: routing key -> the clients that asked for it (scenario T)
BY_TOPIC: dict = {}


class Socket(websocket.WebSocketHandler):
    def check_origin(self, origin: str) -> bool:
        return True

    def open(self) -> None:
        self.topic = self.get_argument("topic", None)
        if self.topic is None:
            CLIENTS.add(self)
        else:
            BY_TOPIC.setdefault(self.topic, set()).add(self)

    def on_close(self) -> None:
        CLIENTS.discard(self)
        BY_TOPIC.get(self.topic, set()).discard(self)


def main() -> None:
    port, url, exchange = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    app = web.Application([(r"/ws", Socket)])
    app.listen(port, address="127.0.0.1", backlog=4096)

    def on_message(channel, method, properties, body):
        message = json.dumps(json.loads(body))
        for client in list(CLIENTS) + list(BY_TOPIC.get(method.routing_key, ())):
            try:
                client.write_message(message)
            except websocket.WebSocketClosedError:
                CLIENTS.discard(client)
                BY_TOPIC.get(client.topic, set()).discard(client)
        channel.basic_ack(method.delivery_tag)

    def on_channel(channel):
        channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        channel.queue_declare(
            "", exclusive=True, callback=lambda frame: bound(channel, frame.method.queue)
        )

    def bound(channel, queue):
        channel.queue_bind(queue, exchange, "#")
        channel.basic_qos(prefetch_count=256)
        channel.basic_consume(queue, on_message)
        print("READY", flush=True)

    TornadoConnection(
        pika.URLParameters(url),
        on_open_callback=lambda conn: conn.channel(on_open_callback=on_channel),
    )
    ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
