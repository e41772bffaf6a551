"""
Binding compaction: the node queue's bindings stop growing with the number
of per-user topics (``docs/scaling.md``).  No I/O of its own.

Binding keys are grouped by their first word (``user.42.#`` and
``user.43.invoice.sent`` are in group ``user.#``).  When a node holds more
than ``threshold`` keys of one group, it binds the group key once and lets
the broker's own matching drop what no subscription wants; when the group
shrinks below half of that, it binds the keys one by one again and drops the
group key.  A RabbitMQ restart then re-applies one binding per compacted
group, not one per user.

Swaps keep the guarantees of :class:`notifyd.bindings.Bindings`:

* to compact, the group key is bound (confirmed) *before* the single keys
  are unbound; to split, every single key is bound before the group key is
  unbound.  While both exist, RabbitMQ still puts one copy of a message in
  the queue, so a swap neither loses nor duplicates an event;
* a key counts as covered (its subscriptions may get SUBSCRIBED) once its
  own binding or its group's is confirmed on the current channel.

:class:`CompactingBindings` offers the interface of
:class:`~notifyd.bindings.Bindings` (``acquire``, ``wait``, ``release``,
``attach``, ``detach``, ``wanted``, ``bound``, ``on_detach``) on top of one,
which does the reference counting and the AMQP operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.python.failure import Failure

from notifyd.bindings import Binder, Bindings
from notifyd.logs import Logger

SPLIT, COMPACTING, COMPACT, EXPANDING = "split", "compacting", "compact", "expanding"
#: seconds a compacted group must stay small before it is split again
SPLIT_AFTER = 10.0


def group_of(key: str) -> str | None:
    """The group key of binding key ``key`` (its first word + ``.#``), or
    None for a key that starts with a wildcard, has one word, or is a
    group key itself."""
    word, dot, rest = key.partition(".")
    if not dot or word in ("*", "#") or rest == "#":
        return None
    return word + ".#"


@dataclass
class _Group:
    key: str
    state: str = SPLIT
    #: the keys of this group some subscription holds
    members: set[str] = field(default_factory=set)
    #: the members that hold a binding of their own
    held: set[str] = field(default_factory=set)
    #: the delayed split, while compact and small
    split_call: Any = None


def _ignore_cancel(f: Failure) -> None:
    f.trap(CancelledError)


class CompactingBindings:
    """Reference-counted binding keys, bound one by one or by group."""

    _log = Logger()

    def __init__(
        self,
        physical: Bindings,
        threshold: int,
        *,
        clock: Any = None,
        split_after: float = SPLIT_AFTER,
    ) -> None:
        """``threshold``: compact a group that holds more keys than this;
        split it again once it stayed below half of it for ``split_after``
        seconds (on ``clock``; without one, at once), so that a mass
        disconnect (a node stopping, a deploy) does not bind every member
        on its way out."""
        if threshold < 4:
            raise ValueError("threshold must be at least 4 (below half of it a group splits)")
        self.physical = physical
        self.threshold = threshold
        self.low = threshold // 2
        self._clock = clock
        self._split_after = split_after
        self._refs: dict[str, int] = {}
        self._groups: dict[str, _Group] = {}
        #: key -> the Deferreds waiting for it to be covered
        self._waiters: dict[str, list[Deferred[None]]] = {}
        #: group key -> the waiting keys of that group
        self._waiting_in: dict[str, set[str]] = {}
        physical.on_bound = self._bound
        #: swaps done, for the metrics
        self.compactions = 0
        self.splits = 0

    # -- the Bindings interface --------------------------------------------------
    @property
    def on_detach(self) -> list[Any]:
        return self.physical.on_detach

    @property
    def wanted(self) -> frozenset[str]:
        """Keys some subscription holds."""
        return frozenset(self._refs)

    @property
    def bound(self) -> frozenset[str]:
        """Bindings RabbitMQ confirmed on the current channel (group keys
        included): what the queue really has."""
        return self.physical.bound

    @property
    def compacted(self) -> list[str]:
        """Group keys bound in place of their members."""
        return sorted(g.key for g in self._groups.values() if g.state in (COMPACT, EXPANDING))

    @property
    def added(self) -> int:
        return self.physical.added

    @property
    def removed(self) -> int:
        return self.physical.removed

    def acquire(self, key: str) -> Deferred[None]:
        """Hold ``key``; fires once it is covered by a confirmed binding."""
        n = self._refs.get(key, 0)
        self._refs[key] = n + 1
        if n == 0:
            self._add(key)
        return self.wait(key)

    def wait(self, key: str) -> Deferred[None]:
        """Fires once ``key`` (already held) is covered; cancel to stop."""
        if self.covered(key):
            return succeed(None)

        def cancel(d: Deferred[None]) -> None:
            waiting = self._waiters.get(key, [])
            if d in waiting:
                waiting.remove(d)
                if not waiting:
                    self._unwait(key)

        d: Deferred[None] = Deferred(cancel)
        if key not in self._waiters:
            self._waiters[key] = []
            group = group_of(key)
            if group is not None:
                self._waiting_in.setdefault(group, set()).add(key)
        self._waiters[key].append(d)
        return d

    def release(self, key: str) -> None:
        """Give ``key`` back."""
        n = self._refs.get(key, 0) - 1
        if n < 0:
            raise KeyError(f"binding key {key!r} was not acquired")
        if n:
            self._refs[key] = n
            return
        del self._refs[key]
        self._remove(key)

    def attach(self, channel: Binder) -> Deferred[None]:
        """Use ``channel`` (a fresh queue): bind what is held, a compacted
        group as its one key."""
        return self.physical.attach(channel)

    def detach(self) -> None:
        self.physical.detach()

    def covered(self, key: str) -> bool:
        """Does a confirmed binding bring ``key``'s messages to the queue?"""
        if self.physical.settled(key):
            return True
        group = self._groups.get(group_of(key) or "")
        return group is not None and group.state != SPLIT and self.physical.settled(group.key)

    # -- membership -----------------------------------------------------------------
    def _hold(self, key: str) -> None:
        d = self.physical.acquire(key)
        if not d.called:  # readiness is followed through on_bound instead
            d.addErrback(_ignore_cancel)
            d.cancel()

    def _add(self, key: str) -> None:
        gkey = group_of(key)
        if gkey is None:
            self._hold(key)
            return
        group = self._groups.get(gkey)
        if group is None:
            group = self._groups[gkey] = _Group(gkey)
        group.members.add(key)
        if group.state in (SPLIT, EXPANDING):
            group.held.add(key)
            self._hold(key)
        # compacting or compact: covered once the group key is bound (a
        # burst of subscriptions must not queue a bind per key behind it)
        self._consider(group)

    def _remove(self, key: str) -> None:
        gkey = group_of(key)
        if gkey is None:
            self.physical.release(key)
            return
        group = self._groups[gkey]
        group.members.discard(key)
        if key in group.held:
            group.held.discard(key)
            self.physical.release(key)
        self._consider(group)

    # -- swaps -------------------------------------------------------------------------
    def _consider(self, group: _Group) -> None:
        n = len(group.members)
        if group.state == SPLIT:
            if n > self.threshold:
                group.state = COMPACTING
                self._log.info("compacting {n} bindings into {group}", n=n, group=group.key)
                self._hold(group.key)
                if group.state == COMPACTING and self.physical.settled(group.key):
                    self._compacted(group)
            elif n == 0:
                del self._groups[group.key]
        elif group.state == COMPACTING:
            if n < self.low:  # shrank before the group key was bound: stay split
                group.state = SPLIT
                for key in group.members - group.held:  # joined meanwhile
                    group.held.add(key)
                    self._hold(key)
                self.physical.release(group.key)
                self._consider(group)
        elif group.state == COMPACT:
            if n == 0:  # nothing to split into
                self._cancel_split(group)
                group.state = SPLIT
                self.physical.release(group.key)
                del self._groups[group.key]
            elif n >= self.low:
                self._cancel_split(group)  # grew again: it must stay small a full delay
            elif self._clock is None:
                self._split(group)
            elif group.split_call is None:
                group.split_call = self._clock.callLater(
                    self._split_after, self._split_if_small, group
                )
        elif group.state == EXPANDING:
            if n > self.threshold:  # grew again: keep the group key
                if self.physical.settled(group.key):
                    group.state = COMPACT
                    for key in group.held:
                        self.physical.release(key)
                    group.held.clear()
                else:  # not bound on this channel yet (a reconnect): wait for it
                    group.state = COMPACTING
            else:
                self._expanded(group)

    def _split_if_small(self, group: _Group) -> None:
        group.split_call = None
        if group.state == COMPACT and 0 < len(group.members) < self.low:
            self._split(group)

    def _cancel_split(self, group: _Group) -> None:
        if group.split_call is not None and group.split_call.active():
            group.split_call.cancel()
        group.split_call = None

    def _split(self, group: _Group) -> None:
        """Bind every member again; the group key goes once they are bound."""
        group.state = EXPANDING
        self._log.info("splitting {group} into {n} bindings", group=group.key, n=len(group.members))
        for key in group.members:
            group.held.add(key)
            self._hold(key)
        self._expanded(group)

    def _compacted(self, group: _Group) -> None:
        """The group key is bound: the members' own bindings can go."""
        group.state = COMPACT
        self.compactions += 1
        for key in group.held:
            self.physical.release(key)
        group.held.clear()
        self._wake_group(group.key)

    def _expanded(self, group: _Group) -> None:
        """Once every member's own binding is bound, the group key can go."""
        if group.state != EXPANDING:
            return
        if any(not self.physical.settled(key) for key in group.held):
            return
        group.state = SPLIT
        self.splits += 1
        self.physical.release(group.key)
        if not group.members:
            del self._groups[group.key]

    # -- readiness -------------------------------------------------------------------
    def _bound(self, key: str) -> None:
        """``physical`` confirmed ``key``."""
        group = self._groups.get(key)
        if group is not None:  # a group key
            if group.state == COMPACTING:
                self._compacted(group)
            elif group.state in (COMPACT, EXPANDING):
                self._wake_group(key)
        member_of = self._groups.get(group_of(key) or "")
        if member_of is not None and member_of.state == EXPANDING:
            self._expanded(member_of)
        if key in self._waiters and self.covered(key):
            self._wake(key)

    def _wake_group(self, gkey: str) -> None:
        for key in list(self._waiting_in.get(gkey, ())):
            self._wake(key)

    def _wake(self, key: str) -> None:
        waiters = self._waiters.get(key, [])
        self._unwait(key)
        for d in waiters:
            d.callback(None)

    def _unwait(self, key: str) -> None:
        self._waiters.pop(key, None)
        group = group_of(key)
        if group is not None:
            waiting = self._waiting_in.get(group)
            if waiting is not None:
                waiting.discard(key)
                if not waiting:
                    del self._waiting_in[group]
