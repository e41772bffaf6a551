"""The direct-send write path for plain TCP connections keeps Twisted's
ordering and buffering (fakes; the end-to-end tests use real sockets)."""

from __future__ import annotations

import pytest

from notifyd import compat


class Sock:
    def __init__(self, takes):
        self.takes = takes  # bytes the socket accepts per send, or an exception
        self.sent = b""

    def send(self, data):
        if isinstance(self.takes, Exception):
            raise self.takes
        chunk = bytes(data[: self.takes])
        self.sent += chunk
        return len(chunk)


class Transport:
    def __init__(self, takes, buffered=b""):
        self.socket = Sock(takes)
        self.TLS = False
        self.dataBuffer = buffered
        self._tempDataBuffer = []
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.written = b""

    def write(self, data):
        self.written += bytes(data)


@pytest.fixture(autouse=True)
def plain_tcp(monkeypatch):
    monkeypatch.setattr(compat, "TCP_SERVER", Transport)


def test_a_socket_that_takes_everything_is_written_once():
    t = Transport(takes=100)
    compat.fast_write(t, b"frame")
    assert t.socket.sent == b"frame" and t.written == b""


def test_the_rest_of_a_partial_send_is_buffered_in_order():
    t = Transport(takes=2)
    compat.fast_write(t, b"frame")
    assert t.socket.sent == b"fr" and t.written == b"ame"


@pytest.mark.parametrize("error", [BlockingIOError(), ConnectionResetError()])
def test_errors_leave_the_data_to_twisted(error):
    t = Transport(takes=error)
    compat.fast_write(t, b"frame")
    assert t.written == b"frame"


def test_nothing_overtakes_data_twisted_still_holds():
    t = Transport(takes=100, buffered=b"older")
    compat.fast_write(t, b"newer")
    assert t.socket.sent == b"" and t.written == b"newer"
    t = Transport(takes=100)
    t._tempDataBuffer = [b"older"]
    compat.fast_write(t, b"newer")
    assert t.socket.sent == b"" and t.written == b"newer"
    t = Transport(takes=100)
    t.disconnecting = True
    compat.fast_write(t, b"late")
    assert t.socket.sent == b"" and t.written == b"late"


def test_other_transports_always_take_the_normal_path():
    class TLS(Transport):
        pass

    t = TLS(takes=100)
    compat.fast_write(t, b"frame")
    assert t.socket.sent == b"" and t.written == b"frame"


def test_a_tls_connection_always_goes_through_twisted():
    t = Transport(takes=100)
    t.TLS = True
    compat.fast_write(t, b"frame")
    assert t.socket.sent == b"" and t.written == b"frame"


def test_without_the_private_details_every_write_goes_through_twisted(monkeypatch):
    monkeypatch.setattr(compat, "TCP_SERVER", None)
    t = Transport(takes=100)
    compat.fast_write(t, b"frame")
    assert t.socket.sent == b"" and t.written == b"frame"
