"""
Prometheus metrics, served at ``/metrics`` (prometheus-client).

Nothing on the hot path touches prometheus-client: the router keeps plain
counters (a ``collections.Counter`` increment per event) and the collector
turns them, and the live state (connections, sessions, subscriptions,
bindings), into metric families when Prometheus scrapes.  The one histogram,
delivery latency, is observed once per AMQP delivery (not per subscriber).

=========================================  =====  ==================================
metric                                     type   labels
=========================================  =====  ==================================
notifyd_connections                        gauge  serializer (``none`` before the handshake)
notifyd_sessions                           gauge  serializer
notifyd_subscriptions                      gauge  match
notifyd_subscribers                        gauge
notifyd_amqp_bindings                      gauge
notifyd_amqp_binding_keys                  gauge
notifyd_amqp_compacted_groups              gauge
notifyd_amqp_ready                         gauge
notifyd_events_received_total              counter
notifyd_events_delivered_total             counter (one per EVENT written to a session)
notifyd_events_dropped_total               counter reason (``unserializable``, ``slow_consumer``)
notifyd_amqp_rejected_total                counter reason (``bad_json``, ``too_large``, …)
notifyd_client_publishes_total             counter result (``ok``, ``refused``)
notifyd_amqp_reconnects_total              counter
notifyd_sessions_opened_total              counter
notifyd_sessions_closed_total              counter
notifyd_subscribes_refused_total           counter
notifyd_sessions_refused_total             counter
notifyd_sessions_expired_total             counter
notifyd_auth_failures_total                counter
notifyd_protocol_violations_total          counter
notifyd_slow_consumer_disconnects_total    counter
notifyd_connections_refused_total          counter reason (``origin``, ``limit``, ``limit_per_address``)
notifyd_events_replayed_total              counter
notifyd_resumes_failed_total               counter
notifyd_log_entries_skipped_total          counter
notifyd_log_entries_undecodable_total      counter reason (``unchecked``, ``bad_json``, …)
notifyd_log_writes_total                   counter (events written to the log by this node)
notifyd_log_writes_failed_total            counter
notifyd_log_duplicates_skipped_total       counter
notifyd_log_reads_total                    counter source (``memory``, ``stream``)
notifyd_replays_interrupted_total          counter
notifyd_log_restarts_total                 counter
notifyd_log_gaps_total                     counter
notifyd_sessions_killed_total              counter
notifyd_rate_limited_total                 counter kind (``subscribe``, ``call``, ``publish``,
                                                   ``publish_bytes``)
notifyd_history_position                   gauge  (with history: newest log position handled)
notifyd_history_ready                      gauge
notifyd_retained_topics                    gauge
notifyd_delivery_latency_seconds           histogram  (AMQP delivery taken from the queue → written
                                                      to every subscriber's socket)
=========================================  =====  ==================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from notifyd.stats import COUNTERS
from notifyd.websocket import SERIALIZERS


def _by_serializer(name: str, doc: str, subprotocols: Any) -> GaugeMetricFamily:
    counts: Counter[str] = Counter(dict.fromkeys(SERIALIZERS, 0))
    counts.update(subprotocols)
    family = GaugeMetricFamily(name, doc, labels=["serializer"])
    for ser, n in sorted(counts.items()):
        family.add_metric([ser.removeprefix("wamp.2.")], n)
    return family


class NotifydCollector(Collector):
    """Reads a node (:class:`notifyd.node.Node`) at scrape time."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        router, broker = svc.router, svc.broker
        stats = router.stats

        yield _by_serializer(
            "notifyd_connections",
            "open WebSocket connections",
            ((getattr(p, "subprotocol", "") or "none") for p in svc.ws_factory.connections),
        )
        yield _by_serializer(
            "notifyd_sessions",
            "established WAMP sessions",
            (getattr(s.transport, "subprotocol", "none") for s in router.sessions.values()),
        )

        subs = GaugeMetricFamily(
            "notifyd_subscriptions", "subscriptions on this node", labels=["match"]
        )
        by_match = Counter({"exact": 0, "prefix": 0, "wildcard": 0})
        subscribers = 0
        for sub in broker.subscriptions():
            by_match[sub.match] += 1
            subscribers += sub.count()
        for match, n in sorted(by_match.items()):
            subs.add_metric([match], n)
        yield subs
        yield GaugeMetricFamily(
            "notifyd_subscribers", "session-subscription pairs", value=subscribers
        )
        yield GaugeMetricFamily(
            "notifyd_amqp_bindings",
            "binding keys confirmed on this node's queue",
            value=len(svc.bindings.bound),
        )
        yield GaugeMetricFamily(
            "notifyd_amqp_binding_keys",
            "binding keys this node's subscriptions need (more than notifyd_amqp_bindings "
            "while groups are compacted)",
            value=len(svc.bindings.wanted),
        )
        yield GaugeMetricFamily(
            "notifyd_amqp_compacted_groups",
            "topic groups bound by one group key instead of one binding per key",
            value=len(getattr(svc.bindings, "compacted", ())),
        )
        yield GaugeMetricFamily(
            "notifyd_amqp_ready", "1 while consuming from RabbitMQ", value=int(svc.amqp.ready)
        )

        history = svc.history
        if history is not None:
            yield GaugeMetricFamily(
                "notifyd_history_position",
                "newest event-log position this node has handled (publication id)",
                value=history.log.live_pos + 1 if history.log.live_pos is not None else 0,
            )
            yield GaugeMetricFamily(
                "notifyd_history_ready",
                "1 while the event log is followed",
                value=int(history.log.ready),
            )
            yield GaugeMetricFamily(
                "notifyd_retained_topics",
                "topics with a retained event",
                value=len(history.retained),
            )
            undecodable = CounterMetricFamily(
                "notifyd_log_entries_undecodable",
                "event-log and retained entries skipped because they cannot be decoded "
                "or did not come through the ingest step",
                labels=["reason"],
            )
            for reason, n in sorted(history.skipped.items()):
                undecodable.add_metric([reason], n)
            yield undecodable
            if history.writer is not None:
                yield CounterMetricFamily(
                    "notifyd_log_writes",
                    "events this node's ingest consumer wrote to the event log",
                    value=history.writer.written,
                )
                yield CounterMetricFamily(
                    "notifyd_log_duplicates_skipped",
                    "events the ingest consumer found in the log already (not written again)",
                    value=history.writer.duplicates,
                )
            yield CounterMetricFamily(
                "notifyd_log_restarts",
                "times the event-log stream was found restarted below this node's position",
                value=history.log.restarts,
            )
            reads = CounterMetricFamily(
                "notifyd_log_reads",
                "event-log reads (resumes, get_events) by where they started: the node's "
                "memory of the newest entries, or a stream consumer",
                labels=["source"],
            )
            reads.add_metric(["memory"], history.log.reads_from_memory)
            reads.add_metric(["stream"], history.log.reads_from_stream)
            yield reads
            yield CounterMetricFamily(
                "notifyd_replays_interrupted",
                "replays and get_events calls that lost RabbitMQ and went on after it came back",
                value=history.interrupted,
            )

        receipts, decisions = getattr(svc, "receipts", None), getattr(svc, "decisions", None)
        if receipts is not None:
            published = CounterMetricFamily(
                "notifyd_receipts_published",
                "receipts this node published to the receipts exchange",
                labels=["receipt"],
            )
            for kind, n in sorted(receipts.published.items()):
                published.add_metric([kind], n)
            yield published
        if decisions is not None:
            outcomes = CounterMetricFamily(
                "notifyd_fallback_decisions",
                "fallback events this node decided: displayed in time, republished "
                "undelivered, unroutable there, refused (a bad header)",
                labels=["outcome"],
            )
            for outcome, n in sorted(decisions.outcomes().items()):
                outcomes.add_metric([outcome], n)
            yield outcomes
            yield GaugeMetricFamily(
                "notifyd_fallback_pending",
                "fallback events this node holds until their deadline (the active decider)",
                value=decisions.pending(),
            )

        for key, spec in COUNTERS.items():
            if spec.label is None:
                yield CounterMetricFamily(spec.metric, spec.help, value=stats.counters[key])
            else:
                family = CounterMetricFamily(spec.metric, spec.help, labels=[spec.label])
                for label, n in sorted(stats.labelled[key].items()):
                    family.add_metric([label], n)
                yield family
        yield CounterMetricFamily(
            "notifyd_amqp_reconnects", "RabbitMQ reconnections", value=svc.amqp.reconnects
        )
        yield from router.stats.latency.collect()


def make_registry(service: Any) -> CollectorRegistry:
    """A registry of this node's metrics only (no process-global state)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NotifydCollector(service))
    return registry
