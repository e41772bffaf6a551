"""Resume, get_events and retained events against an in-memory log (no
reactor, no network): exactly-once hand-over from replay to live, gaps,
targeting, pacing."""

from __future__ import annotations

import itertools

import pytest
from autobahn.wamp import message, role
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from notifyd.bindings import Bindings
from notifyd.history import History, HistorySettings
from notifyd.node import make_router
from notifyd.router import Policy
from notifyd.session import WampSession
from notifyd.streams import LogUnavailable
from notifyd.testing import FakeBinder, FakeLog, RecordingTransport
from notifyd.topics import PatternSet


def setup(patterns=("invoice.#",), clock=None, memory=0):
    ids = itertools.count(100)
    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    log, retained = FakeLog(memory=memory), FakeLog()
    history = History(
        HistorySettings(patterns=PatternSet(list(patterns)), max_message_size=1 << 20),
        log,
        retained,
        clock=clock,
    )
    history.bindings.attach(FakeBinder(auto=True))
    router = make_router(
        Policy(allow_anonymous=True),
        bindings=bindings,
        history=history,
        clock=clock,
        new_id=lambda: next(ids),
    )
    return router, log, retained


def session(router):
    t = RecordingTransport()
    s = WampSession(router, t)
    s.on_message(message.Hello("realm1", {"subscriber": role.RoleSubscriberFeatures()}))
    return s, t


def subscribe(s, topic, request=1, match=None, **options):
    raw = [32, request, dict(options, **({"match": match} if match else {})), topic]
    known = {k: v for k, v in raw[2].items() if not k.startswith("_")}
    s.on_message(message.Subscribe.parse([32, request, known, topic]), raw)


def seqs(t):
    return [e.args[0]["seq"] for e in t.events]


def test_log_positions_are_publication_ids_and_logged_subscriptions_need_no_binding():
    router, log, _ = setup()
    s, t = session(router)
    subscribe(s, "invoice.sent")
    sub = router.broker.subscriptions()[0]
    assert sub.logged and router.broker.bindings.wanted == frozenset()
    log.append("other.topic", {"seq": -1})
    log.append("invoice.sent", {"seq": 0})
    assert [e.publication for e in t.events] == [2] and seqs(t) == [0]
    # the node queue path leaves logged topics to the log
    assert router.on_delivery("invoice.sent", None, b"{}") == 0


@pytest.mark.parametrize("memory", [0, 100], ids=["from the stream", "from memory"])
def test_resume_replays_what_was_missed_then_live_exactly_once(memory):
    router, log, _ = setup(memory=memory)
    for i in range(10):
        log.append("invoice.sent" if i % 2 == 0 else "invoice.paid", {"seq": i})
    s, t = session(router)
    # the client saw up to publication id 3 (offset 2, seq 2)
    subscribe(s, "invoice.sent", _resume_after=3)
    assert isinstance(t.sent[1], message.Subscribed)
    assert seqs(t) == [4, 6, 8]
    log.append("invoice.sent", {"seq": 10})
    assert seqs(t) == [4, 6, 8, 10]
    assert [e.publication for e in t.events] == [5, 7, 9, 11]
    # from memory no stream is read at all
    assert (log.reads_from_memory, len(log.reads)) == ((1, 0) if memory else (0, 1))


@pytest.mark.parametrize("memory", [0, 100, 4], ids=["stream", "memory", "memory moves on"])
def test_live_events_during_a_paced_replay_are_neither_lost_nor_doubled(memory):
    router, log, _ = setup(memory=memory)
    for i in range(6):
        log.append("invoice.sent", {"seq": i})
    s, t = session(router)
    gate: list[Deferred] = []

    def writable():
        d = Deferred()
        gate.append(d)
        return d

    t.writable = writable  # the socket is full after every event
    subscribe(s, "invoice.sent", _resume_after=2)
    assert seqs(t) == [2]
    # while the replay waits, new events arrive live
    log.append("invoice.sent", {"seq": 6})
    log.append("invoice.sent", {"seq": 7})
    assert seqs(t) == [2]
    while gate:
        gate.pop(0).callback(None)
    assert seqs(t) == [2, 3, 4, 5, 6, 7]
    log.append("invoice.sent", {"seq": 8})
    assert seqs(t) == list(range(2, 9))


def test_resume_from_before_retention_is_an_explicit_error():
    router, log, _ = setup()
    for i in range(10):
        log.append("invoice.sent", {"seq": i})
    log.truncate(8)
    s, t = session(router)
    subscribe(s, "invoice.sent", _resume_after=2)
    err = t.sent[-1]
    assert isinstance(err, message.Error) and err.error == "notifyd.error.not_recovered"
    assert err.kwargs["requested"] == 2 and err.kwargs["first"] == 9
    assert err.kwargs["position"] == 10
    assert t.events == [] and router.broker.subscriptions() == []


def test_resume_at_the_tail_and_beyond_it():
    router, log, _ = setup()
    for i in range(3):
        log.append("invoice.sent", {"seq": i})
    s, t = session(router)
    subscribe(s, "invoice.sent", _resume_after=3)
    assert isinstance(t.sent[-1], message.Subscribed) and log.reads == []
    log.append("invoice.sent", {"seq": 3})
    assert seqs(t) == [3]
    s2, t2 = session(router)
    subscribe(s2, "invoice.sent", _resume_after=99)
    assert t2.sent[-1].error == "notifyd.error.not_recovered"


def test_resume_from_a_node_that_is_ahead_of_this_one():
    router, log, _ = setup()
    log.append("invoice.sent", {"seq": 0})
    # the other node has seen offset 1 already; this node's consumer has not
    log.append("invoice.sent", {"seq": 1}, live=False)
    s, t = session(router)
    subscribe(s, "invoice.sent", _resume_after=2)
    # finding the real end let offset 1 arrive here: the client had it already
    assert isinstance(t.sent[-1], message.Subscribed) and t.events == []
    log.append("invoice.sent", {"seq": 2})
    assert seqs(t) == [2]


@pytest.mark.parametrize(
    "topic, match, after, error",
    [
        ("client.created", None, 1, "notifyd.error.history_unavailable"),
        ("inv", "prefix", 1, "notifyd.error.history_unavailable"),  # binds '#'
        ("invoice.sent", None, -1, "wamp.error.invalid_argument"),
        ("invoice.sent", None, True, "wamp.error.invalid_argument"),
        ("invoice.sent", None, 2**51, "wamp.error.invalid_argument"),
    ],
)
def test_resume_refusals(topic, match, after, error):
    router, log, _ = setup()
    s, t = session(router)
    subscribe(s, topic, match=match, _resume_after=after)
    assert t.sent[-1].error == error


def test_replay_honours_targeting():
    router, log, _ = setup()
    s, t = session(router)
    log.append("invoice.sent", {"seq": 0}, {"wamp-eligible": str(s.session_id + 1)})
    log.append("invoice.sent", {"seq": 1}, {"wamp-eligible-authrole": "admin"})
    log.append("invoice.sent", {"seq": 2}, {"wamp-exclude": str(s.session_id)})
    log.append("invoice.sent", {"seq": 3}, {"wamp-eligible": str(s.session_id)})
    subscribe(s, "invoice.sent", _resume_after=0)
    assert seqs(t) == [3]


def test_get_events_newest_first_window_oldest_first_order():
    router, log, _ = setup()
    router.history.settings.max_events = 50
    for i in range(700):
        log.append("invoice.sent" if i % 7 == 0 else "invoice.paid", {"seq": i})
    s, t = session(router)
    subscribe(s, "invoice.sent")
    sub = router.broker.subscriptions()[0]
    got = router.history.get_events(s, sub, 120).result
    # 100 events exist; the limit is capped at max_events
    want = [i for i in range(700) if i % 7 == 0][-50:]
    assert [e["args"][0]["seq"] for e in got] == want
    assert [e["publication"] for e in got] == [i + 1 for i in want]
    # retention: nothing before the first kept entry, and no endless scan
    log.truncate(690)
    got = router.history.get_events(s, sub, 10).result
    assert [e["args"][0]["seq"] for e in got] == [693]


def test_retained_events_per_topic_with_targeting():
    router, log, retained = setup()
    retained.append("invoice.paid", {"seq": 1})
    retained.append("invoice.paid", {"seq": 2})
    retained.append("invoice.sent", {"seq": 3}, {"wamp-eligible-authrole": "admin"})
    retained.append("client.created", {"seq": 4})
    s, t = session(router)
    subscribe(s, "invoice.", match="prefix", get_retained=True)
    assert seqs(t) == [2]
    assert t.events[0].retained is True and t.events[0].publication == 2**51 + 2
    s2, t2 = session(router)
    subscribe(s2, "client.created", get_retained=True)
    subscribe(s2, "invoice.paid", request=2)
    assert seqs(t2) == [4]


def test_a_replay_whose_client_stops_reading_is_given_up():
    clock = Clock()
    router, log, _ = setup(clock=clock)
    for i in range(5):
        log.append("invoice.sent", {"seq": i})
    s, t = session(router)
    t.writable = Deferred  # the socket stays full: never fires
    subscribe(s, "invoice.sent", _resume_after=0)
    assert seqs(t) == [0]
    clock.advance(router.history.settings.stall_timeout + 1)
    # SUBSCRIBED was out: the session is told with GOODBYE, its reader is free
    assert isinstance(t.sent[-1], message.Goodbye)
    assert t.sent[-1].reason == "notifyd.close.resume_failed"
    assert router.broker.subscriptions() == []
    assert router.history._readers.running == 0


def test_a_gap_in_the_live_log_closes_subscribed_sessions():
    router, log, _ = setup()
    s, t = session(router)
    idle, t2 = session(router)
    other, t3 = session(router)
    wide, t4 = session(router)
    subscribe(s, "invoice.sent")
    subscribe(other, "client.created")  # not logged: nothing was missed
    subscribe(wide, "inv", match="prefix")  # binds '#': gets logged topics too
    router.log_gap(10, 20)
    assert t.sent[-1].reason == "notifyd.close.resume_failed"
    assert t4.sent[-1].reason == "notifyd.close.resume_failed"
    assert not any(isinstance(m, message.Goodbye) for m in t2.sent + t3.sent)


class _Queue:
    """pika's consumer queue, as far as the follower uses it."""

    def __init__(self, pending):
        self.pending = list(pending)


class _Channel:
    is_open = True

    def __init__(self):
        self.acks = []

    def basic_ack(self, tag, multiple=False):
        self.acks.append((tag, multiple))


def _entry(offset, tag, marker=None):
    from types import SimpleNamespace

    headers = {"x-stream-offset": offset}
    if marker:
        headers["x-notifyd-marker"] = marker
    return SimpleNamespace(
        method=SimpleNamespace(routing_key="invoice.sent", delivery_tag=tag),
        properties=SimpleNamespace(headers=headers),
        body=b"{}",
    )


def test_stream_follower_skips_the_chunk_head_reports_gaps_and_answers_probes():
    from notifyd.streams import StreamLog

    clock = Clock()
    seen, gaps = [], []
    log = StreamLog("s", {}, reactor=clock)
    log.deliver_to(lambda o, m: seen.append(o), lambda a, b: gaps.append((a, b)))
    log.live_pos = 5
    log._expect = 6
    probe = Deferred()
    log._probes["tok"] = probe
    channel = _Channel()
    # after a reconnect: the chunk holding 6 starts at 4, but 6..8 are gone
    queue = _Queue([_entry(4, 1), _entry(5, 2)])  # already queued when following starts
    log._follow(channel, queue)
    for msg in (_entry(9, 3), _entry(10, 4, "tok")):
        queue.put(msg)
    assert seen == [9] and gaps == [(6, 9)]
    assert probe.result == 10 and log.live_pos == 10
    clock.advance(0)
    assert channel.acks == []  # acks wait for a batch or a short delay
    clock.advance(0.01)
    assert channel.acks == [(4, True)]  # every delivery acked, in one batch


def test_acks_go_out_in_batches_of_a_quarter_prefetch_or_after_a_delay():
    from notifyd.streams import AckBatcher

    clock = Clock()
    channel = _Channel()
    acks = AckBatcher(clock, batch=3, delay=0.01)
    for tag in (1, 2, 3, 4):
        acks.later(channel, tag)
    assert channel.acks == [(3, True)]  # the batch is full: at once
    clock.advance(0.009)
    assert channel.acks == [(3, True)]
    clock.advance(0.002)
    assert channel.acks == [(3, True), (4, True)]  # the rest after the delay
    acks.later(channel, 5)
    acks.flush()  # a reject or a stop flushes at once
    assert channel.acks == [(3, True), (4, True), (5, True)]
    clock.advance(1)
    assert channel.acks == [(3, True), (4, True), (5, True)]
    assert acks.count == 5


def test_log_entries_reach_sessions_while_their_subscription_waits_for_a_rebind():
    """After a reconnect the log's backlog can arrive before the node has
    re-made its bindings: connected sessions must still get it."""
    router, log, _ = setup(patterns=("invoice.#",))
    s, t = session(router)
    subscribe(s, "invoice.sent")
    subscribe(s, "inv", match="prefix", request=2)  # binds '#' on the node queue
    router.history.bindings.detach()
    router.broker.bindings.detach()
    assert not any(sub.ready for sub in router.broker.subscriptions())
    log.append("invoice.sent", {"seq": 0})
    assert seqs(t) == [0, 0]  # once per subscription


def test_resume_after_zero_is_everything_the_log_still_has():
    router, log, _ = setup()
    for i in range(10):
        log.append("invoice.sent", {"seq": i})
    log.truncate(8)
    s, t = session(router)
    subscribe(s, "invoice.sent", _resume_after=0)
    assert isinstance(t.sent[-1], message.Subscribed) and seqs(t) == [8, 9]


def test_a_second_subscribe_during_a_resume_gets_the_resumes_answer():
    router, log, _ = setup()
    router.history.bindings.detach()  # RabbitMQ away: the resume waits
    for i in range(4):
        log.append("invoice.sent", {"seq": i})
    s, t = session(router)
    subscribe(s, "invoice.sent", request=1, _resume_after=1)
    subscribe(s, "invoice.sent", request=2)  # e.g. a second notifyd.js subscribe
    assert not any(isinstance(m, message.Subscribed) for m in t.sent)
    router.history.bindings.attach(FakeBinder(auto=True))
    subscribed = [m for m in t.sent if isinstance(m, message.Subscribed)]
    assert [m.request for m in subscribed] == [1, 2]
    assert len({m.subscription for m in subscribed}) == 1
    assert seqs(t) == [1, 2, 3]  # replayed once, not twice
    log.append("invoice.sent", {"seq": 4})
    assert seqs(t) == [1, 2, 3, 4]


def test_a_failed_resume_refuses_every_waiting_request():
    router, log, _ = setup()
    for i in range(10):
        log.append("invoice.sent", {"seq": i})
    log.truncate(8)
    router.history.bindings.detach()
    s, t = session(router)
    subscribe(s, "invoice.sent", request=1, _resume_after=2)
    subscribe(s, "invoice.sent", request=2, _resume_after=2)
    router.history.bindings.attach(FakeBinder(auto=True))
    errors = [m for m in t.sent if isinstance(m, message.Error)]
    assert [(m.request, m.error) for m in errors] == [
        (1, "notifyd.error.not_recovered"),
        (2, "notifyd.error.not_recovered"),
    ]
    assert router.broker.subscriptions() == []


def test_a_replay_given_up_after_unsubscribe_says_nothing():
    clock = Clock()
    router, log, _ = setup(clock=clock)
    for i in range(5):
        log.append("invoice.sent", {"seq": i})
    s, t = session(router)
    t.writable = Deferred
    subscribe(s, "invoice.sent", _resume_after=0)
    sub = router.broker.subscriptions()[0]
    s.on_message(message.Unsubscribe(9, sub.id))
    assert isinstance(t.sent[-1], message.Unsubscribed)
    clock.advance(router.history.settings.stall_timeout + 1)
    assert isinstance(t.sent[-1], message.Unsubscribed)  # no GOODBYE
    assert router.history._readers.running == 0


def test_the_retained_table_ages_out_and_is_bounded():
    clock = Clock()
    clock.advance(1_000_000)
    router, log, retained = setup(clock=clock)
    router.history.settings.max_retained = 2
    retained.append("invoice.a", {"seq": 1})
    retained.append("invoice.b", {"seq": 2})
    retained.append("invoice.a", {"seq": 3})  # an update moves a to the end
    retained.append("invoice.c", {"seq": 4})  # over the bound: b goes
    assert sorted(router.history.retained) == ["invoice.a", "invoice.c"]
    s, t = session(router)
    subscribe(s, "invoice.", match="prefix", get_retained=True)
    assert sorted(seqs(t)) == [3, 4]
    clock.advance(router.history.settings.retained_max_age + 1)
    s2, t2 = session(router)
    subscribe(s2, "invoice.", match="prefix", get_retained=True)
    assert t2.events == []


def test_probes_are_shared_fresh_and_rate_limited():
    from notifyd.streams import LogUnavailable, StreamLog

    class Pub:
        is_open = True

        def __init__(self):
            self.markers = []

        def basic_publish(self, exchange, routing_key, body, properties):
            self.markers.append(properties.headers["x-notifyd-marker"])
            return Deferred()

    clock = Clock()
    log = StreamLog("s", {}, reactor=clock)
    log._publish_channel = pub = Pub()
    first = log.probe()
    assert len(pub.markers) == 1
    # asked while the marker is on its way: it waits for a newer one
    second = log.probe()
    log._entry(_Channel(), _entry(7, 1, pub.markers[0]))
    assert first.result == 7 and not second.called
    third = log.probe()  # shares the next marker, written a second later
    assert len(pub.markers) == 1
    clock.advance(1.0)
    assert len(pub.markers) == 2
    log._entry(_Channel(), _entry(9, 2, pub.markers[1]))
    assert second.result == 9 and third.result == 9
    # RabbitMQ gone: waiting callers fail, nothing stays scheduled
    waiting = log.probe()
    log.detach()
    failures = []
    waiting.addErrback(lambda f: failures.append(f.trap(LogUnavailable)))
    assert failures == [LogUnavailable]
    assert log._probe_call is None and log._want == []


def test_a_plain_subscribe_waiting_on_a_failed_resume_is_subscribed_plainly():
    router, log, _ = setup()
    for i in range(10):
        log.append("invoice.sent", {"seq": i})
    log.truncate(8)
    router.history.bindings.detach()
    s, t = session(router)
    subscribe(s, "invoice.sent", request=1, _resume_after=2)
    subscribe(s, "invoice.sent", request=2)
    router.history.bindings.attach(FakeBinder(auto=True))
    answers = [(m.request, type(m).__name__) for m in t.sent if hasattr(m, "request")]
    assert answers == [(1, "Error"), (2, "Subscribed")]
    log.append("invoice.sent", {"seq": 10})
    assert seqs(t) == [10]


def test_retained_events_come_before_the_replay_on_a_resume():
    router, log, retained = setup()
    retained.append("invoice.sent", {"seq": "retained"})
    for i in range(3):
        log.append("invoice.sent", {"seq": i})
    s, t = session(router)
    subscribe(s, "invoice.sent", _resume_after=1, get_retained=True)
    assert seqs(t) == ["retained", 1, 2]
    assert t.events[0].retained and not t.events[1].retained


def test_subscribes_piling_up_on_a_resume_are_bounded():
    router, log, _ = setup()
    router.policy.max_subscriptions = 3
    router.history.bindings.detach()
    log.append("invoice.sent", {"seq": 0})
    s, t = session(router)
    for request in range(1, 6):
        subscribe(s, "invoice.sent", request=request, _resume_after=0)
    errors = [m for m in t.sent if isinstance(m, message.Error)]
    assert [m.error for m in errors] == ["notifyd.error.too_many_subscriptions"] * 2


def _memory_log(size, offsets, clock=None):
    from notifyd.streams import StreamLog

    log = StreamLog("s", {}, memory=size, reactor=clock or Clock())
    channel = _Channel()
    for tag, offset in enumerate(offsets, 1):
        log._entry(channel, _entry(offset, tag, "m" if offset % 5 == 4 else None))
    return log


def test_reads_within_memory_need_no_stream_consumer():
    log = _memory_log(8, range(0, 12))  # memory holds 4..11; 4 and 9 are markers
    seen = []

    def handler(offset, msg):
        seen.append((offset, msg is None))
        return offset >= log.live_pos

    # no connection at all: only memory can answer
    d = log.read(6, handler)
    assert d.called and d.result is None
    assert seen == [(6, False), (7, False), (8, False), (9, True), (10, False), (11, False)]
    assert (log.reads_from_memory, log.reads_from_stream) == (1, 0)
    # older than memory: the stream is asked (and is not there)
    failed = log.read(2, handler)
    failed.addErrback(lambda f: f.trap(LogUnavailable))
    assert log.reads_from_stream == 1


def test_a_paced_read_goes_on_from_memory_or_falls_back_to_the_stream():
    log = _memory_log(4, range(0, 4))
    seen, gate = [], []

    def handler(offset, msg):
        seen.append(offset)
        if offset == 1:
            gate.append(Deferred())
            return gate[-1]  # the client's socket is full
        return offset >= 9

    d = log.read(0, handler)
    assert seen == [0, 1] and not d.called
    channel = _Channel()
    for tag, offset in enumerate((4, 5), 10):  # meanwhile 0..1 leave memory
        log._entry(channel, _entry(offset, tag))
    gate[0].callback(None)
    assert seen == [0, 1, 2, 3, 4, 5]  # 2 is still held: on from memory
    # nothing newer yet: the stream consumer takes over (none here)
    failed = []
    d.addErrback(lambda f: failed.append(f.trap(LogUnavailable)))
    assert failed == [LogUnavailable]


def test_memory_starts_over_when_offsets_jump_and_indexes_topics():
    from types import SimpleNamespace

    from notifyd.streams import RecentEntries

    def msg(topic):
        return SimpleNamespace(method=SimpleNamespace(routing_key=topic))

    recent = RecentEntries(3)
    for offset, topic in enumerate(("a", "b", "a", "a")):
        recent.append(offset, msg(topic))
    assert [o for o, _ in recent.since(0)] == [1, 2, 3] and not recent.holds(0)
    assert [o for o, _ in recent.of_topic("a", 0)] == [2, 3]  # 0 left memory
    assert [o for o, _ in recent.of_topic("a", 3)] == [3]
    assert recent.of_topic("c", 0) == []
    recent.append(4, None)  # a marker: no topic
    assert [o for o, _ in recent.of_topic("b", 0)] == []  # 1 left memory
    recent.append(10, msg("a"))  # a gap (retention, a new stream)
    assert [o for o, _ in recent.since(0)] == [10] and not recent.holds(3)
    assert [o for o, _ in recent.of_topic("a", 0)] == [10]
    off = RecentEntries(0)
    off.append(0, msg("a"))
    assert len(off) == 0 and not off.holds(0)


def test_a_redelivered_ingest_message_waits_until_the_log_reader_caught_up():
    """The writer node died after writing an event and before its ack: the
    redelivery must not be written again, even when it arrives before this
    node's log reader has read the dead writer's entry."""
    from types import SimpleNamespace

    from notifyd.ingest import DIGEST_HEADER, LogWriter

    caught_up: list[Deferred] = []

    def catch_up():
        caught_up.append(Deferred())
        return caught_up[-1]

    writer = LogWriter("q", PatternSet(["invoice.#"]), 1 << 20, catch_up=catch_up)

    class Channel:
        is_open = True

        def __init__(self):
            self.acks, self.published = [], []

        def basic_ack(self, tag):
            self.acks.append(tag)

        def basic_publish(self, exchange, routing_key, body, properties, mandatory):
            self.published.append((routing_key, body, properties))
            return Deferred()

    consumer, out = Channel(), Channel()

    def delivery(tag, seq, redelivered):
        return SimpleNamespace(
            method=SimpleNamespace(
                delivery_tag=tag, routing_key="invoice.sent", redelivered=redelivered
            ),
            properties=SimpleNamespace(
                content_type="application/json",
                content_encoding=None,
                headers={},
                message_id=None,
                timestamp=None,
                type=None,
                app_id=None,
            ),
            body=b'{"seq": %d}' % seq,
        )

    # what the dead writer wrote: the digest the log reader will see
    writer._on_message(out, out, delivery(1, 1, False))
    entry = SimpleNamespace(properties=out.published.pop()[2])
    assert DIGEST_HEADER in entry.properties.headers
    writer._on_message(consumer, out, delivery(7, 1, True))  # the redelivery
    writer._on_message(consumer, out, delivery(8, 2, False))  # a new one, behind it
    assert out.published == [] and consumer.acks == [] and len(caught_up) == 1
    writer.seen(entry)  # the log reader reaches the dead writer's entry
    caught_up[0].callback(41)  # and then the marker
    assert consumer.acks == [7]  # found in the log: acked, not written again
    assert [body for _, body, _ in out.published] == [b'{"seq": 2}']  # order kept
    assert writer.duplicates == 1
    # caught up once per consumer: later redeliveries do not wait again
    writer._on_message(consumer, out, delivery(9, 3, True))
    assert len(caught_up) == 1 and len(out.published) == 2
