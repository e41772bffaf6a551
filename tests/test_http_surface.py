"""The HTTP surface and fair sharing of the connection phase, against a real
notifyd: one byte range per request, page assets only, exact admin paths, a
status-only public ``/readyz``, no version banners, the Origin rule, the
deadline and the connection limits of the HTTP phase, and the small message
limit before WELCOME.  Raw sockets, so that every byte is the test's."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from notifyd import config
from notifyd.bindings import Bindings
from notifyd.node import make_router
from notifyd.router import Policy
from notifyd.testing import FakeBinder
from notifyd.websocket import ConnectionGate, WampServerFactory
from tests.harness import ROOT, hello, raw_peer, with_timeout

WEB = ROOT / "web"
PAGE = ["/", "/index.html", "/demo.js", "/demo.css", "/notifyd.js", "/vendor/autobahn.min.js"]


# -- raw HTTP ------------------------------------------------------------------------
def http(port: int, raw: bytes, limit: int = 4 << 20) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw``; the status, headers and body (at most ``limit`` bytes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(raw)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status == 101:
            return status, headers, b""
        want = int(headers.get("content-length", limit))
        while len(body) < min(want, limit):
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            body += chunk
        return status, headers, body


def get(port: int, path: str, *headers: str, method: str = "GET") -> tuple[int, dict, bytes]:
    extra = "".join(h + "\r\n" for h in headers)
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{extra}\r\n"
    )
    return http(port, request.encode("latin-1"))


def upgrade(port: int, origin: str | None = None, host: str | None = None, path: str = "/ws"):
    """A WebSocket opening handshake; the response status."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host or f'127.0.0.1:{port}'}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: wamp.2.json",
    ]
    if origin is not None:
        lines.append(f"Origin: {origin}")
    return http(port, ("\r\n".join(lines) + "\r\n\r\n").encode())[0]


class Held(Protocol):
    """A TCP connection the test holds open; ``lost`` fires when it closes."""

    def __init__(self, first: bytes = b"") -> None:
        self.first = first
        self.received = b""
        self.lost: Deferred = Deferred()

    def connectionMade(self) -> None:
        if self.first:
            self.transport.write(self.first)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


def hold(port: int, first: bytes = b"") -> Deferred:
    return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Held(first))


PARTIAL = b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # headers never finished


# -- 1. static files --------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_static_files_one_range_page_assets_only_and_odd_paths_404(spawn):
    node = yield spawn.notifyd()
    port = node.port
    for path in PAGE:
        status, headers, body = yield deferToThread(get, port, path)
        assert status == 200, path
        name = "index.html" if path == "/" else path.lstrip("/")
        assert body == (WEB / name).read_bytes(), path
    size = (WEB / "vendor/autobahn.min.js").stat().st_size

    # 1,000 ranges: the whole file once (200), not a thousand copies
    many = "Range: bytes=" + ",".join(["0-"] * 1000)
    status, headers, body = yield deferToThread(get, port, "/vendor/autobahn.min.js", many)
    assert status == 200 and int(headers["content-length"]) == size and len(body) == size
    # one range still works
    status, headers, body = yield deferToThread(get, port, "/demo.js", "Range: bytes=0-9")
    assert status == 206 and body == (WEB / "demo.js").read_bytes()[:10]

    # not page assets, or odd paths: 404, never 500
    for path in [
        "/README.md",
        "/index.html%00.js",
        "/%00",
        "/demo.js%0a",
        "/x%ff.js",
        "/vendor",
        "/vendor/",
        "/.git",
        "/%2e%2e/setup.py",
        "/..%2fsetup.py",
        "/index.html/x",
    ]:
        status, headers, body = yield deferToThread(get, port, path)
        assert status == 404, (path, status)
    assert node.count("Traceback|Unhandled Error") == 0

    # no request bodies: 413 and closed
    status, _, _ = yield deferToThread(
        get, port, "/", "Content-Length: 3", "Content-Type: text/plain", method="POST"
    )
    assert status == 413


@pytest_twisted.inlineCallbacks
def test_a_web_root_serves_page_assets_only(spawn, tmp_path):
    root = tmp_path / "site"
    (root / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<p>hi</p>")
    (root / "app.js").write_text("1")
    (root / "sub" / "icon.svg").write_text("<svg/>")
    for name in ["notes.md", ".env", "config.json", "backup.tar", "sub/.hidden.js", "Makefile"]:
        (root / name).write_text("secret")
    (root / ".git").mkdir()
    (root / ".git" / "x.js").write_text("secret")
    outside = tmp_path / "outside.js"
    outside.write_text("secret")
    (root / "link.js").symlink_to(outside)
    node = yield spawn.notifyd("--web-root", str(root))
    for path in ["/", "/app.js", "/sub/icon.svg"]:
        assert (yield deferToThread(get, node.port, path))[0] == 200, path
    for path in [
        "/notes.md",
        "/.env",
        "/config.json",
        "/backup.tar",
        "/sub/.hidden.js",
        "/Makefile",
        "/.git/x.js",
        "/link.js",
        "/sub",
    ]:
        status, _, body = yield deferToThread(get, node.port, path)
        assert status == 404 and b"secret" not in body, path


# -- 2. exact paths, status-only public /readyz ------------------------------------------
@pytest_twisted.inlineCallbacks
def test_exact_paths_and_a_status_only_public_readyz(spawn):
    node = yield spawn.notifyd()
    port = node.port
    status, _, body = yield deferToThread(get, port, "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True}
    assert (yield deferToThread(get, port, "/metrics"))[0] == 200
    assert (yield deferToThread(get, port, "/healthz"))[0] == 200
    for path in ["/metrics/", "/metrics/x", "/readyz/", "/readyz/x", "/healthz/", "/ws/", "/ws/x"]:
        status, _, body = yield deferToThread(get, port, path)
        assert status == 404, path
        assert b"notifyd_" not in body and b"sessions" not in body, path

    admin = yield spawn.notifyd("--admin-listen", "tcp:0:interface=127.0.0.1")
    admin_port = int((yield admin.wait_line(r"admin listening on 127\.0\.0\.1:(\d+)")).group(1))
    status, _, body = yield deferToThread(get, admin_port, "/readyz")
    details = json.loads(body)
    assert status == 200 and details["ready"] is True and "sessions" in details
    for path in ["/metrics/", "/metrics/x", "/readyz/", "/x"]:
        assert (yield deferToThread(get, admin_port, path))[0] == 404, path


@pytest_twisted.inlineCallbacks
def test_position_is_an_exact_path(spawn):
    node = yield spawn.notifyd(
        "--history", "hist.#", "--history-stream", f"notifyd.test-http-{os.getpid()}"
    )
    status, _, body = yield deferToThread(get, node.port, "/position")
    assert status == 200 and b'"position"' in body  # chunked
    for path in ["/position/", "/position/x"]:
        assert (yield deferToThread(get, node.port, path))[0] == 404, path


# -- 3. no version banners -------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_no_version_banners(spawn):
    node = yield spawn.notifyd()
    seen = []
    for path in ["/", "/readyz", "/nope", "/ws", "/index.html%00.js"]:
        status, headers, body = yield deferToThread(get, node.port, path)
        assert headers["server"] == "notifyd", path
        seen.append(json.dumps(headers))
        if path != "/":  # the page itself loads vendor/autobahn.min.js
            seen.append(body.decode("utf-8", "replace"))
    status, headers, body = yield deferToThread(get, node.port, "/ws")
    assert status == 426 and headers["upgrade"].lower() == "websocket"
    key = base64.b64encode(os.urandom(16)).decode()
    raw = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
    )
    status, headers, _ = yield deferToThread(http, node.port, raw.encode())
    assert status == 101 and headers["server"] == "notifyd"
    seen.append(json.dumps(headers))
    text = "\n".join(seen).lower()
    assert "twisted" not in text and "autobahn" not in text


# -- 4. the Origin rule ---------------------------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_default_origin_rule_is_the_connection_itself_never_host(spawn):
    node = yield spawn.notifyd()
    port = node.port
    cases = [
        (None, None, 101),  # not a browser
        (f"http://127.0.0.1:{port}", None, 101),
        (f"http://localhost:{port}", None, 101),
        (f"https://127.0.0.1:{port}", None, 403),  # the connection is not TLS
        ("http://127.0.0.1", None, 403),  # port 80
        (f"http://127.0.0.2:{port}", None, 403),
        # DNS rebinding: a name that resolves here, Host to match; refused
        (f"http://rebound.example:{port}", f"rebound.example:{port}", 403),
        ("null", None, 403),
        ("file://", None, 403),
        (f"http://127.0.0.1:{port}/x", None, 403),
    ]
    for origin, host, want in cases:
        got = yield deferToThread(upgrade, port, origin, host)
        assert got == want, (origin, host, got)


@pytest_twisted.inlineCallbacks
def test_configured_origins_compare_scheme_host_and_port(spawn):
    node = yield spawn.notifyd(
        "--allowed-origins",
        "https://app.example.com",
        "--allowed-origins",
        "http://*.example.net:8080",
    )
    cases = [
        ("https://app.example.com", 101),
        ("https://app.example.com:443", 101),
        ("https://APP.example.com", 101),
        ("http://app.example.com", 403),  # scheme
        ("https://app.example.com:8443", 403),  # port
        ("https://app.example.com.evil.org", 403),
        ("http://a.example.net:8080", 101),
        ("http://a.example.net", 403),
        ("https://a.example.net:8080", 403),
        (f"http://127.0.0.1:{node.port}", 403),  # only the list counts
        ("null", 403),
    ]
    for origin, want in cases:
        got = yield deferToThread(upgrade, node.port, origin)
        assert got == want, (origin, got)


def test_origin_rule_unit():
    bindings = Bindings()
    router = make_router(Policy(allow_anonymous=True), bindings=bindings, clock=Clock())
    f = WampServerFactory(router, clock=Clock())
    assert f.origin_allowed("https://127.0.0.1:8443", ("127.0.0.1", 8443), True)
    assert not f.origin_allowed("http://127.0.0.1:8443", ("127.0.0.1", 8443), True)
    assert f.origin_allowed("http://[::1]:80", ("::1", 80), False)
    assert f.origin_allowed("http://127.0.0.1:80", ("::ffff:127.0.0.1", 80), False)
    assert f.origin_allowed("http://localhost:80", ("::1", 80), False)
    assert not f.origin_allowed("http://localhost:80", ("10.0.0.5", 80), False)
    assert f.origin_allowed("http://10.0.0.5:80", ("10.0.0.5", 80), False)
    assert not f.origin_allowed("http://intranet:80", ("10.0.0.5", 80), False)
    assert f.origin_allowed(None, (None, None), False)
    star = WampServerFactory(router, clock=Clock(), allowed_origins=["*"])
    assert star.origin_allowed("https://any.where:1", ("10.0.0.5", 80), False)
    assert not star.origin_allowed("null", ("10.0.0.5", 80), False)


# -- 5. deadline and limits of the HTTP phase ---------------------------------------------------
@pytest_twisted.inlineCallbacks
def test_a_client_trickling_headers_is_closed_at_the_deadline(spawn):
    node = yield spawn.notifyd("--handshake-timeout", "1")
    proto = yield hold(node.port, PARTIAL)
    # a header line every 0.2 s: Twisted's idle timer would restart each time
    loop = LoopingCall(lambda: proto.transport.write(b"X-Pad: a\r\n"))
    loop.start(0.2)
    try:
        yield with_timeout(proto.lost, 20)
    finally:
        if loop.running:
            loop.stop()
    # and one that sends nothing at all
    idle = yield hold(node.port)
    yield with_timeout(idle.lost, 20)
    # a keep-alive connection: two requests answered, then idle until the deadline
    two = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2
    kept = yield hold(node.port, two)
    yield with_timeout(kept.lost, 20)
    assert kept.received.count(b"HTTP/1.1 200 OK") == 2


@pytest_twisted.inlineCallbacks
def test_http_phase_connections_count_toward_the_limits(spawn):
    node = yield spawn.notifyd(
        "--max-connections-per-address", "2", "--handshake-timeout", "60", "--hello-timeout", "60"
    )
    a = yield hold(node.port, PARTIAL)
    b = yield hold(node.port, PARTIAL)
    # both still in their HTTP phase: a third connection from this address is refused
    status, _, body = yield deferToThread(get, node.port, "/readyz")
    assert status == 503 and b"too many connections" in body
    yield node.wait_count("refused connection from 127.0.0.1: limit_per_address", 1)
    a.transport.loseConnection()
    yield with_timeout(a.lost)
    # the slot is free again; a WebSocket takes it and keeps it until it closes
    peer = yield raw_peer(node.port)
    yield hello(peer)
    assert (yield deferToThread(get, node.port, "/readyz"))[0] == 503
    peer.transport.loseConnection()
    yield with_timeout(peer.closed)
    b.transport.loseConnection()
    yield with_timeout(b.lost)
    for _ in range(2):
        peer = yield raw_peer(node.port)
        assert peer.state == peer.STATE_OPEN

    total = yield spawn.notifyd("--max-connections", "1", "--handshake-timeout", "60")
    c = yield hold(total.port, PARTIAL)
    status, _, _ = yield deferToThread(get, total.port, "/healthz")
    assert status == 503
    yield total.wait_count("refused connection from 127.0.0.1: limit", 1)
    c.transport.loseConnection()
    yield with_timeout(c.lost)


def test_default_per_address_limit():
    assert config.load(None, {}, {}).max_connections_per_address == 100
    assert config.load(None, {}, {}).max_message_size_before_welcome == 65536


def test_gate_counts_per_address_and_releases_once():
    gate = ConnectionGate(max_connections=3, max_per_address=2)
    t1, t2, t3 = object(), object(), object()
    gate.opened(t1, "a")
    gate.opened(t2, "a")
    assert gate.refusal("a") == "limit_per_address" and gate.refusal("b") is None
    gate.opened(t3, "b")
    assert gate.refusal("c") == "limit"
    gate.closed(t1)
    gate.closed(t1)  # the HTTP channel and the WebSocket may both say so
    assert len(gate) == 2 and gate.count("a") == 1 and gate.refusal("a") is None


# -- 6. small messages until WELCOME --------------------------------------------------------
def frame(payload: bytes, opcode: int = 1, length: int | None = None) -> bytes:
    """A masked client frame (``length`` may announce more than ``payload``)."""
    n = len(payload) if length is None else length
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if payload else b""
    return head + mask + body


@pytest_twisted.inlineCallbacks
def test_large_messages_only_after_welcome(spawn):
    node = yield spawn.notifyd("--max-message-size", "1048576")
    # a 100 KiB HELLO: over the limit before WELCOME, closed with 1009
    early = yield raw_peer(node.port)
    early.sendMessage(
        json.dumps([1, "realm1", {"roles": {"subscriber": {}}, "pad": "x" * 100_000}]).encode()
    )
    yield with_timeout(early.closed)
    assert early.remote_close_code == 1009
    # after WELCOME a 200 KiB message is fine (an unknown procedure: an ERROR)
    late = yield raw_peer(node.port)
    welcome = yield hello(late)
    assert welcome[0] == 2
    late.sendMessage(json.dumps([48, 7, {}, "no.such.procedure", ["x" * 200_000]]).encode())
    answer = yield late.wait_message(lambda m: m[0] == 8 and m[2] == 7)
    assert answer[4] == "wamp.error.no_such_procedure"
    assert late.state == late.STATE_OPEN


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def half_send(port: int, n: int) -> list[bytes]:
    """``n`` connections that each open a WebSocket, announce a 1 MiB frame
    and send half of it; what the server answered each (until it closed)."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
            ).encode()
        )
        socks.append(s)
    half = frame(b"x" * (512 * 1024), length=1024 * 1024)
    for s in socks:
        try:
            s.sendall(half)
        except OSError:
            pass  # the server may close before taking it all
    answers = []
    for s in socks:
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
        answers.append(data)
        s.close()
    return answers


@pytest_twisted.inlineCallbacks
def test_unauthenticated_half_sent_frames_cannot_pin_memory(spawn):
    node = yield spawn.notifyd("--max-message-size", "4194304")
    pid = node.transport.pid
    before = rss_kib(pid)
    answers = yield deferToThread(half_send, node.port, 60)
    for data in answers:
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        # a close frame with 1009 (message too big), then the server hung up
        assert rest[:1] == b"\x88" and struct.unpack("!H", rest[2:4])[0] == 1009
    # 60 x 512 KiB would be 30 MiB held; a generous bound, not timed
    assert rss_kib(pid) - before < 16 * 1024, (before, rss_kib(pid))


def test_closed_connections_drop_their_receive_buffers():
    bindings = Bindings()
    bindings.attach(FakeBinder(auto=True))
    router = make_router(Policy(allow_anonymous=True), bindings=bindings, clock=Clock())
    factory = WampServerFactory(router, clock=Clock(), max_message_size=1 << 20)
    proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5555))
    proto.makeConnection(transport)
    key = base64.b64encode(os.urandom(16)).decode()
    proto.dataReceived(
        (
            "GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
        ).encode()
    )
    assert transport.value().startswith(b"HTTP/1.1 101")
    assert proto.maxMessagePayloadSize == 64 * 1024  # before WELCOME
    proto.dataReceived(frame(b"y" * 30000, length=60000))  # half of a frame under the limit
    assert not transport.disconnecting
    held = sum(len(c) for c in proto.frame_data or []) + len(proto.data)
    assert held >= 30000
    proto.connectionLost(Failure(ConnectionDone()))
    assert proto.data == b"" and proto.frame_data is None and proto.message_data is None
