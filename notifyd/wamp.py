"""
WAMP message helpers on top of :mod:`autobahn.wamp.message`.

:class:`NotifydEvent` is autobahn's ``Event`` plus the implementation-specific
``x_*`` details notifyd adds (AMQP message id, timestamp, type, app id), and a
per-message cache of prepared WebSocket frames so one EVENT becomes bytes once
per serializer and a frame once per serializer, however many sessions get it.
"""

from __future__ import annotations

from json import dumps as _json_dumps
from typing import TYPE_CHECKING, Any, Protocol

from autobahn.wamp import message
from autobahn.wamp.role import RoleBrokerFeatures

if TYPE_CHECKING:
    from notifyd.events import InboundEvent


class EventTarget(Protocol):
    """What an EVENT needs of its subscription (a
    :class:`notifyd.broker.Subscription`): its id and match policy."""

    id: int
    match: str


_FEATURES = dict(
    pattern_based_subscription=True,
    publisher_exclusion=True,
    publisher_identification=True,
    subscriber_blackwhite_listing=True,
    session_meta_api=True,
    subscription_meta_api=True,
)
BROKER_FEATURES = RoleBrokerFeatures(**_FEATURES)
HISTORY_FEATURES = RoleBrokerFeatures(**_FEATURES, event_history=True, event_retention=True)


class WampError(Exception):
    """A request answered with ERROR ``uri`` (``text`` as its argument,
    ``details`` as its keyword arguments)."""

    def __init__(self, uri: str, text: str, **details: Any) -> None:
        super().__init__(text)
        self.uri = uri
        self.text = text
        self.details = details


def broker_features(history: bool) -> RoleBrokerFeatures:
    """What WELCOME announces: history and retention only with an event log."""
    return HISTORY_FEATURES if history else BROKER_FEATURES


class NotifydEvent(message.Event):
    """An EVENT with notifyd's ``x_*`` details and a frame cache."""

    __slots__ = ("_extra", "frames", "raw")

    def __init__(
        self, *args: Any, extra: dict[str, Any] | None = None, raw: bytes | None = None, **kw: Any
    ):
        super().__init__(*args, **kw)
        self._extra = extra
        self.frames: dict[str, Any] = {}
        self.raw = raw

    def marshal(self) -> list[Any]:
        raw = super().marshal()
        if self._extra:
            raw[3].update(self._extra)
        return raw

    def json_payload(self) -> bytes | None:
        """The ``wamp.2.json`` bytes of this EVENT, built around the AMQP
        body as it arrived (already validated JSON), or None if the event
        has no such body.  Equal, as JSON, to what autobahn's serializer
        produces."""
        raw = self.raw
        if raw is None or self.kwargs:
            return None
        details = self.marshal()[3]
        return b"[36,%d,%d,%s,[%s]]" % (
            self.subscription,
            self.publication,
            _json_dumps(details, separators=(",", ":"), ensure_ascii=False).encode(),
            raw,
        )


def make_event(sub: EventTarget, event: InboundEvent) -> NotifydEvent:
    """The EVENT message of ``event`` for subscription ``sub``."""
    return NotifydEvent(
        subscription=sub.id,
        publication=event.publication,
        args=event.args,
        kwargs=event.kwargs,
        publisher=event.publisher if event.disclose_me else None,
        publisher_authid=event.publisher_authid if event.disclose_me else None,
        publisher_authrole=event.publisher_authrole if event.disclose_me else None,
        topic=event.topic if sub.match != "exact" else None,
        retained=True if event.retained else None,
        extra=event.extra,
        raw=event.raw,
    )
