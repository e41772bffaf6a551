"""
Presence into RabbitMQ: who is connected, on which node, published for the
backend (``docs/presence.md``).  Off unless ``presence`` is set.

Every node publishes, on the presence exchange (a durable topic exchange,
``presence_exchange``), one JSON message per change:

* ``join.<node>``: a session was established (after WELCOME);
* ``leave.<node>``: it ended (GOODBYE, close, kill, expiry, node stop);
* ``state.<node>``: the browser reported ``active``, ``idle`` or ``hidden``
  (``notifyd.js``: Page Visibility and input; CALL notifyd.presence.state);
* ``node.<node>``: the node's heartbeat every ``presence_heartbeat``
  seconds, and at once after every (re)connection to RabbitMQ, with the
  full list of its sessions (a snapshot: a consumer that missed messages,
  or started late, is right again after one heartbeat);
* ``stop.<node>``: the node stops (its sessions are gone).

A consumer keeps a table keyed by node and session: it applies joins and
leaves, replaces a node's sessions by each snapshot, and drops a node whose
heartbeat is older than ``3 * interval`` (a node that died without a word).
Session entries carry the session id, authid, authrole, the authextra
claims listed in ``presence_claims`` and the time of the join; nothing else
about a user leaves notifyd.

:class:`Presence` is the state (no I/O: it hands each message to its
``send`` callable); :class:`PresenceService` publishes the heartbeats.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall

from notifyd.compat import consume_directly
from notifyd.logs import Logger

_log = Logger()

#: how long a "who is online" request waits in its queue for a node
REQUEST_TTL_MS = 10_000

#: the ``version`` field of every presence message
FORMAT = 1
#: what a browser may report of itself (notifyd.js: Page Visibility and input)
STATES = ("active", "idle", "hidden")
#: the fields of a session entry
FIELDS = ("session", "authid", "authrole", "claims", "joined", "state")


def node_name() -> str:
    """This process's node id: host, process id and a random suffix (so a
    restarted node is a new node)."""
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


class Presence:
    """The sessions of this node as the presence exchange sees them."""

    def __init__(
        self,
        send: Callable[[str, bytes], object],
        clock: Any,
        *,
        node: str | None = None,
        claims: Iterable[str] = (),
        interval: float = 10.0,
    ) -> None:
        """``send(routing_key, body)`` publishes one message (fire and
        forget); ``claims``: the authextra keys published with a session."""
        self._send = send
        self._clock = clock
        self.node = node or node_name()
        self.claims = tuple(claims)
        self.interval = interval
        #: session id -> its published entry
        self.sessions: dict[int, dict[str, Any]] = {}
        self._seq = 0
        #: the whole cluster's sessions, from the presence exchange
        self.cluster = PresenceTable(clock)

    def _entry(self, session: Any) -> dict[str, Any]:
        extra = session.authextra or {}
        return {
            "session": session.session_id,
            "authid": session.authid,
            "authrole": session.authrole,
            "claims": {k: extra[k] for k in self.claims if k in extra},
            "joined": self._clock.seconds(),
            "state": None,  # until the browser says
        }

    def _publish(self, kind: str, fields: dict[str, Any]) -> None:
        self._seq += 1
        body = {
            "version": FORMAT,
            "type": kind,
            "node": self.node,
            "seq": self._seq,
            "time": self._clock.seconds(),
            **fields,
        }
        self._send(f"{kind}.{self.node}", json.dumps(body, separators=(",", ":")).encode())

    def joined(self, session: Any) -> None:
        """``session`` was welcomed."""
        entry = self._entry(session)
        self.sessions[session.session_id] = entry
        self._publish("join", entry)

    def state(self, session: Any, state: str) -> bool:
        """The browser reports ``state`` (:data:`STATES`) for ``session``;
        published when it changes.  False for a session presence does not
        know (not welcomed yet, or gone)."""
        if state not in STATES:
            raise ValueError(f"state must be one of {', '.join(STATES)}")
        entry = self.sessions.get(session.session_id)
        if entry is None:
            return False
        if entry.get("state") != state:
            entry["state"] = state
            self._publish(
                "state", {"session": entry["session"], "authid": entry["authid"], "state": state}
            )
        return True

    def left(self, session: Any) -> None:
        """``session`` ended."""
        entry = self.sessions.pop(session.session_id, None)
        if entry is not None:
            self._publish("leave", {"session": entry["session"], "authid": entry["authid"]})

    def heartbeat(self) -> None:
        """The node is alive; here is every session it holds."""
        self._publish("node", {"interval": self.interval, "sessions": list(self.sessions.values())})

    def stopped(self) -> None:
        """The node stops: every session it held is gone."""
        self.sessions.clear()
        self._publish("stop", {})


class PresenceTable:
    """The cluster's sessions as the presence exchange tells them: what every
    node with presence on keeps (to answer "who is online"), and what a
    backend keeps the same way (``docs/presence.md``)."""

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        #: node -> {session id -> entry}
        self.nodes: dict[str, dict[int, dict[str, Any]]] = {}
        #: node -> (when its last heartbeat came, its interval)
        self.heard: dict[str, tuple[float, float]] = {}

    def apply(self, msg: dict[str, Any]) -> None:
        """One presence message (ValueError if it is not one)."""
        try:
            node, kind = msg["node"], msg["type"]
            if kind == "join":
                entry = {k: msg.get(k) for k in FIELDS}
                self.nodes.setdefault(node, {})[int(msg["session"])] = entry
            elif kind == "leave":
                self.nodes.get(node, {}).pop(int(msg["session"]), None)
            elif kind == "state":
                known = self.nodes.get(node, {}).get(int(msg["session"]))
                if known is not None and msg["state"] in STATES:
                    known["state"] = msg["state"]
            elif kind == "node":
                self.nodes[node] = {
                    int(s["session"]): {k: s.get(k) for k in FIELDS} for s in msg["sessions"]
                }
                self.heard[node] = (self._clock.seconds(), float(msg["interval"]))
            elif kind == "stop":
                self.nodes.pop(node, None)
                self.heard.pop(node, None)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a presence message: {e}") from None

    def live_nodes(self) -> list[str]:
        """Nodes whose last heartbeat is at most three intervals old."""
        now = self._clock.seconds()
        return [n for n, (when, interval) in self.heard.items() if now - when <= 3 * interval]

    def lookup(
        self, authid: str | None = None, claim: str | None = None, value: Any = None
    ) -> list[dict[str, Any]]:
        """The live sessions of ``authid``, or whose claim ``claim`` is
        ``value`` (an account), each with its node."""
        out = []
        for node in self.live_nodes():
            for entry in self.nodes.get(node, {}).values():
                if authid is not None and entry["authid"] != authid:
                    continue
                if claim is not None and (entry.get("claims") or {}).get(claim) != value:
                    continue
                out.append({"node": node, **entry})
        return out

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to a "who is online" request: ``{"authid": ...}`` or
        ``{"claim": ..., "value": ...}`` (ValueError for anything else)."""
        if not isinstance(request, dict):
            raise ValueError("a request is a JSON object")
        authid, claim = request.get("authid"), request.get("claim")
        if (authid is None) == (claim is None):
            raise ValueError("ask for exactly one of authid, or claim and value")
        if authid is not None and not isinstance(authid, str):
            raise ValueError("authid must be a string")
        if claim is not None and (not isinstance(claim, str) or "value" not in request):
            raise ValueError("claim must be a string, with a value")
        sessions = self.lookup(authid=authid, claim=claim, value=request.get("value"))
        return {
            "online": bool(sessions),
            "sessions": sessions,
            "nodes": len(self.live_nodes()),
            "time": self._clock.seconds(),
        }


def requests_queue(exchange: str) -> str:
    """The queue a backend sends "who is online" requests to."""
    return exchange + ".requests"


@inlineCallbacks
def attach(
    conn: Any, channel: Any, publish_channel: Any, exchange: str, table: PresenceTable
) -> Any:
    """On every (re)connect: follow the presence exchange into ``table``
    (an exclusive queue bound with ``#``), and answer the requests of the
    shared requests queue (one node answers each, from its table)."""
    frame = yield channel.queue_declare(queue="", exclusive=True, auto_delete=True)
    queue = frame.method.queue
    yield channel.queue_bind(queue=queue, exchange=exchange, routing_key="#")
    consumer, _ = yield channel.basic_consume(queue=queue, auto_ack=True)
    consume_directly(consumer, lambda msg: _follow(table, msg.body))
    requests = requests_queue(exchange)
    yield channel.queue_declare(
        queue=requests, durable=True, arguments={"x-message-ttl": REQUEST_TTL_MS}
    )
    consumer, _ = yield channel.basic_consume(queue=requests, auto_ack=True)
    consume_directly(consumer, lambda msg: _reply(table, publish_channel, msg))


def _follow(table: PresenceTable, body: bytes) -> None:
    try:
        table.apply(json.loads(body))
    except ValueError as e:
        _log.warn("ignored a presence message: {why}", why=str(e))


def _reply(table: PresenceTable, publish_channel: Any, msg: Any) -> None:
    import pika

    try:
        answer = table.answer(json.loads(msg.body))
    except ValueError as e:
        answer = {"error": str(e)}
    reply_to = msg.properties.reply_to
    if not reply_to or not publish_channel.is_open:
        return
    publish_channel.basic_publish(
        exchange="",
        routing_key=reply_to,
        body=json.dumps(answer, separators=(",", ":")).encode(),
        properties=pika.BasicProperties(
            content_type="application/json", correlation_id=msg.properties.correlation_id
        ),
    ).addErrback(lambda f: _log.warn("presence reply lost: {why}", why=f.getErrorMessage()))


class PresenceService(Service):
    """Publishes :class:`Presence` heartbeats every ``interval`` seconds."""

    _log = Logger()

    def __init__(self, presence: Presence, clock: Any) -> None:
        self.presence = presence
        self._clock = clock
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.presence.heartbeat)
        self._loop.clock = self._clock
        self._loop.start(self.presence.interval, now=False)
        self._log.info(
            "publishing presence as node {node} every {interval} s",
            node=self.presence.node,
            interval=self.presence.interval,
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.presence.stopped()
