"""notifyd.js shares one session between the tabs of a browser (issue 15):
five pages of the demo in one Debian Chromium context, against a real
notifyd and RabbitMQ, through the SharedWorker, through the elected leader
tab (SharedWorker disabled) and per tab (SharedWorker and BroadcastChannel
disabled).

Headless Chromium reports every page as visible, so the tests emulate Page
Visibility: an init script lets a page be switched to hidden and fires
``visibilitychange``, as the browser does when a tab goes to the
background."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Any

import pytest

from tests.sync_notifyd import SyncNotifyd, free_port
from tests.test_history import history_args, stream  # noqa: F401

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
TIMEOUT = 20_000

VISIBILITY = """
(() => {
  let state = "visible";
  Object.defineProperty(Document.prototype, "visibilityState", { get: () => state });
  Object.defineProperty(Document.prototype, "hidden", { get: () => state !== "visible" });
  window.__setVisible = (visible) => {
    state = visible ? "visible" : "hidden";
    document.dispatchEvent(new Event("visibilitychange"));
  };
})();
"""
WITHOUT = {
    "worker": "",
    "leader": "delete window.SharedWorker;",
    "none": "delete window.SharedWorker; delete window.BroadcastChannel;",
    # a SharedWorker whose script is missing (bundled notifyd.js without
    # notifyd-worker.js next to it): notifyd.js falls back to a leader tab
    "broken-worker": (
        "(() => { const SW = window.SharedWorker;"
        " window.SharedWorker = function (url, o) { return new SW('/missing-worker.js', o); };"
        " })();"
    ),
}
# what each page subscribes to (demo page: ?sub=topic:match), overlapping
PAGES = [
    ["invoice.:prefix"],
    ["invoice.sent:exact"],
    ["invoice.paid:exact", "client.created:exact"],
    ["invoice.:prefix"],
    ["client.created:exact"],
]
PUBLISHED = [
    "invoice.sent",
    "invoice.paid",
    "client.created",
    "payroll.run",
    "invoice.sent",
    "invoice.overdue",
    "client.created",
    "invoice.paid",
]


def wants(subs: list[str], topic: str) -> bool:
    for s in subs:
        t, match = s.split(":")
        if (match == "exact" and topic == t) or (match == "prefix" and topic.startswith(t)):
            return True
    return False


def sessions(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r"^notifyd_sessions\{[^}]*\} (\S+)", text, re.M))


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Debian chromium is not installed (apt-get install chromium); make test installs it"
        )
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield b
        b.close()


def open_pages(browser: Any, port: int, mode: str, subs: list[list[str]]) -> tuple[Any, list]:
    context = browser.new_context()
    context.add_init_script(VISIBILITY + WITHOUT[mode])
    problems: list[str] = []
    pages = []
    for i, page_subs in enumerate(subs):
        page = context.new_page()
        page.on("pageerror", lambda e, i=i: problems.append(f"page {i}: {e}"))
        query = "&".join(f"sub={s}" for s in page_subs)
        page.goto(f"http://127.0.0.1:{port}/?{query}")
        pages.append(page)
    for page, page_subs in zip(pages, subs, strict=True):
        playwright.expect(page.locator("#subs li[data-active=true]")).to_have_count(
            len(page_subs), timeout=TIMEOUT
        )
        # what each page receives, and the toasts it shows
        page.evaluate(
            """() => {
              window.__got = [];
              notifier.on("event", (e) => window.__got.push([e.topic, e.args[0].seq]));
              window.__toasts = [];
              new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => {
                if (n.classList && n.classList.contains("notifyd-toast")) {
                  window.__toasts.push(n.getAttribute("data-topic"));
                }
              }))).observe(document.body, { childList: true, subtree: true });
            }"""
        )
    return context, pages, problems


@contextmanager
def tabs(browser: Any, url: str, exchange: str, mode: str, subs: list, *extra: str) -> Any:
    """A notifyd and ``len(subs)`` pages in one context; afterwards: no page
    error, and everything closed."""
    port = free_port()
    node = SyncNotifyd(url, exchange, port, *extra).start()
    context = None
    try:
        context, pages, problems = open_pages(browser, port, mode, subs)
        yield port, context, pages
        assert problems == []
    finally:
        if context is not None:
            context.close()
        node.stop()


@pytest.mark.parametrize("mode", ["worker", "leader", "none", "broken-worker"])
def test_five_tabs_one_session_each_gets_its_events_one_toast_each(
    browser, rabbit, exchange, publisher, mode
):
    port = free_port()
    node = SyncNotifyd(rabbit.url, exchange, port).start()
    context = None
    try:
        context, pages, problems = open_pages(browser, port, mode, PAGES)
        expected_mode = {
            "worker": "worker",
            "leader": "leader",
            "none": None,
            "broken-worker": "leader",
        }[mode]
        assert [p.evaluate("notifier.sharing || null") for p in pages] == [expected_mode] * 5
        shared = mode != "none"
        assert sessions(port) == (1 if shared else 5)
        if shared:
            for page in pages:
                playwright.expect(page.locator("#fact-tabs")).to_have_attribute(
                    "data-tabs", "5", timeout=TIMEOUT
                )
        # the user looks at page 1; the others are in the background
        for i, page in enumerate(pages):
            page.evaluate(f"window.__setVisible({'true' if i == 1 else 'false'})")

        for seq, topic in enumerate(PUBLISHED):
            publisher.publish(topic, {"seq": seq, "invoice": f"INV-{seq}", "client": "Acme"})
        expected = [[[t, s] for s, t in enumerate(PUBLISHED) if wants(subs, t)] for subs in PAGES]
        for page, want in zip(pages, expected, strict=True):
            page.wait_for_function(f"window.__got.length >= {len(want)}", timeout=TIMEOUT)
        # a last event for every page marks the end: nothing else arrived before it
        publisher.publish("client.created", {"seq": 99, "client": "End"})
        publisher.publish("invoice.sent", {"seq": 99, "invoice": "INV-99", "client": "End"})
        # (every page wants exactly one of them)
        for page in pages:
            page.wait_for_function("window.__got.some((g) => g[1] === 99)", timeout=TIMEOUT)
        got = [[g for g in p.evaluate("window.__got") if g[1] != 99] for p in pages]
        assert got == expected  # exactly its own events, in order, once

        toasts = [p.evaluate("window.__toasts") for p in pages]
        if not shared:
            # each tab on its own: each toasts its own events (as before)
            assert [len(t) for t in toasts] == [len(e) + 1 for e in expected]
        else:
            # invoice.sent: page 1 is visible and subscribed: it toasts them
            assert toasts[1] == ["invoice.sent", "invoice.sent", "invoice.sent"]
            assert toasts[0] == toasts[2] == toasts[3] == toasts[4] == []
            # the rest waits for a page that wants them to become visible
            pages[2].evaluate("window.__setVisible(true)")
            pages[2].wait_for_function("window.__toasts.length >= 4", timeout=TIMEOUT)
            pages[4].evaluate("window.__setVisible(true)")
            pages[0].evaluate("window.__setVisible(true)")
            pages[0].wait_for_function("window.__toasts.length >= 1", timeout=TIMEOUT)
            toasts = [p.evaluate("window.__toasts") for p in pages]
            # invoice.paid x2 + client.created x3 on page 2 (at most 4 kept on
            # screen, all counted); invoice.overdue only page 0 or 3 wants
            assert sorted(toasts[2]) == sorted(
                [
                    "invoice.paid",
                    "client.created",
                    "client.created",
                    "invoice.paid",
                    "client.created",
                ]
            )
            assert toasts[0] == ["invoice.overdue"]
            assert toasts[3] == toasts[4] == []
            total = sum(len(t) for t in toasts)
            distinct = len([t for t in PUBLISHED if t != "payroll.run"]) + 2
            assert total == distinct  # one toast per event per browser

            # a logout in one tab ends the session for every tab
            pages[3].evaluate("notifier.disconnect()")
            for page in pages:
                playwright.expect(page.locator("#status")).to_have_attribute(
                    "data-state", "closed", timeout=TIMEOUT
                )
        assert problems == []
    finally:
        if context is not None:
            context.close()
        node.stop()


def test_closing_the_leader_tab_loses_and_repeats_nothing(
    browser,
    rabbit,
    exchange,
    publisher,
    stream,  # noqa: F811
):
    port = free_port()
    node = SyncNotifyd(rabbit.url, exchange, port, *history_args(stream)).start()
    context = None
    stop = threading.Event()
    sent: list[int] = []

    def stream_events() -> None:
        seq = 0
        while not stop.is_set() and seq < 2000:
            publisher.publish("invoice.sent", {"seq": seq, "invoice": f"INV-{seq}", "client": "A"})
            sent.append(seq)
            seq += 1
            stop.wait(0.02)

    try:
        context, pages, problems = open_pages(browser, port, "leader", [["invoice.:prefix"]] * 3)
        assert sessions(port) == 1
        worker = threading.Thread(target=stream_events, daemon=True)
        worker.start()
        for page in pages:
            page.wait_for_function("window.__got.length >= 20", timeout=TIMEOUT)
        # page 0 got the lock first: it hosts the session; close it mid-stream
        pages[0].close()
        for page in pages[1:]:
            page.wait_for_function(
                "window.__got.length >= 40 && notifier.state === 'live'", timeout=TIMEOUT
            )
        stop.set()
        worker.join(10)
        last = sent[-1]
        for page in pages[1:]:
            page.wait_for_function(
                f"window.__got.length && window.__got[window.__got.length - 1][1] >= {last}",
                timeout=TIMEOUT,
            )
            seqs = [s for _, s in page.evaluate("window.__got")]
            assert seqs == list(range(last + 1)), seqs  # nothing lost, nothing twice
            assert page.evaluate("notifier.tabs") == 2
        assert sessions(port) == 1
        assert problems == []
    finally:
        stop.set()
        if context is not None:
            context.close()
        node.stop()


def test_the_browser_reports_hidden_idle_and_active_to_the_backend(
    browser, rabbit, exchange, publisher
):
    """With presence on, the shared session says how present its browser is:
    all tabs hidden (Page Visibility) -> hidden; one visible -> active; the
    backend's table (docs/presence.md) shows it."""
    from tests.test_presence import Table, presence_args

    presence_exchange = exchange + ".presence"
    port = free_port()
    node = SyncNotifyd(rabbit.url, exchange, port, *presence_args(presence_exchange)).start()
    table = Table(rabbit.url, presence_exchange)
    context = None

    def states() -> list:
        with table.lock:
            return [e.get("state") for s in table.nodes.values() for e in s.values()]

    def until(check: Any, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT / 1000
        while not check():
            assert time.monotonic() < deadline, f"{what}: {states()}"
            time.sleep(0.05)

    try:
        context, pages, problems = open_pages(browser, port, "worker", [["invoice.:prefix"]] * 2)
        until(lambda: states() == ["active"], "one session, active")
        for page in pages:
            page.evaluate("window.__setVisible(false)")
        until(lambda: states() == ["hidden"], "every tab hidden")
        pages[1].evaluate("window.__setVisible(true)")
        until(lambda: states() == ["active"], "a tab visible again")
        assert problems == []
    finally:
        table.stop.set()
        if context is not None:
            context.close()
        node.stop()


def test_a_hand_over_before_any_event_loses_nothing(
    browser,
    rabbit,
    exchange,
    publisher,
    stream,  # noqa: F811
):
    """The leader tab closes before its subscription saw any event: the next
    host resumes from where the first one's subscription started, so the
    events published during the hand-over reach every remaining tab."""
    subs = [["invoice.:prefix"]] * 3
    with tabs(browser, rabbit.url, exchange, "leader", subs, *history_args(stream)) as (
        port,
        _,
        pages,
    ):
        pages[0].close()
        for seq in range(5):
            publisher.publish("invoice.sent", {"seq": seq, "invoice": f"INV-{seq}", "client": "A"})
        for page in pages[1:]:
            page.wait_for_function("window.__got.length >= 5", timeout=TIMEOUT)
        publisher.publish("invoice.sent", {"seq": 5, "invoice": "INV-5", "client": "A"})
        for page in pages[1:]:
            page.wait_for_function("window.__got.length >= 6", timeout=TIMEOUT)
            assert [s for _, s in page.evaluate("window.__got")] == list(range(6))
        assert sessions(port) == 1


def test_after_a_logout_only_a_new_page_brings_a_session_back(browser, rabbit, exchange, publisher):
    subs = [["invoice.:prefix"]] * 3
    with tabs(browser, rabbit.url, exchange, "leader", subs) as (port, context, pages):
        pages[1].evaluate("notifier.disconnect()")
        for page in pages:
            playwright.expect(page.locator("#status")).to_have_attribute(
                "data-state", "closed", timeout=TIMEOUT
            )
        pages[0].close()  # the host goes; the closed tabs must not take over
        fresh = context.new_page()  # the user logs in again
        fresh.goto(f"http://127.0.0.1:{port}/?sub=invoice.:prefix")
        playwright.expect(fresh.locator("#subs li[data-active=true]")).to_have_count(
            1, timeout=TIMEOUT
        )
        fresh.evaluate(
            "window.__got = []; notifier.on('event', (e) => window.__got.push(e.args[0].seq))"
        )
        publisher.publish("invoice.sent", {"seq": 1, "invoice": "INV-1", "client": "A"})
        fresh.wait_for_function("window.__got.length === 1", timeout=TIMEOUT)
        for page in pages[1:]:
            assert page.evaluate("window.__got") == []
            assert page.evaluate("notifier.state") == "closed"
        assert sessions(port) == 1


@pytest.mark.parametrize("mode", ["none", "worker"])
def test_displayed_is_reported_only_once_a_visible_page_shows_the_toast(
    browser, rabbit, exchange, publisher, mode
):
    """Receipts (docs/presence.md) from notifyd.js, with two nodes: the page
    on node B, node A with no subscriber.  An event that arrives while the
    page is hidden is delivered but not displayed until the page becomes
    visible; one that arrives while it is visible is displayed at once, and
    the decider (on either node) then drops its fallback."""
    from tests.test_operations import m, metrics
    from tests.test_receipts_e2e import Backend, receipt_args

    receipts, undelivered = exchange + ".receipts", exchange + ".undelivered"
    backend = Backend(rabbit.url, receipts, undelivered)
    other = SyncNotifyd(rabbit.url, exchange, free_port(), *receipt_args(receipts, undelivered))
    other.start()

    def until(check: Any, what: str) -> Any:
        deadline = time.monotonic() + TIMEOUT / 1000
        while not (value := check()):
            assert time.monotonic() < deadline, f"{what}: {backend.receipts}"
            time.sleep(0.05)
        return value

    def publish(seq: int, message_id: str, **headers: Any) -> None:
        publisher.publish(
            "invoice.sent",
            {"seq": seq, "invoice": f"INV-{seq}", "client": "Acme"},
            headers={"notifyd-receipt": True, **headers},
            message_id=message_id,
            timestamp=int(time.time()),
        )

    try:
        with tabs(
            browser,
            rabbit.url,
            exchange,
            mode,
            [["invoice.sent:exact"]],
            *receipt_args(receipts, undelivered),
        ) as (port, context, pages):
            page = pages[0]
            page.evaluate("window.__setVisible(false)")
            publish(1, "hidden-1")
            page.wait_for_function("window.__got.length === 1", timeout=TIMEOUT)
            until(lambda: backend.of("hidden-1", "delivered"), "delivered while hidden")
            # a sentinel through the same session and node: reported by hand,
            # after anything the page would have said of hidden-1
            publish(2, "sentinel-2")
            page.wait_for_function("window.__got.length === 2", timeout=TIMEOUT)
            page.evaluate("notifier.displayed('sentinel-2')")
            until(lambda: backend.of("sentinel-2", "displayed"), "the sentinel")
            assert backend.of("hidden-1", "displayed") == []
            if mode == "none":  # its own toasts, shown while hidden, kept on screen
                assert page.evaluate("window.__toasts") == ["invoice.sent"] * 2
            else:  # the shared session keeps them for a tab that becomes visible
                assert page.evaluate("window.__toasts") == []

            page.evaluate("window.__setVisible(true)")
            until(lambda: backend.of("hidden-1", "displayed"), "displayed once visible")

            # visible: displayed at once, and no fallback for it
            publish(3, "seen-3", **{"notifyd-fallback-after": 30})
            until(lambda: backend.of("seen-3", "displayed"), "displayed while visible")
            delivered = backend.of("seen-3", "delivered")
            assert len(delivered) == 1  # node B's; node A had nobody

            def decided() -> bool:
                values = [metrics(port), metrics(other.port)]
                total = sum(
                    m(v, "notifyd_fallback_decisions_total", outcome="displayed") for v in values
                )
                pending = sum(m(v, "notifyd_fallback_pending") for v in values)
                return total == 1 and pending == 0

            until(decided, "the fallback dropped")
            assert backend.fallbacks("seen-3") == []
            assert backend.error is None
    finally:
        backend.stop.set()
        other.stop()
