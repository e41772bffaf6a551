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
from notifyd.streams import RecentEntries


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

    def writable(self) -> Deferred[None] | None:
        """Always takes more."""
        return None


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


class FakeLog:
    """An in-memory stand-in for :class:`notifyd.streams.StreamLog`.

    ``append`` adds an entry and, with ``live=True``, hands it to
    ``on_entry`` as the live consumer would.  ``read`` starts at the chunk
    holding the requested offset (chunks of ``chunk`` entries, as RabbitMQ
    does), skips nothing itself, and sees entries appended meanwhile.
    ``truncate(n)`` drops the entries below offset ``n`` (retention).
    ``memory`` entries are kept as the real log's :class:`RecentEntries`
    (resumes of exact subscriptions within them look only at their topic).
    """

    def __init__(self, chunk: int = 4, memory: int = 0) -> None:
        self.entries: list[Any] = []
        self.first = 0
        self.chunk = chunk
        self.recent = RecentEntries(memory)
        self.on_entry: Any = None
        self.on_gap: Any = None
        self.live_pos: int | None = None
        self.ready = True
        self.reads: list[int] = []

    reads_from_memory = 0

    def served_from_memory(self) -> None:
        self.reads_from_memory += 1

    def deliver_to(self, on_entry: Any, on_gap: Any = None) -> None:
        """As :meth:`notifyd.streams.StreamLog.deliver_to`."""
        self.on_entry = on_entry
        self.on_gap = on_gap

    def append(
        self,
        routing_key: str,
        value: Any,
        headers: dict[str, Any] | None = None,
        *,
        live: bool = True,
        checked: bool = True,
    ) -> int:
        """Add an entry (``checked``: as the ingest step writes them)."""
        import json
        from types import SimpleNamespace

        offset = len(self.entries)
        msg = SimpleNamespace(
            method=SimpleNamespace(routing_key=routing_key),
            properties=SimpleNamespace(
                content_type="application/json",
                content_encoding=None,
                headers=dict(
                    headers or {},
                    **{"x-stream-offset": offset},
                    **({"x-notifyd-checked": 1} if checked else {}),
                ),
                message_id=None,
                timestamp=None,
                type=None,
                app_id=None,
            ),
            body=json.dumps(value).encode(),
        )
        self.entries.append(msg)
        if live:
            self.deliver_live()
        return offset

    def deliver_live(self) -> None:
        """The live consumer catches up with everything appended."""
        start = 0 if self.live_pos is None else self.live_pos + 1
        for offset in range(start, len(self.entries)):
            self.live_pos = offset
            entry = self.entries[offset]
            marker = "x-notifyd-marker" in entry.properties.headers
            self.recent.append(offset, None if marker else entry)
            if self.on_entry is not None and "x-notifyd-marker" not in entry.properties.headers:
                self.on_entry(offset, entry)

    def truncate(self, first: int) -> None:
        self.first = first

    def wait_ready(self) -> Deferred[None]:
        return succeed(None)

    generation = 0

    def wait_attached(self, after: int) -> Deferred[None]:
        return succeed(None)

    def tail(self) -> Deferred[int]:
        if self.live_pos is None:
            # the real log appends a marker; an empty fake log has offset -1
            return succeed(len(self.entries) - 1)
        return succeed(self.live_pos)

    def probe(self) -> Deferred[int]:
        """Append a marker (an entry nobody is given) and return its offset."""
        from types import SimpleNamespace

        self.entries.append(
            SimpleNamespace(
                method=SimpleNamespace(routing_key="marker"),
                properties=SimpleNamespace(headers={"x-notifyd-marker": "m"}),
                body=b"",
            )
        )
        # the live consumer sees everything up to the marker first
        self.deliver_live()
        return succeed(self.live_pos)

    def read(self, start: int, handler: Any) -> Deferred[None]:
        from twisted.internet.defer import inlineCallbacks

        self.reads.append(start)

        @inlineCallbacks
        def run() -> Any:
            offset = max(self.first, start - start % self.chunk)
            while offset < len(self.entries):
                if offset >= start:
                    entry = self.entries[offset]
                    if "x-notifyd-marker" in entry.properties.headers:
                        entry = None
                    more = handler(offset, entry)
                    if isinstance(more, Deferred):
                        yield more
                    elif more:
                        return
                offset += 1
            raise AssertionError("read past the end of the log: nothing would ever arrive")

        return run()
