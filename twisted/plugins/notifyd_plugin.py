"""The ``twistd notifyd`` plugin: it only names the tap module."""

from twisted.application.service import ServiceMaker

notifyd = ServiceMaker(
    "notifyd",
    "notifyd.tap",
    "Deliver RabbitMQ events to WAMP v2 WebSocket clients.",
    "notifyd",
)
