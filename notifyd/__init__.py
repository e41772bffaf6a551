"""notifyd: realtime notifications from RabbitMQ to browsers over WAMP v2."""

__version__ = "0.1.0"
