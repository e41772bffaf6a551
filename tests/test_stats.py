"""The node's own latency histogram exports exactly what prometheus-client's
Histogram would for the same observations."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from notifyd.stats import LATENCY_BUCKETS, Latency


def _samples(registry: CollectorRegistry) -> list[str]:
    return [
        line
        for line in generate_latest(registry).decode().splitlines()
        if not line.startswith("#") and "_created" not in line
    ]


def test_latency_histogram_matches_prometheus_client():
    ours = Latency()
    reference = Histogram(ours.name, ours.help, buckets=LATENCY_BUCKETS, registry=None)
    # on a bound, between bounds, below the first and above the last
    for seconds in (0.0001, 0.0005, 0.0007, 0.003, 0.5, 2.5, 9.0):
        ours.observe(seconds)
        reference.observe(seconds)

    class Ours:
        def collect(self):
            yield from ours.collect()

    mine = CollectorRegistry(auto_describe=False)
    mine.register(Ours())
    theirs = CollectorRegistry()
    theirs.register(reference)
    assert _samples(mine) == _samples(theirs)
    assert ours.count == 7
