"""The raw ceiling, for ratios: the least work a broadcaster can do.

A minimal asyncio server: a hand-written WebSocket handshake, and for each
AMQP message one pre-built text frame written to every socket (or, for
clients that named a routing key, ``/ws?topic=…``, to those of that key).  The AMQP
side is pika in a thread (blocking consumer, no acks) handing bodies to the
event loop.

    python bench/ceiling.py PORT AMQP_URL EXCHANGE
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
import threading

import pika

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TRANSPORTS: set = set()
#: routing key -> transports of clients that named it (``/ws?topic=…``, scenario T)
BY_TOPIC: dict = {}


class Server(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buf = b""

    def data_received(self, data):
        if self.transport in TRANSPORTS:
            return  # ignore anything clients send afterwards
        self.buf += data
        if b"\r\n\r\n" not in self.buf:
            return
        key = b""
        request = self.buf.split(b"\r\n", 1)[0].split(b" ")
        target = request[1] if len(request) > 1 else b""
        self.topic = target.split(b"topic=", 1)[1].decode() if b"topic=" in target else None
        for line in self.buf.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        if self.topic is None:
            TRANSPORTS.add(self.transport)
        else:
            BY_TOPIC.setdefault(self.topic, set()).add(self.transport)

    def connection_lost(self, exc):
        TRANSPORTS.discard(self.transport)
        BY_TOPIC.get(getattr(self, "topic", None), set()).discard(self.transport)


def frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes([0x81, n]) + payload
    if n < 65536:
        return bytes([0x81, 126]) + n.to_bytes(2, "big") + payload
    return bytes([0x81, 127]) + n.to_bytes(8, "big") + payload


def broadcast(topic: str, body: bytes) -> None:
    data = frame(body)
    for t in TRANSPORTS:
        t.write(data)
    for t in BY_TOPIC.get(topic, ()):
        t.write(data)


def consume(loop, url: str, exchange: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.exchange_declare(exchange, exchange_type="topic", durable=True)
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, exchange, "#")
    print("READY", flush=True)
    for method, _props, body in ch.consume(queue, auto_ack=True):
        loop.call_soon_threadsafe(broadcast, method.routing_key, body)


async def main() -> None:
    port, url, exchange = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    loop = asyncio.get_running_loop()
    await loop.create_server(Server, "127.0.0.1", port, backlog=4096)
    threading.Thread(target=consume, args=(loop, url, exchange), daemon=True).start()
    await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
