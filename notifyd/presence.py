"""
Presence into RabbitMQ: who is connected, on which node, published for the
backend (``docs/presence.md``).  Off unless ``presence`` is set.

Every node publishes, on the presence exchange (a durable topic exchange,
``presence_exchange``), one JSON message per change:

* ``join.<node>``: a session was established (after WELCOME);
* ``leave.<node>``: it ended (GOODBYE, close, kill, expiry, node stop);
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
from twisted.internet.task import LoopingCall

from notifyd.logs import Logger

#: the ``version`` field of every presence message
FORMAT = 1


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

    def _entry(self, session: Any) -> dict[str, Any]:
        extra = session.authextra or {}
        return {
            "session": session.session_id,
            "authid": session.authid,
            "authrole": session.authrole,
            "claims": {k: extra[k] for k in self.claims if k in extra},
            "joined": self._clock.seconds(),
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
