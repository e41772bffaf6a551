"""The ``--workers`` parent's arithmetic, without processes: metrics summed
across workers, readiness combined, a worker's settings."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from notifyd import config, workers


def worker_text(sessions: int, delivered: int, ready: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Gauge("notifyd_sessions", "s", ["serializer"], registry=registry).labels("json").set(sessions)
    Counter("notifyd_events_delivered", "d", registry=registry).inc(delivered)
    Gauge("notifyd_amqp_ready", "r", registry=registry).set(ready)
    h = Histogram("notifyd_delivery_latency_seconds", "l", buckets=(0.001, 0.01), registry=registry)
    for v in latencies:
        h.observe(v)
    return generate_latest(registry).decode()


def samples(text: bytes) -> dict:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_are_summed_and_per_worker_gauges_labelled():
    texts = {
        0: worker_text(3, 10, 1, [0.0005, 0.005]),
        1: worker_text(4, 5, 0, [0.0005, 0.5]),
    }
    out = samples(workers.exposition(workers.aggregate(texts)))
    assert out[("notifyd_sessions", (("serializer", "json"),))] == 7
    assert out[("notifyd_events_delivered_total", ())] == 15
    assert out[("notifyd_amqp_ready", (("worker", "0"),))] == 1
    assert out[("notifyd_amqp_ready", (("worker", "1"),))] == 0
    assert ("notifyd_amqp_ready", ()) not in out
    bucket = "notifyd_delivery_latency_seconds_bucket"
    assert out[(bucket, (("le", "0.001"),))] == 2
    assert out[(bucket, (("le", "0.01"),))] == 3
    assert out[(bucket, (("le", "+Inf"),))] == 4
    assert out[("notifyd_delivery_latency_seconds_count", ())] == 4


def test_a_worker_that_does_not_answer_is_left_out_of_the_sum():
    out = samples(workers.exposition(workers.aggregate({1: worker_text(4, 5, 1, [])})))
    assert out[("notifyd_sessions", (("serializer", "json"),))] == 4


def test_ready_only_when_every_worker_is():
    ok = (200, {"ready": True, "sessions": 2})
    status = workers.combine_ready(2, {0: ok, 1: ok}, {0: 10, 1: 11})
    assert status["ready"] and status["sessions"] == 4
    assert [w["pid"] for w in status["workers"]] == [10, 11]
    status = workers.combine_ready(2, {0: ok, 1: (503, {"ready": False})}, {0: 10, 1: 11})
    assert not status["ready"] and status["workers"][1]["ready"] is False
    status = workers.combine_ready(2, {0: ok}, {0: 10})  # worker 1 being restarted
    assert not status["ready"] and status["workers"][1]["state"] == "restarting"
    status = workers.combine_ready(2, {0: ok, 1: None}, {0: 10, 1: 11})
    assert not status["ready"] and status["workers"][1]["state"] == "no answer"


def test_each_worker_gets_a_private_admin_socket_and_its_share_of_connections():
    settings = config.load(
        None,
        {},
        {
            "workers": "3",
            "max_connections": 10000,
            "admin_listen": ["tcp:9090:interface=127.0.0.1"],
        },
    )
    values = workers.worker_settings(settings, 3, "unix:/run/x/w0.sock")
    assert values["admin_listen"] == ["unix:/run/x/w0.sock"]
    assert values["workers"] == "1" and values["testee_listen"] == []
    assert values["max_connections"] == 3334
    assert values["listen"] == settings.listen
    unlimited = config.load(None, {}, {"max_connections": 0})
    assert workers.worker_settings(unlimited, 3, "unix:/x")["max_connections"] == 0


def test_auto_is_the_cores_this_process_may_use():
    import os

    settings = config.load(None, {}, {"workers": "auto"})
    assert workers.count(settings) == len(os.sched_getaffinity(0))
    assert workers.count(config.load(None, {}, {"workers": "7"})) == 7


def test_workers_setting_refuses_nonsense():
    import pytest

    for bad in ("0", "-1", "two", "1.5", "257"):
        with pytest.raises(config.ConfigError, match="workers"):
            config.load(None, {}, {"workers": bad})
    assert config.load(None, {"NOTIFYD_WORKERS": "AUTO"}).workers == "auto"


def test_a_restarted_or_silent_worker_never_makes_a_counter_go_back():
    retired: dict = {}
    first = worker_text(3, 10, 1, [0.0005])
    workers.add_counters(retired, first)  # worker 0 ended having counted 10
    out = samples(workers.exposition(workers.aggregate({0: worker_text(1, 2, 1, [0.5])}, retired)))
    assert out[("notifyd_events_delivered_total", ())] == 12
    assert out[("notifyd_delivery_latency_seconds_count", ())] == 2
    # gauges of the old process are gone, not summed
    assert out[("notifyd_sessions", (("serializer", "json"),))] == 1


def test_auto_respects_a_containers_cpu_quota(tmp_path):
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert workers.cgroup_cpus(str(quota)) == 2
    quota.write_text("max 100000\n")
    assert workers.cgroup_cpus(str(quota)) is None
    assert workers.cgroup_cpus(str(tmp_path / "missing")) is None


class _Proc:
    def __init__(self, started: float) -> None:
        self.started = started
        self.pid = 1


def test_health_judges_every_worker_slot():
    import time

    pool = workers.WorkerPool(config.load(None, {}, {}), 2, lambda: [], reactor=None)
    now = time.monotonic()
    ok = (200, b"ok\n")
    pool.running_workers = {0: _Proc(now - 100), 1: _Proc(now - 100)}
    assert pool.health_problems({0: ok, 1: ok}) == []
    assert pool.health_problems({0: ok, 1: None}) == ["worker 1 does not answer\n"]
    pool.running_workers = {0: _Proc(now - 100), 1: _Proc(now - 1)}  # 1 is starting
    assert pool.health_problems({0: ok, 1: None}) == []
    pool.running_workers = {0: _Proc(now - 100)}
    pool._down_since = {1: now - 5}  # being restarted
    assert pool.health_problems({0: ok}) == []
    pool._down_since = {1: now - 1000}
    assert pool.health_problems({0: ok}) == ["worker 1 has not run for 1000 s\n"]
    pool.running_workers = {}
    pool._down_since = {}
    assert pool.health_problems({}) == ["no worker is running\n"]


def test_retired_counters_stay_in_their_own_family():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    def text(writes: int, failed: int) -> str:
        registry = CollectorRegistry()
        Counter("notifyd_log_writes", "w", registry=registry).inc(writes)
        Counter("notifyd_log_writes_failed", "f", registry=registry).inc(failed)
        return generate_latest(registry).decode()

    retired: dict = {}
    workers.add_counters(retired, text(10, 1))
    workers.add_counters(retired, text(5, 2))
    out = samples(workers.exposition(workers.aggregate({0: text(1, 0)}, retired)))
    assert out[("notifyd_log_writes_total", ())] == 16
    assert out[("notifyd_log_writes_failed_total", ())] == 3
