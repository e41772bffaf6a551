"""Development tools for notifyd's own Makefile, tests and benchmarks (a
private RabbitMQ node: ``python -m devtools.devbroker``).  Not part of the
service: ``setup.py`` does not install this package."""
