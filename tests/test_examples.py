"""The backend examples of examples/ (docs/integration.md) against the real
service: a notifyd with JWT tickets and the example authz file, a real
RabbitMQ, Autobahn|JS subscribers, and the example apps themselves.

* the Python and the Node publisher's events reach exactly the sessions
  their targeting names;
* the ticket endpoints' tokens (fetched over HTTP from the running example
  apps, after their stand-in login) are accepted by notifyd;
* the example page, in Debian Chromium, shows a toast for an event the
  example backend published when the user clicked its button."""

from __future__ import annotations

import http.cookiejar
import os
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.harness import ROOT
from tests.sync_notifyd import SyncNotifyd, free_port

EXAMPLES = ROOT / "examples"
ISSUER = "http://127.0.0.1:8000"
SECRET = b"example-secret-for-tests-only-0123456789"


class ExampleApp:
    """One of the example web apps in a child process."""

    def __init__(self, kind: str, *args: str) -> None:
        if kind == "python":
            cmd = [sys.executable, str(EXAMPLES / "python" / "app.py")]
        else:
            cmd = ["node", str(EXAMPLES / "node" / "app.js")]
        self.cmd = [*cmd, *args, "--port", "0"]
        self.lines: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> ExampleApp:
        self.proc = subprocess.Popen(
            self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
        )
        line = self.proc.stdout.readline()
        m = re.search(r"example app on (http://\S+)/", line)
        assert m, f"the example app did not start: {line}{self.proc.stdout.read()}"
        self.url = m.group(1)
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def ticket(self, user: str) -> str:
        """Log in as ``user`` (the stand-in login) and fetch a ticket from
        the app's /api/notifyd-ticket, as the page does."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{self.url}/login?user={user}", timeout=10).read()
        with opener.open(f"{self.url}/api/notifyd-ticket", timeout=10) as r:
            assert r.headers["Cache-Control"] == "no-store"
            return r.read().decode()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def secured_args(secret_file: Path, *extra: str) -> list[str]:
    return [
        "--authz-file",
        str(ROOT / "docs" / "examples" / "authz.toml"),
        "--jwt-secret-file",
        str(secret_file),
        "--jwt-algorithm",
        "HS256",
        "--jwt-audience",
        "notifyd",
        "--jwt-issuer",
        ISSUER,
        *extra,
    ]


def app_args(rabbit: Any, exchange: str, secret_file: Path, notifyd: str) -> list[str]:
    return [
        "--amqp-url",
        rabbit.url,
        "--exchange",
        exchange,
        "--notifyd",
        notifyd,
        "--notifyd-admin",
        notifyd,
        "--jwt-secret-file",
        str(secret_file),
        "--issuer",
        ISSUER,
    ]


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "notifyd-jwt.secret"
    path.write_bytes(SECRET + b"\n")
    os.chmod(path, 0o600)
    return path


def ticket(value: str) -> dict:
    return {"authmethods": ["ticket"], "ticket": value}


def bodies(client: Any) -> list[str]:
    return [e["args"][0]["body"] for e in client.events("s")]


@defer.inlineCallbacks
def users(spawn: Any, node: Any, tickets: Any) -> Any:
    """alice (account 42, admin), bob (42, user), carol (7, user), each
    logged in with a ticket of ``tickets(user)`` (an example backend's) and
    subscribed to their account's topics."""
    out = {}
    for user, account in (("alice", "42"), ("bob", "42"), ("carol", "7")):
        value = yield deferToThread(tickets, user)
        client = yield spawn.js(node.url, auth=ticket(value))
        assert client.authid == user and client.authrole == ("admin" if user == "alice" else "user")
        r = yield client.subscribe("s", f"acct.{account}.", "prefix")
        assert r["ev"] == "subscribed", r
        out[user] = client
    return out


@defer.inlineCallbacks
def end_marks(rabbit: Any, exchange: str, clients: dict) -> Any:
    """One last event per account: everything published before it arrived."""
    sys.path.insert(0, str(EXAMPLES / "python"))
    from notifications import Notifications

    with Notifications(rabbit.url, exchange) as n:
        yield deferToThread(n.client_created, "42", "END", "system")
        yield deferToThread(n.client_created, "7", "END", "system")
    for client in clients.values():
        yield client.wait_report(
            lambda r, c=client: any(b.endswith("END") for b in bodies(c)) or None
        )


@pytest_twisted.inlineCallbacks
def test_python_example_publishes_with_the_right_targeting(spawn, rabbit, exchange, secret_file):
    node = yield spawn.notifyd(*secured_args(secret_file), anonymous=False)
    app = ExampleApp(
        "python", *app_args(rabbit, exchange, secret_file, f"http://127.0.0.1:{node.port}")
    )
    yield deferToThread(app.start)
    try:
        clients = yield users(spawn, node, app.ticket)
        sys.path.insert(0, str(EXAMPLES / "python"))
        from notifications import Notifications

        with Notifications(rabbit.url, exchange) as n:
            assert (yield deferToThread(n.client_created, "42", "Acme Ltd", "alice"))
            yield deferToThread(n.invoice_sent, "42", "INV-1", "bob")
            yield deferToThread(n.invoice_overdue, "42", "INV-2")
            yield deferToThread(n.client_created, "7", "Globex", "carol")
        yield end_marks(rabbit, exchange, clients)
        assert bodies(clients["alice"]) == [
            "alice added Acme Ltd",
            "Invoice INV-2 is overdue",  # admins only
            "system added END",
        ]
        assert bodies(clients["bob"]) == [
            "alice added Acme Ltd",
            "Invoice INV-1 was sent",  # bob's own
            "system added END",
        ]
        assert bodies(clients["carol"]) == ["carol added Globex", "system added END"]
    finally:
        app.stop()


@pytest_twisted.inlineCallbacks
def test_node_example_publishes_with_the_right_targeting(spawn, rabbit, exchange, secret_file):
    node = yield spawn.notifyd(*secured_args(secret_file), anonymous=False)
    app = ExampleApp(
        "node", *app_args(rabbit, exchange, secret_file, f"http://127.0.0.1:{node.port}")
    )
    yield deferToThread(app.start)
    try:
        clients = yield users(spawn, node, app.ticket)  # the Node app's tickets
        out = yield deferToThread(
            subprocess.run,
            ["node", str(EXAMPLES / "node" / "notifications.js"), rabbit.url, exchange],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        yield end_marks(rabbit, exchange, clients)
        assert bodies(clients["alice"]) == [
            "alice added Acme Ltd",
            "Invoice INV-1042 was sent",  # alice's own
            "Invoice INV-1001 is overdue",  # alice is an admin
            "system added END",
        ]
        assert bodies(clients["bob"]) == ["alice added Acme Ltd", "system added END"]
        assert bodies(clients["carol"]) == ["system added END"]
        events = clients["alice"].events("s")
        assert all(isinstance(e["publication"], int) for e in events)
    finally:
        app.stop()


@pytest_twisted.inlineCallbacks
def test_ruby_example_tickets_and_targeting(spawn, rabbit, exchange, secret_file):
    """examples/ruby/backend.rb (Debian's ruby-bunny and ruby-jwt): its
    tickets log in, its events reach exactly their audience."""
    node = yield spawn.notifyd(*secured_args(secret_file), anonymous=False)
    script = str(EXAMPLES / "ruby" / "backend.rb")

    def ruby(*args: str) -> str:
        out = subprocess.run(
            ["ruby", script, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    clients = yield users(spawn, node, lambda user: ruby("ticket", str(secret_file), user))
    yield deferToThread(ruby, "publish", rabbit.url, exchange)
    yield end_marks(rabbit, exchange, clients)
    assert bodies(clients["alice"]) == [
        "bob added Initech",
        "Invoice INV-2002 is overdue",  # alice is an admin
        "system added END",
    ]
    assert bodies(clients["bob"]) == [
        "bob added Initech",
        "Invoice INV-2001 was sent",  # bob's own
        "system added END",
    ]
    assert bodies(clients["carol"]) == ["system added END"]


@pytest.mark.parametrize("kind", ["python", "node"])
def test_the_example_page_shows_a_toast_for_the_backends_event(rabbit, exchange, secret_file, kind):
    """The example app's page in Debian Chromium: the stand-in login, a
    ticket from the app, notifyd.js live, the page-render position embedded
    (history on); the "Send invoice" button makes the backend publish, and
    the page shows the toast."""
    from tests.test_history import history_args
    from tests.test_tabs import CHROMIUM, TIMEOUT, playwright

    app_port = free_port()
    port = free_port()
    stream = f"{exchange}.history"
    node = SyncNotifyd(
        rabbit.url,
        exchange,
        port,
        *secured_args(
            secret_file,
            "--allowed-origins",
            f"http://127.0.0.1:{app_port}",
            *[a.replace("invoice.#", "acct.#") for a in history_args(stream)],
        ),
    )
    node.args.remove("--allow-anonymous")
    node.start()
    app = ExampleApp(kind, *app_args(rabbit, exchange, secret_file, f"http://127.0.0.1:{port}"))
    app.cmd[-1] = str(app_port)
    try:
        app.start()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                problems: list[str] = []
                page.on("pageerror", lambda e: problems.append(str(e)))
                page.goto(f"{app.url}/login?user=alice")
                playwright.expect(page.locator("#state")).to_have_text("live", timeout=TIMEOUT)
                assert isinstance(page.evaluate("window.NOTIFYD_POSITION"), int)
                page.click("#send button")
                toast = page.locator(".notifyd-toast")
                playwright.expect(toast).to_have_count(1, timeout=TIMEOUT)
                playwright.expect(toast).to_contain_text("Invoice INV-1042 was sent")
                playwright.expect(page.locator("#log li")).to_have_text(
                    ["acct.42.invoice.sent: Invoice INV-1042 was sent"]
                )
                assert problems == []
            finally:
                browser.close()
    finally:
        app.stop()
        node.stop()
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(rabbit.url))
        ch = conn.channel()
        for q in (stream, stream + ".retained", stream + ".ingest"):
            ch.queue_delete(q)
        conn.close()
