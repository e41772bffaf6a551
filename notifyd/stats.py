"""
The counters a node keeps, declared once: each one's metric name, help text
and label.

:class:`Stats` holds exactly the counters of :data:`COUNTERS`; bumping a name
that is not declared raises ``KeyError``, and :mod:`notifyd.metrics` exports
every declared one, so a counter cannot exist without being exported.  An
increment is one dict update: cheap enough for the hot path.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import HistogramMetricFamily, Metric


@dataclass(frozen=True)
class CounterSpec:
    """One exported counter: ``metric`` (without ``_total``), its help text
    and, for a labelled family, the label's name."""

    metric: str
    help: str
    label: str | None = None
    #: label values exported from the start (at 0)
    values: tuple[str, ...] = ()


COUNTERS: dict[str, CounterSpec] = {
    "events_received": CounterSpec("notifyd_events_received", "AMQP deliveries decoded as events"),
    "events_unwanted": CounterSpec(
        "notifyd_events_unwanted",
        "AMQP deliveries no subscription on this node wanted, dropped before decoding "
        "(compacted bindings, subscriptions that just ended)",
    ),
    "events_delivered": CounterSpec(
        "notifyd_events_delivered", "EVENT messages written to sessions"
    ),
    "events_dropped": CounterSpec(
        "notifyd_events_dropped",
        "events not delivered to a subscriber",
        "reason",
        ("slow_consumer", "unserializable"),
    ),
    "events_rejected": CounterSpec(
        "notifyd_amqp_rejected", "AMQP messages rejected (dead-lettered)", "reason"
    ),
    "client_publishes": CounterSpec(
        "notifyd_client_publishes", "client PUBLISH messages", "result", ("ok", "refused")
    ),
    "sessions_opened": CounterSpec("notifyd_sessions_opened", "WAMP sessions established"),
    "sessions_closed": CounterSpec("notifyd_sessions_closed", "WAMP sessions ended (any reason)"),
    "subscribes_refused": CounterSpec(
        "notifyd_subscribes_refused",
        "SUBSCRIBEs refused because no rule of the session's role allows them",
    ),
    "sessions_refused": CounterSpec("notifyd_sessions_refused", "HELLOs answered with ABORT"),
    "sessions_expired": CounterSpec(
        "notifyd_sessions_expired", "sessions closed because their ticket expired"
    ),
    "auth_failures": CounterSpec("notifyd_auth_failures", "failed authentications"),
    "protocol_violations": CounterSpec(
        "notifyd_protocol_violations", "sessions aborted for protocol violations"
    ),
    "slow_consumers": CounterSpec(
        "notifyd_slow_consumer_disconnects", "connections dropped for not reading"
    ),
    "connections_refused": CounterSpec(
        "notifyd_connections_refused",
        "connections and WebSocket handshakes refused",
        "reason",
        ("origin", "limit", "limit_per_address", "http_timeout"),
    ),
    "rate_limited": CounterSpec(
        "notifyd_rate_limited",
        "requests refused by a per-session rate limit",
        "kind",
        ("subscribe", "call", "publish", "publish_bytes"),
    ),
    "events_replayed": CounterSpec(
        "notifyd_events_replayed", "events sent by resumes (event-log replays)"
    ),
    "resumes_failed": CounterSpec(
        "notifyd_resumes_failed",
        "resumes refused or broken off (not_recovered, history_unavailable)",
    ),
    "log_entries_skipped": CounterSpec(
        "notifyd_log_entries_skipped", "event-log entries no subscription on this node wanted"
    ),
    "log_writes_failed": CounterSpec(
        "notifyd_log_writes_failed",
        "writes of the ingest step RabbitMQ refused (the event is written again)",
    ),
    "sessions_killed": CounterSpec("notifyd_sessions_killed", "sessions ended by a kill order"),
    "log_gaps": CounterSpec(
        "notifyd_log_gaps",
        "times this node found log entries it never read (retention, a restarted stream)",
    ),
}

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Latency:
    """The delivery-latency histogram, observed once per AMQP delivery.

    Plain bucket counts (one ``bisect`` and two additions per observation);
    prometheus-client's ``Histogram.observe`` takes a lock and walks every
    bucket, which on the hot path cost more than the rest of the metrics
    together.  :meth:`collect` hands Prometheus the usual cumulative form."""

    __slots__ = ("buckets", "counts", "sum")

    name = "notifyd_delivery_latency_seconds"
    help = "AMQP delivery taken from the queue until written to every subscriber's socket"

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        #: observations per bucket (not cumulative); the last is +Inf
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def collect(self) -> Iterator[Metric]:
        cumulative, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
        yield HistogramMetricFamily(self.name, self.help, buckets=cumulative, sum_value=self.sum)


class Stats:
    """The declared counters and the delivery-latency histogram of one node;
    ``/metrics`` reads them (see :mod:`notifyd.metrics`)."""

    __slots__ = ("counters", "labelled", "latency")

    def __init__(self) -> None:
        #: plain counters: name -> count
        self.counters: dict[str, int] = {
            name: 0 for name, spec in COUNTERS.items() if spec.label is None
        }
        #: labelled families: name -> label value -> count
        self.labelled: dict[str, Counter[str]] = {
            name: Counter(dict.fromkeys(spec.values, 0))
            for name, spec in COUNTERS.items()
            if spec.label is not None
        }
        self.latency = Latency()

    def inc(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the plain counter ``name`` (``KeyError``: not declared)."""
        self.counters[name] += n

    def inc_labelled(self, name: str, label: str, n: int = 1) -> None:
        """Add ``n`` to ``label`` of the labelled counter ``name``."""
        self.labelled[name][label] += n

    def count(self, name: str, label: str | None = None) -> int:
        """The current value of a counter (of one label of a family)."""
        if label is None:
            return self.counters[name]
        return self.labelled[name][label]
