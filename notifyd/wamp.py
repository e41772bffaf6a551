"""
WAMP message helpers on top of :mod:`autobahn.wamp.message`.

:class:`NotifydEvent` is one EVENT with the implementation-specific ``x_*``
details notifyd adds (AMQP message id, timestamp, type, app id), and a
per-message cache of prepared WebSocket frames so one EVENT becomes bytes once
per serializer and a frame once per serializer, however many sessions get it.
autobahn's ``Event`` object is built from it only for serializers that need
one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import orjson
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


class _ExtendedEvent(message.Event):
    """autobahn's EVENT plus notifyd's ``x_*`` details, for the serializers
    that need a message object (msgpack, CBOR, JSON without a raw body)."""

    __slots__ = ("_extra",)

    def __init__(self, *args: Any, extra: dict[str, Any] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._extra = extra

    def marshal(self) -> list[Any]:
        raw = super().marshal()
        if self._extra:
            raw[3].update(self._extra)
        return raw


class NotifydEvent:
    """The EVENT of one event for one subscription, and a per-message cache
    of prepared WebSocket frames (one per serializer), shared by every
    session that gets it.

    Cheap to build: the ``wamp.2.json`` frame is spliced around the AMQP body
    (:meth:`json_payload`), and autobahn's message object is built only when
    a serializer needs one (:meth:`message`)."""

    __slots__ = (
        "subscription",
        "publication",
        "args",
        "kwargs",
        "publisher",
        "publisher_authid",
        "publisher_authrole",
        "topic",
        "retained",
        "extra",
        "raw",
        "frames",
        "_message",
    )

    def __init__(
        self,
        subscription: int,
        publication: int,
        args: list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        publisher: int | None = None,
        publisher_authid: str | None = None,
        publisher_authrole: str | None = None,
        topic: str | None = None,
        retained: bool | None = None,
        extra: dict[str, Any] | None = None,
        raw: bytes | None = None,
    ) -> None:
        self.subscription = subscription
        self.publication = publication
        self.args = args
        self.kwargs = kwargs
        self.publisher = publisher
        self.publisher_authid = publisher_authid
        self.publisher_authrole = publisher_authrole
        self.topic = topic
        self.retained = retained
        #: notifyd's ``x_*`` details (AMQP message id, timestamp, type, app id)
        self.extra = extra
        #: the AMQP body as it arrived, when it is exactly ``args[0]``
        self.raw = raw
        self.frames: dict[str, Any] = {}
        self._message: _ExtendedEvent | None = None

    def details(self) -> dict[str, Any]:
        """EVENT.Details, in autobahn's order, then the ``x_*`` fields."""
        details: dict[str, Any] = {}
        if self.publisher is not None:
            details["publisher"] = self.publisher
        if self.publisher_authid is not None:
            details["publisher_authid"] = self.publisher_authid
        if self.publisher_authrole is not None:
            details["publisher_authrole"] = self.publisher_authrole
        if self.topic is not None:
            details["topic"] = self.topic
        if self.retained is not None:
            details["retained"] = self.retained
        if self.extra:
            details.update(self.extra)
        return details

    def message(self) -> message.Event:
        """autobahn's message object of this EVENT (built once)."""
        if self._message is None:
            self._message = _ExtendedEvent(
                subscription=self.subscription,
                publication=self.publication,
                args=self.args,
                kwargs=self.kwargs,
                publisher=self.publisher,
                publisher_authid=self.publisher_authid,
                publisher_authrole=self.publisher_authrole,
                topic=self.topic,
                retained=self.retained,
                extra=self.extra,
            )
        return self._message

    def marshal(self) -> list[Any]:
        return self.message().marshal()

    def json_payload(self) -> bytes | None:
        """The ``wamp.2.json`` bytes of this EVENT, built around the AMQP
        body as it arrived (already validated JSON), or None if the event
        has no such body.  Equal, as JSON, to what autobahn's serializer
        produces."""
        raw = self.raw
        if raw is None or self.kwargs:
            return None
        return b"[36,%d,%d,%s,[%s]]" % (
            self.subscription,
            self.publication,
            orjson.dumps(self.details()),
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
