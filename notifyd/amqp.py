"""
The AMQP side: one connection to RabbitMQ, this node's queue, its bindings,
the consumer loop and client publications.

On every (re)connect the service declares the events exchange (a durable
topic exchange, or checks it passively), declares an exclusive, auto-delete,
server-named queue, sets the prefetch, re-applies every binding the broker
holds (:class:`notifyd.bindings.Bindings`), opens a second channel in
publisher-confirm mode and starts consuming with manual acks.  Each delivery
is handed to the router synchronously (decoded once, fanned out into the
sessions' transports) and acked afterwards; a delivery the router refuses
(:class:`notifyd.events.BadEvent`) is rejected without requeue so that a
dead-letter exchange, if configured, catches it; one no subscription on this
node wants (a compacted group binding, see :mod:`notifyd.compaction`) is
acked unread.

While RabbitMQ is unreachable the service retries with exponential backoff;
WebSocket sessions stay open and subscribed, new SUBSCRIBEs wait for their
binding, and publications fail with ``notifyd.error.publish_unavailable``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pika
from pika.adapters.twisted_connection import TwistedProtocolConnection
from pika.exceptions import (
    ChannelClosedByBroker,
    ConnectionClosedByBroker,
    NackError,
    ProbableAccessDeniedError,
    ProbableAuthenticationError,
    UnroutableError,
)
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, inlineCallbacks
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory
from twisted.internet.ssl import optionsForClientTLS
from twisted.python.failure import Failure

from notifyd.bindings import Bindings
from notifyd.compat import consume_directly, fast_inbound
from notifyd.events import BadEvent, Publication
from notifyd.logs import Logger
from notifyd.router import PublishRejected, PublishUnavailable
from notifyd.streams import AckBatcher, reconnect_when_cancelled

if TYPE_CHECKING:
    from notifyd.history import History


class _QueueBinder:
    """Binds this node's queue to the events exchange on one channel."""

    def __init__(self, channel: Any, queue: str, exchange: str) -> None:
        self._channel = channel
        self._queue = queue
        self._exchange = exchange

    def bind(self, key: str) -> Deferred[Any]:
        return self._channel.queue_bind(queue=self._queue, exchange=self._exchange, routing_key=key)

    def unbind(self, key: str) -> Deferred[Any]:
        return self._channel.queue_unbind(
            queue=self._queue, exchange=self._exchange, routing_key=key
        )


#: a read at least this big is not followed by the read_batch pause
BATCHED_READ = 16384


class _Connection(TwistedProtocolConnection):
    """pika's Twisted connection; with ``read_batch`` > 0 it stops reading
    for that many seconds after each read, so that the deliveries arriving
    meanwhile are read, parsed, fanned out and acked together: one wakeup,
    one ``recv`` and one reactor turn for several events instead of one
    each."""

    def __init__(self, params: pika.ConnectionParameters, read_batch: float, clock: Any) -> None:
        super().__init__(params)
        self._read_batch = read_batch
        self._clock = clock
        self._paused = False

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        # a big read is a batch already (a backlog, a replay, a large body):
        # pausing after it would only cap the throughput
        if (
            self._read_batch > 0
            and len(data) < BATCHED_READ
            and not self._paused
            and self.transport is not None
        ):
            self._paused = True
            self.transport.pauseProducing()
            self._clock.callLater(self._read_batch, self._resume)

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and self.transport.connected:
            self.transport.resumeProducing()


class _ConnectionFactory(Factory):
    def __init__(
        self, params: pika.ConnectionParameters, read_batch: float = 0.0, clock: Any = None
    ) -> None:
        self.params = params
        self.read_batch = read_batch
        self.clock = clock

    def buildProtocol(self, addr: Any) -> TwistedProtocolConnection:
        proto = _Connection(self.params, self.read_batch, self.clock)
        proto.factory = self
        return proto


class _RotatingEndpoint:
    """Connects to the next of several RabbitMQ nodes on every attempt, so
    ClientService's retries walk through the cluster."""

    def __init__(self, targets: list[tuple[Any, pika.URLParameters]]) -> None:
        self.targets = targets
        self._next = 0
        self.current: pika.URLParameters = targets[0][1]

    def connect(self, factory: _ConnectionFactory) -> Deferred[Any]:
        endpoint, params = self.targets[self._next % len(self.targets)]
        self._next += 1
        self.current = params
        factory.params = params
        return endpoint.connect(factory)


def endpoint_for(reactor: Any, url: str) -> tuple[Any, pika.URLParameters]:
    """The Twisted client endpoint and pika parameters for an AMQP URL."""
    params = pika.URLParameters(url)
    # operators see which process a connection belongs to (rabbitmqctl,
    # management UI): notifyd@host:pid
    params.client_properties = {
        "connection_name": f"notifyd@{socket.gethostname()}:{os.getpid()}",
    }
    endpoint = HostnameEndpoint(reactor, params.host, params.port, timeout=10)
    if params.ssl_options is not None:
        endpoint = wrapClientTLS(optionsForClientTLS(params.host), endpoint)
    return endpoint, params


def setup_hint(error: Exception, exchange: str, passive: bool) -> str | None:
    """One line naming what to change when RabbitMQ refuses the set-up, or
    None for an error that is not a refusal (logged with its traceback)."""
    code = getattr(error, "reply_code", None)
    text = getattr(error, "reply_text", "") or ""
    if isinstance(error, ProbableAuthenticationError):
        return "authentication failed: check the user and password in amqp_url"
    if isinstance(error, ProbableAccessDeniedError):
        return "access to the virtual host was refused: check the vhost and permissions in amqp_url"
    if not isinstance(error, (ChannelClosedByBroker, ConnectionClosedByBroker)):
        return None
    if code == 406 and "exchange" in text:
        return (
            f"exchange {exchange!r} exists with other properties ({text}); set "
            "exchange_passive = true to use it as it is, or choose another exchange"
        )
    if code == 406:
        return (
            f"a queue exists with other arguments ({text}); delete it, or change "
            "history_stream / history_ingest_queue_type to match"
        )
    if code == 404 and passive:
        return (
            f"exchange {exchange!r} does not exist ({text}); create it, or unset exchange_passive"
        )
    if code == 403:
        return (
            f"the RabbitMQ user of amqp_url may not do this ({text}); grant it configure, "
            f"write and read permissions on {exchange!r}, {exchange}.* and the notifyd queues"
        )
    return f"{text or type(error).__name__} (AMQP code {code})"


class AMQPService(Service):
    """Keeps this node connected, bound and consuming."""

    _log = Logger()

    def __init__(
        self,
        url: str | list[str],
        exchange: str,
        bindings: Bindings,
        deliver: Callable[[str, Any, bytes], Any],
        observe_latency: Callable[[float], None] | None = None,
        *,
        control: Callable[[bytes], Any] | None = None,
        history: History | None = None,
        exchange_passive: bool = False,
        prefetch: int = 256,
        dead_letter_exchange: str | None = None,
        max_retry_delay: float = 10.0,
        read_batch: float = 0.0,
        exchanges: tuple[str, ...] = (),
        on_ready: Callable[[], object] | None = None,
        attach: Sequence[Callable[[Any, Any, Any], Deferred[Any]]] = (),
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.urls = [url] if isinstance(url, str) else list(url)
        #: the event log, declared and followed on every connect
        self.history = history
        self.exchange = exchange
        self.exchange_passive = exchange_passive
        self.prefetch = prefetch
        self.dead_letter_exchange = dead_letter_exchange
        self.bindings = bindings
        self._deliver = deliver
        self._observe = observe_latency
        #: handles a message of the control exchange (kill orders); raises
        #: ValueError for one it refuses
        self._control = control
        self.control_exchange = f"{exchange}.control"
        self._max_retry_delay = max_retry_delay
        #: seconds to wait after each read from RabbitMQ (see _Connection)
        self.read_batch = read_batch
        #: more durable topic exchanges this node publishes to (presence)
        self.exchanges = tuple(exchanges)
        #: called after every (re)connect, once consuming
        self._on_ready = on_ready
        #: more set-ups on every (re)connect: attach(conn, channel, publish_channel)
        self._attach = tuple(attach)
        self._backoff = backoffPolicy(initialDelay=0.5, maxDelay=max_retry_delay)
        #: set-ups RabbitMQ refused in a row (they count for the backoff)
        self.setup_failures = 0
        self._client: ClientService | None = None
        self._consumer: tuple[Any, str] | None = None
        self._acks = AckBatcher(reactor, batch=prefetch // 4)
        self._conn: TwistedProtocolConnection | None = None
        self._publish_channel: Any = None
        self.queue: str | None = None
        self.ready = False
        self.reconnects = 0
        self._connected_once = False

    # -- Service ---------------------------------------------------------------
    def startService(self) -> None:
        super().startService()
        self._endpoint = _RotatingEndpoint([endpoint_for(self._reactor, u) for u in self.urls])
        factory = self.connection_factory(self._endpoint.current)
        self._client = ClientService(
            self._endpoint,
            factory,
            retryPolicy=self._retry_delay,
            clock=self._reactor,
            prepareConnection=self._prepare,
        )
        self._client.startService()
        self._log.info(
            "connecting to RabbitMQ at {nodes}",
            nodes=", ".join(f"{p.host}:{p.port}" for _, p in self._endpoint.targets),
        )

    def connection_factory(self, params: pika.ConnectionParameters) -> Factory:
        """The factory of this service's RabbitMQ connections."""
        return _ConnectionFactory(params, self.read_batch, self._reactor)

    def _retry_delay(self, attempt: int) -> float:
        """Exponential backoff over failed connects *and* failed set-ups."""
        return self._backoff(max(attempt, self.setup_failures))

    @inlineCallbacks
    def stop_consuming(self, timeout: float = 5.0) -> Any:
        """Cancel the consumer.  Deliveries that arrive until RabbitMQ's
        cancel-ok are still fanned out and acked (the consumer loop handles
        each one as it arrives), so nothing this node took is left unhandled.
        """
        self.ready = False
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        channel, tag = consumer
        if not channel.is_open:
            return
        try:
            yield channel.basic_cancel(tag).addTimeout(timeout, self._reactor)
            self._acks.flush()
            self._log.info("AMQP consumer cancelled after {n} acked deliveries", n=self.acked)
        except Exception as e:
            self._log.warn("cancelling the AMQP consumer failed: {e}", e=e)

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        self.ready = False
        self._acks.flush()
        conn = self._conn
        # binding changes still in flight (sessions that just left) fail when
        # the connection closes: they no longer matter (the queue goes with it)
        self.bindings.detach()
        if self.history is not None:
            self.history.detach()
        if conn is not None and conn.is_open:
            try:
                yield conn.close().addTimeout(5, self._reactor)
            except Exception:
                conn.transport.abortConnection()
        if self._client is not None:
            yield self._client.stopService()

    # -- connection set-up -------------------------------------------------------
    @inlineCallbacks
    def _prepare(self, conn: TwistedProtocolConnection) -> Any:
        try:
            yield conn.ready
            fast_inbound(conn)
            channel = yield conn.channel()
            if self.exchange_passive:
                yield channel.exchange_declare(exchange=self.exchange, passive=True)
            else:
                yield channel.exchange_declare(
                    exchange=self.exchange, exchange_type="topic", durable=True
                )
            arguments = {}
            if self.dead_letter_exchange:
                arguments["x-dead-letter-exchange"] = self.dead_letter_exchange
            frame = yield channel.queue_declare(
                queue="", exclusive=True, auto_delete=True, arguments=arguments
            )
            queue = frame.method.queue
            if self._control is not None:
                # every node's queue gets every order of the control exchange
                yield channel.exchange_declare(
                    exchange=self.control_exchange, exchange_type="fanout", durable=True
                )
                yield channel.queue_bind(
                    queue=queue, exchange=self.control_exchange, routing_key=""
                )
            for exchange in self.exchanges:
                yield channel.exchange_declare(
                    exchange=exchange, exchange_type="topic", durable=True
                )
            yield channel.basic_qos(prefetch_count=self.prefetch)
            publish_channel = yield conn.channel()
            yield publish_channel.confirm_delivery()
            if self.history is not None:
                yield self.history.attach(conn, channel, publish_channel, self.exchange)
            yield self.bindings.attach(_QueueBinder(channel, queue, self.exchange))
            for attach in self._attach:
                yield attach(conn, channel, publish_channel)
            consumer, tag = yield channel.basic_consume(queue=queue, auto_ack=False)
        except Exception as e:
            self.bindings.detach()
            if self.history is not None:
                self.history.detach()
            self.setup_failures += 1
            hint = setup_hint(e, self.exchange, self.exchange_passive)
            if hint is None:
                self._log.failure("RabbitMQ set-up failed; retrying")
            else:
                self._log.error("RabbitMQ refused notifyd's set-up: {hint}; retrying", hint=hint)
            # ClientService only takes a disconnect of a connection it saw
            # made: "succeed", then close; the retry policy keeps the backoff
            conn.transport.loseConnection()
            return
        self.setup_failures = 0
        self._conn = conn
        self.queue = queue
        self._publish_channel = publish_channel
        self._consumer = (channel, tag)
        conn.closed.addCallback(self._lost, conn)
        channel.on_closed.addCallback(self._channel_closed, conn, "consumer")
        publish_channel.on_closed.addCallback(self._channel_closed, conn, "publisher")
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True
        self.ready = True
        params = self._endpoint.current
        self._log.info(
            "notifyd ready on {host}:{port}: consuming queue {queue} bound to exchange "
            "{exchange} ({n} binding keys)",
            host=params.host,
            port=params.port,
            queue=queue,
            exchange=self.exchange,
            n=len(self.bindings.bound),
        )
        self._consume(channel, consumer)
        if self._on_ready is not None:
            self._on_ready()

    def _channel_closed(self, reason: Any, conn: Any, which: str) -> None:
        if conn is self._conn and conn.is_open:
            self._log.warn(
                "RabbitMQ closed the {which} channel ({reason}); reconnecting",
                which=which,
                reason=reason,
            )
            conn.close()

    def _lost(self, reason: Any, conn: Any) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self._publish_channel = None
        self.ready = False
        self.bindings.detach()
        if self.history is not None:
            self.history.detach()
        if self.running:
            self._log.warn("lost the RabbitMQ connection ({reason}); reconnecting", reason=reason)

    # -- consuming -----------------------------------------------------------------
    def _consume(self, channel: Any, consumer: Any) -> None:
        reconnect = reconnect_when_cancelled(self._conn, f"this node's queue {self.queue}")

        def cancelled(reason: Any) -> None:
            # stop_consuming's own basic.cancel ends the queue the same way
            if self._consumer is not None and self._consumer[0] is channel:
                reconnect(reason)

        consume_directly(consumer, lambda msg: self._on_message(channel, msg), cancelled)

    def _on_message(self, channel: Any, msg: Any) -> None:
        tag = msg.method.delivery_tag
        if msg.method.exchange == self.control_exchange and self._control is not None:
            self._on_control(channel, tag, msg.body)
            return
        started = time.monotonic()
        try:
            self._deliver(msg.method.routing_key, msg.properties, msg.body)
        except BadEvent as e:
            self._log.warn(
                "rejected AMQP message on {key}: {reason}",
                key=msg.method.routing_key,
                reason=str(e),
            )
            self._reject(channel, tag)
            return
        except Exception:
            self._log.failure("internal error delivering {key}", key=msg.method.routing_key)
            self._reject(channel, tag)
            return
        if self._observe is not None:
            self._observe(time.monotonic() - started)
        self._acks.later(channel, tag)

    def _on_control(self, channel: Any, tag: int, body: bytes) -> None:
        try:
            self._control(body)
        except ValueError as e:
            self._log.warn("refused control message: {reason}", reason=str(e))
            self._reject(channel, tag)
            return
        except Exception:
            self._log.failure("internal error handling a control message")
            self._reject(channel, tag)
            return
        self._acks.later(channel, tag)

    def send(self, exchange: str, routing_key: str, body: bytes) -> bool:
        """Publish ``body`` without waiting for RabbitMQ's confirm (presence,
        receipts: docs/presence.md says what a lost one means); dropped while
        disconnected (False)."""
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            return False
        channel.basic_publish(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            properties=pika.BasicProperties(content_type="application/json"),
        ).addErrback(
            lambda f: self._log.debug(
                "message {key} to {exchange} not confirmed: {why}",
                key=routing_key,
                exchange=exchange,
                why=f.getErrorMessage(),
            )
        )
        return True

    def broadcast(self, body: bytes) -> Deferred[None]:
        """Publish ``body`` on the control exchange (every node gets it)."""
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            return fail(PublishUnavailable())
        return channel.basic_publish(
            exchange=self.control_exchange,
            routing_key="",
            body=body,
            properties=pika.BasicProperties(content_type="application/json"),
        ).addCallback(lambda _: None)

    @property
    def acked(self) -> int:
        """Deliveries acked (or about to be, this reactor turn)."""
        return self._acks.count

    # Acks are batched (streams.AckBatcher): one basic.ack(multiple=True)
    # covers every delivery fanned out before it.  A reject first flushes the
    # pending acks, so "multiple" never covers a rejected delivery.
    def _reject(self, channel: Any, tag: int) -> None:
        self._acks.flush()
        if channel.is_open:
            channel.basic_reject(tag, requeue=False)

    # -- publishing -------------------------------------------------------------------
    def publish(self, publication: Publication) -> Deferred[None]:
        """Publish to the events exchange; fires on RabbitMQ's confirm."""
        channel = self._publish_channel
        if channel is None or not channel.is_open:
            return fail(PublishUnavailable())
        props = pika.BasicProperties(
            content_type="application/json",
            headers=publication.headers,
            timestamp=int(time.time()),
            app_id="notifyd",
        )
        d = channel.basic_publish(
            exchange=self.exchange,
            routing_key=publication.topic,
            body=publication.body,
            properties=props,
        )

        def translate(f: Failure) -> Failure:
            if f.check(NackError, UnroutableError):
                return Failure(PublishRejected())
            return Failure(PublishUnavailable())

        return d.addCallbacks(lambda _: None, translate)
