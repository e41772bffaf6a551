"""
A minimal backend web app wired to notifyd (standard library ``wsgiref``
plus PyJWT). Run it next to notifyd; see docs/integration.md.

    python examples/python/app.py --amqp-url amqp://guest:guest@127.0.0.1:5672/%2F \\
        --notifyd http://127.0.0.1:8080 --jwt-secret-file notifyd-jwt.secret

What it shows:

* ``GET /api/notifyd-ticket``: a short-lived JWT for the logged-in user
  (``sub``, ``role``, ``account``, ``aud``, ``iss``, ``iat``, ``exp``), which
  notifyd checks with the same secret; ``notifyd.js`` asks for one on every
  (re)connect. 401 when nobody is logged in, so ``notifyd.js`` stops.
* ``GET /``: the page. It asks notifyd for the event-log position *before*
  it reads the state it renders, and embeds it, so that no event between the
  render and the subscribe is lost (docs/history.md, "The page-render
  handshake"); then it connects with ``notifyd.js``.
* ``POST /api/invoices/send``, ``/api/clients``, ``/api/invoices/overdue``:
  actions that publish events through :mod:`notifications`.

The "login" (``/login?user=alice``) is a stand-in for your application's
own: the point is that the ticket endpoint uses the session the app already
has.
"""

from __future__ import annotations

import argparse
import html
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, make_server

import jwt

from notifyd.publisher import PublishFailed

sys.path.insert(0, str(Path(__file__).resolve().parent))
from notifications import Notifications  # noqa: E402

#: the application's users: login -> (account, role)
USERS = {
    "alice": ("42", "admin"),
    "bob": ("42", "user"),
    "carol": ("7", "user"),
}
TICKET_LIFETIME = 600  # seconds: keep tickets short-lived


def notifyd_ticket(login: str, secret: bytes, *, audience: str, issuer: str) -> str:
    """The JWT notifyd accepts for ``login`` (HS256; see docs/security.md)."""
    account, role = USERS[login]
    now = int(time.time())
    claims = {
        "sub": login,
        "role": role,
        "account": account,
        "aud": audience,
        "iss": issuer,
        "iat": now,
        "exp": now + TICKET_LIFETIME,
    }
    return jwt.encode(claims, secret, algorithm="HS256")


def notifyd_position(admin: str | None) -> int | None:
    """notifyd's newest event-log position, or None (no history, or notifyd
    unreachable: the page then subscribes from "now")."""
    if not admin:
        return None
    try:
        with urllib.request.urlopen(admin + "/position", timeout=2) as r:
            return int(json.load(r)["position"])
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None


#: the page, shared with the Node example: {{name}} placeholders
PAGE = (Path(__file__).resolve().parent.parent / "page.html").read_text()


def js(value: Any) -> str:
    """``value`` as a JavaScript literal that is safe inside <script>."""
    return json.dumps(value).replace("<", "\\u003c")


def render(**values: str) -> str:
    """PAGE with each ``{{name}}`` replaced by ``values[name]``."""
    out = PAGE
    for name, value in values.items():
        out = out.replace("{{" + name + "}}", value)
    return out


class App:
    """The WSGI application."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.secret = Path(args.jwt_secret_file).read_bytes().strip()
        self.notifications = Notifications(
            args.amqp_url, args.exchange, logged=args.logged, receipts=args.receipts
        )
        #: session cookie -> login (your app has its own sessions)
        self.sessions: dict[str, str] = {}

    def user(self, environ: dict[str, Any]) -> str | None:
        cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        morsel = cookie.get("session")
        return self.sessions.get(morsel.value) if morsel else None

    def __call__(self, environ: dict[str, Any], start: Any) -> list[bytes]:
        path, method = environ["PATH_INFO"], environ["REQUEST_METHOD"]
        login = self.user(environ)
        if path == "/favicon.ico":
            return self.reply(start, "204 No Content", b"")
        if path == "/login":
            wanted = parse_qs(environ.get("QUERY_STRING", "")).get("user", [""])[0]
            if wanted not in USERS:
                return self.reply(start, "404 Not Found", b"no such user\n")
            sid = secrets.token_urlsafe(24)
            self.sessions[sid] = wanted
            cookie = f"session={sid}; Path=/; HttpOnly; SameSite=Lax"
            start("303 See Other", [("Location", "/"), ("Set-Cookie", cookie)])
            return [b""]
        if login is None:
            if path == "/":
                links = "".join(f'<li><a href="/login?user={u}">{u}</a></li>' for u in USERS)
                return self.reply(start, "200 OK", f"<ul>{links}</ul>".encode(), "text/html")
            return self.reply(start, "401 Unauthorized", b"log in first\n")
        account, role = USERS[login]
        if path == "/api/notifyd-ticket" and method == "GET":
            token = notifyd_ticket(
                login, self.secret, audience=self.args.audience, issuer=self.args.issuer
            )
            return self.reply(start, "200 OK", token.encode(), "text/plain", no_store=True)
        if path == "/" and method == "GET":
            position = notifyd_position(self.args.notifyd_admin)  # before the state
            ws = self.args.notifyd.replace("http", "ws", 1) + "/ws"
            page = render(
                login=html.escape(login),
                role=html.escape(role),
                account=html.escape(account),
                position=js(position),
                notifyd=html.escape(self.args.notifyd),
                login_js=js(login),
                account_js=js(account),
                ws_js=js(ws),
            )
            return self.reply(start, "200 OK", page.encode(), "text/html", no_store=True)
        if method == "POST" and environ.get("HTTP_X_CSRF") == "1":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            form = parse_qs(environ["wsgi.input"].read(min(size, 4096)).decode())
            value = form.get("invoice", form.get("client", [""]))[0][:100]
            actions = {
                "/api/invoices/send": lambda: self.notifications.invoice_sent(
                    account, value, owner=login
                ),
                "/api/clients": lambda: self.notifications.client_created(account, value, by=login),
                "/api/invoices/overdue": lambda: self.notifications.invoice_overdue(account, value),
            }
            if path not in actions:
                return self.reply(start, "404 Not Found", b"not found\n")
            try:
                actions[path]()
            except PublishFailed as e:  # RabbitMQ did not take it in time
                return self.reply(start, "503 Service Unavailable", f"{e}\n".encode())
            return self.reply(start, "204 No Content", b"")
        return self.reply(start, "404 Not Found", b"not found\n")

    @staticmethod
    def reply(
        start: Any, status: str, body: bytes, ctype: str = "text/plain", no_store: bool = False
    ) -> list[bytes]:
        headers = [("Content-Type", ctype + "; charset=utf-8")]
        if no_store:
            headers.append(("Cache-Control", "no-store"))
        start(status, headers)
        return [body]


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2F")
    p.add_argument("--exchange", default="events", help="notifyd's events exchange")
    p.add_argument("--notifyd", default="http://127.0.0.1:8080", help="notifyd's public URL")
    p.add_argument("--notifyd-admin", default=None, help="notifyd's admin URL (for /position)")
    p.add_argument("--jwt-secret-file", required=True, help="the same file as notifyd's")
    p.add_argument("--audience", default="notifyd", help="notifyd's jwt_audience")
    p.add_argument("--issuer", default="http://127.0.0.1:8000", help="notifyd's jwt_issuer")
    p.add_argument("--logged", action="append", default=[], help="notifyd's history keys")
    p.add_argument("--receipts", action="store_true", help="ask for receipts (notifyd receipts)")
    p.add_argument("--port", type=int, default=8000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    server = make_server("127.0.0.1", args.port, App(args), handler_class=QuietHandler)
    print(f"example app on http://127.0.0.1:{server.server_port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
