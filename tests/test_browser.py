"""The demo page in Debian's headless Chromium, driven by Playwright, against a
real notifyd and RabbitMQ: it connects, shows events as toasts and log rows
with the right summary, ignores topics it did not subscribe to, and reconnects
and re-subscribes by itself after notifyd is restarted; with history it also
shows what was published while notifyd was down."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.sync_notifyd import SyncNotifyd, free_port
from tests.test_history import history_args, stream  # noqa: F401

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# What Chromium itself logs while the server is down on purpose: a refused
# WebSocket connection.  Anything else on the console is a failure.
REFUSED = re.compile(r"WebSocket connection to '.*' failed|ERR_CONNECTION_REFUSED")


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(
            "Debian chromium is not installed (apt-get install chromium); make test installs it"
        )
    with playwright.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium")),
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
            ],
            viewport={"width": 1280, "height": 800},
        )
        yield ctx
        ctx.close()


@pytest.mark.parametrize("serializer", ["json", "msgpack"])
def test_demo_page_live_events_and_reconnect(
    browser_context, rabbit, exchange, publisher, serializer
):
    expect = playwright.expect
    port = free_port()
    node = SyncNotifyd(rabbit.url, exchange, port).start()
    page = browser_context.new_page()
    console: list[tuple[str, str, str]] = []  # (phase, type, text)
    phase = ["up"]
    page.on("console", lambda m: console.append((phase[0], m.type, m.text)))
    page.on("pageerror", lambda e: console.append((phase[0], "pageerror", str(e))))
    try:
        page.goto(f"http://127.0.0.1:{port}/?serializer={serializer}")
        expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=15000)
        expect(page.locator("#status-text")).to_have_text("Live")
        expect(page.locator("#subs li[data-active=true]")).to_have_count(2, timeout=15000)

        publisher.publish(
            "invoice.sent",
            {"invoice": "INV-1042", "client": "Acme Ltd", "amount": 1250, "currency": "EUR"},
        )
        summary = "Invoice INV-1042 sent to Acme Ltd — €1,250.00"
        toast = page.locator(".notifyd-toast[role=status]").filter(has_text=summary)
        expect(toast).to_be_visible(timeout=15000)
        expect(page.locator("#log tr").first.locator(".summary")).to_have_text(summary)

        # a topic the page did not subscribe to never shows; a later event does
        publisher.publish("payroll.run", {"secret": "nope"})
        publisher.publish("client.created", {"client": "Globex GmbH", "client_id": "C-311"})
        expect(page.locator("#log tr").first.locator(".summary")).to_have_text(
            "New client Globex GmbH (C-311)", timeout=15000
        )
        assert page.locator("#log tr[data-topic='payroll.run']").count() == 0
        assert page.get_by_text("nope").count() == 0
        expect(page.locator("#log tr")).to_have_count(2)

        # the toast can be dismissed from the keyboard
        toast.focus()
        page.keyboard.press("Escape")
        expect(toast).to_have_count(0)

        # restart notifyd: the page shows it and comes back by itself
        phase[0] = "down"
        node.stop()
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "reconnecting", timeout=15000
        )
        node.start()
        expect(page.locator("#status")).to_have_attribute("data-state", "live", timeout=30000)
        expect(page.locator("#subs li[data-active=true]")).to_have_count(2, timeout=15000)
        phase[0] = "back"
        publisher.publish(
            "invoice.paid",
            {"invoice": "INV-1042", "client": "Acme Ltd", "amount": 1250, "currency": "EUR"},
        )
        expect(page.locator("#log tr").first.locator(".summary")).to_have_text(
            "Invoice INV-1042 paid by Acme Ltd — €1,250.00", timeout=15000
        )
        expect(page.locator("#log tr")).to_have_count(3)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"demo-{serializer}.png"))
    finally:
        page.close()
        node.stop()

    problems = [
        c
        for c in console
        if c[1] in ("error", "pageerror") and not (c[0] == "down" and REFUSED.search(c[2]))
    ]
    assert problems == [], problems


def test_demo_page_gets_what_it_missed_while_notifyd_was_down(
    browser_context,
    rabbit,
    exchange,
    publisher,
    stream,  # noqa: F811
):
    """With history, notifyd.js resumes on reconnect: the events published
    while the node was down appear, once each, in order."""
    expect = playwright.expect
    port = free_port()
    node = SyncNotifyd(rabbit.url, exchange, port, *history_args(stream)).start()
    page = browser_context.new_page()
    try:
        page.goto(f"http://127.0.0.1:{port}/")
        expect(page.locator("#subs li[data-active=true]")).to_have_count(2, timeout=15000)
        publisher.publish("invoice.sent", {"invoice": "INV-1", "client": "Acme Ltd"})
        expect(page.locator("#log tr")).to_have_count(1, timeout=15000)
        node.stop()
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "reconnecting", timeout=15000
        )
        for i in (2, 3, 4):
            publisher.publish("invoice.sent", {"invoice": f"INV-{i}", "client": "Acme Ltd"})
        node.start()
        expect(page.locator("#log tr")).to_have_count(4, timeout=30000)
        summaries = page.locator("#log tr .summary").all_text_contents()
        # newest first
        assert [s.split()[1] for s in summaries] == ["INV-4", "INV-3", "INV-2", "INV-1"]
        publisher.publish("invoice.sent", {"invoice": "INV-5", "client": "Acme Ltd"})
        expect(page.locator("#log tr")).to_have_count(5, timeout=15000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-resumed.png"))
    finally:
        page.close()
        node.stop()
