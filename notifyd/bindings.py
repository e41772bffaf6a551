"""
Reference-counted AMQP bindings of this node's queue.  No I/O of its own.

The broker asks for a binding key when a subscription is created
(:meth:`Bindings.acquire`) and gives it back when the subscription is deleted
(:meth:`Bindings.release`).  Several subscriptions may share a key (prefixes
``inv`` and ``invo`` both need ``#``); the queue is bound while at least one
holds it.  The Deferred from ``acquire`` fires only once RabbitMQ confirmed the
binding (``queue.bind-ok``), so SUBSCRIBED is never sent before an event
published afterwards can reach this node.

The channel is whatever :meth:`attach` was given: an object with ``bind(key)``
and ``unbind(key)`` returning Deferreds.  While detached (RabbitMQ down), keys
are only counted; :meth:`attach` after a reconnect re-applies every key held.
Operations on one key are never concurrent: a change that arrives while a bind
or unbind is in flight is reconciled when that operation completes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from pika.exceptions import AMQPChannelError, AMQPConnectionError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost

from notifyd.logs import Logger

#: seconds between the info lines that sum binding changes up
SUMMARY_INTERVAL = 60.0


class Binder(Protocol):
    """What :class:`Bindings` needs from an AMQP channel."""

    def bind(self, key: str) -> Deferred[Any]: ...

    def unbind(self, key: str) -> Deferred[Any]: ...


class Bindings:
    """The set of binding keys this node needs, and their state on RabbitMQ."""

    _log = Logger()

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: binding changes RabbitMQ confirmed (for the summary lines)
        self.added = 0
        self.removed = 0
        self._summarized = -SUMMARY_INTERVAL
        self._summary = (0, 0)
        self._refs: dict[str, int] = {}
        self._bound: set[str] = set()
        self._inflight: set[str] = set()
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self._channel: Binder | None = None
        self._generation = 0
        self._attaching: set[str] = set()
        self._attached: Deferred[None] | None = None
        #: the channel generation whose lost changes were logged already
        self._lost_generation = -1
        #: called (no arguments) when the channel is lost
        self.on_detach: list[Any] = []
        #: called with a key each time it is confirmed bound (and settled)
        self.on_bound: Callable[[str], None] | None = None

    # -- queries --------------------------------------------------------
    @property
    def wanted(self) -> frozenset[str]:
        """Keys some subscription holds."""
        return frozenset(self._refs)

    @property
    def bound(self) -> frozenset[str]:
        """Keys RabbitMQ confirmed on the current channel."""
        return frozenset(self._bound)

    # -- subscriptions ---------------------------------------------------
    def acquire(self, key: str) -> Deferred[None]:
        """Hold ``key``; the Deferred fires once the binding is confirmed.

        Cancelling the Deferred stops waiting; it does not release the key.
        """
        self._refs[key] = self._refs.get(key, 0) + 1
        d = self.wait(key)
        if not d.called:
            self._sync(key)
        return d

    def wait(self, key: str) -> Deferred[None]:
        """Fires once ``key`` (already held) is bound; cancel to stop waiting."""
        if key in self._bound and key not in self._inflight:
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            waiting = self._waiters.get(key, [])
            if d in waiting:
                waiting.remove(d)
                if not waiting:
                    del self._waiters[key]

        d: Deferred[None] = Deferred(cancel)
        self._waiters.setdefault(key, []).append(d)
        return d

    def release(self, key: str) -> None:
        """Give ``key`` back; the queue is unbound when nobody holds it."""
        n = self._refs.get(key, 0) - 1
        if n < 0:
            raise KeyError(f"binding key {key!r} was not acquired")
        if n == 0:
            del self._refs[key]
        else:
            self._refs[key] = n
        self._sync(key)

    # -- channel lifecycle -----------------------------------------------
    def attach(self, channel: Binder) -> Deferred[None]:
        """Use ``channel`` (a fresh queue): bind every held key.

        The Deferred fires when each key held now is bound or no longer
        wanted, and fails if a bind fails (the caller then reconnects).
        """
        self._generation += 1
        self._channel = channel
        self._bound.clear()
        self._inflight.clear()
        self._attaching = set(self._refs)
        self._attached = d = Deferred()
        if not self._attaching:
            self._attached = None
            d.callback(None)
            return d
        for key in list(self._refs):
            self._sync(key)
        return d

    def detach(self) -> None:
        """The channel is gone (its exclusive queue with it)."""
        self._generation += 1
        self._channel = None
        self._bound.clear()
        self._inflight.clear()
        self._attaching = set()
        attached, self._attached = self._attached, None
        if attached is not None and not attached.called:
            attached.errback(ConnectionError("the AMQP channel closed while binding"))
        for callback in list(self.on_detach):
            callback()

    def _attach_progress(self, key: str, failure: Any = None) -> None:
        if key not in self._attaching:
            return
        self._attaching.discard(key)
        attached = self._attached
        if attached is None or attached.called:
            return
        if failure is not None:
            self._attached = None
            attached.errback(failure)
        elif not self._attaching:
            self._attached = None
            attached.callback(None)

    # -- internals ---------------------------------------------------------
    def _sync(self, key: str) -> None:
        channel = self._channel
        if channel is None or key in self._inflight:
            return
        wanted = key in self._refs
        bound = key in self._bound
        if wanted and not bound:
            op, after = channel.bind, self._bound.add
        elif bound and not wanted:
            op, after = channel.unbind, self._bound.discard
        else:
            if wanted and bound:
                self._wake(key)
            self._attach_progress(key)
            return
        generation = self._generation
        self._inflight.add(key)

        def done(_: object) -> None:
            if generation != self._generation:
                return
            self._inflight.discard(key)
            after(key)
            self._log.debug(
                "AMQP binding {change}: {key}",
                change="added" if wanted else "removed",
                key=key,
            )
            self._changed(wanted)
            self._sync(key)

        def failed(f: Any) -> None:
            if generation != self._generation:
                return
            self._inflight.discard(key)
            # A failed queue.bind closes the channel; the AMQP service
            # reconnects and attach() retries every held key.
            if f.check(ConnectionLost, ConnectionDone, AMQPConnectionError, AMQPChannelError):
                # the connection or channel went with changes in flight (one
                # line, not one per key: there may be thousands)
                if self._lost_generation != generation:
                    self._lost_generation = generation
                    self._log.warn(
                        "AMQP binding changes in flight when the channel closed ({why}); "
                        "they are applied again on reconnect",
                        why=f.getErrorMessage(),
                    )
            else:
                self._log.failure("AMQP binding change for {key} failed", f, key=key)
            self._attach_progress(key, f)

        op(key).addCallbacks(done, failed)

    def _changed(self, added: bool) -> None:
        """Count a binding change; at most one info line per
        ``SUMMARY_INTERVAL`` sums them up (each change is a debug line)."""
        if added:
            self.added += 1
        else:
            self.removed += 1
        now = self._clock()
        if now - self._summarized >= SUMMARY_INTERVAL:
            self._log.info(
                "AMQP bindings: {added} added, {removed} removed since the last summary; {n} bound",
                added=self.added - self._summary[0],
                removed=self.removed - self._summary[1],
                n=len(self._bound),
            )
            self._summarized = now
            self._summary = (self.added, self.removed)

    def settled(self, key: str) -> bool:
        """Is ``key`` bound on the current channel, with no change in flight?"""
        return key in self._bound and key not in self._inflight

    def _wake(self, key: str) -> None:
        waiters = self._waiters.pop(key, [])
        for d in waiters:
            d.callback(None)
        if self.on_bound is not None:
            self.on_bound(key)
