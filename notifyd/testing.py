"""
Fakes for testing code built on notifyd without a network.

* :class:`FakeBinder` stands in for the AMQP channel behind
  :class:`notifyd.bindings.Bindings`; each bind/unbind waits until the test
  calls :meth:`FakeBinder.complete` (or completes at once with ``auto=True``).
* :class:`RecordingTransport` is a WAMP session transport that records what
  the session sent.
* :class:`FakePublisher` records client publications and answers them as the
  test decides.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

from notifyd.events import Publication


class FakeBinder:
    """A channel whose queue.bind/unbind the test completes by hand."""

    def __init__(self, auto: bool = False) -> None:
        self.auto = auto
        self.ops: list[tuple[str, str]] = []
        self.pending: list[tuple[str, str, Deferred[None]]] = []

    def bind(self, key: str) -> Deferred[None]:
        return self._op("bind", key)

    def unbind(self, key: str) -> Deferred[None]:
        return self._op("unbind", key)

    def _op(self, op: str, key: str) -> Deferred[None]:
        self.ops.append((op, key))
        if self.auto:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.pending.append((op, key, d))
        return d

    def complete(self, n: int | None = None) -> None:
        """Confirm the oldest ``n`` (default: all) pending operations."""
        todo = self.pending if n is None else self.pending[:n]
        self.pending = [] if n is None else self.pending[n:]
        for _, _, d in todo:
            d.callback(None)


class RecordingTransport:
    """Records every WAMP message a session sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.events: list[Any] = []
        self.closed = False

    def send(self, msg: Any) -> None:
        self.sent.append(msg)

    def send_event(self, event: Any) -> None:
        self.events.append(event)

    def close(self) -> None:
        self.closed = True


class FakePublisher:
    """Records publications; ``error`` (an exception) makes them fail."""

    def __init__(self) -> None:
        self.published: list[Publication] = []
        self.error: Exception | None = None

    def publish(self, publication: Publication) -> Deferred[None]:
        if self.error is not None:
            return fail(self.error)
        self.published.append(publication)
        return succeed(None)
