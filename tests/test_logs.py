"""Logs escape control, bidi and separator characters and lone surrogates,
and never drop a line (finding 7 of issue 11): unit tests of the escaping and
of both outputs, then a real notifyd whose log lines carry what a backend
sent."""

from __future__ import annotations

import io
import json

import pytest
import pytest_twisted
from twisted.logger import (
    LogLevel,
    LogPublisher,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import logfile
from twisted.python.failure import Failure

from notifyd.logs import JsonLines, Logger, escape, escape_event, escape_value
from tests.harness import hello, raw_peer

HOSTILE = "acct.\x1b[31m\u202e.\ud800"
ESCAPED = "acct.\\x1b[31m\\u202e.\\ud800"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\nb\rc\td\x00e\x7f", "a\\x0ab\\x0dc\\x09d\\x00e\\x7f"),
        ("\x85\x9b", "\\x85\\x9b"),  # C1: NEL, CSI
        ("\u202a\u202b\u202c\u202d\u202e", "\\u202a\\u202b\\u202c\\u202d\\u202e"),
        ("\u2066\u2067\u2068\u2069", "\\u2066\\u2067\\u2068\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        ("\u2028\u2029", "\\u2028\\u2029"),
        ("\ud800\udfff", "\\ud800\\udfff"),
        ("é 日本 ß ✓ 🙂", "é 日本 ß ✓ 🙂"),
        ("back\\slash", "back\\slash"),
        ("", ""),
    ],
)
def test_escape(raw, shown):
    assert escape(raw) == shown
    # idempotent: an escaped text is left as it is
    assert escape(shown) == shown
    # nothing a terminal or an editor would act on is left
    assert all(c.isprintable() or c == " " for c in escape(raw))


def test_escape_value_keeps_safe_values_and_wraps_the_rest():
    f = Failure(ValueError("x"))
    for value in (1, 2.5, True, None, b"\x1b", [HOSTILE], {"k": HOSTILE}, f, LogLevel.info):
        assert escape_value(value) is value
    # containers print their items' repr, which escapes them already
    assert "\x1b" not in str([HOSTILE]) and "\ud800" not in str({"k": HOSTILE})
    wrapped = escape_value(ValueError(HOSTILE))
    assert str(wrapped) == ESCAPED
    assert repr(wrapped) == f"ValueError('{ESCAPED}')"
    assert f"{wrapped}" == ESCAPED
    assert wrapped.args == (HOSTILE,)  # a tuple: its str() escapes by itself


class _Holder:
    _log = Logger()


def test_logger_escapes_every_field_before_observers_see_it():
    seen: list[dict] = []
    log = Logger(namespace="test", observer=seen.append)
    log.info(
        "SUBSCRIBE {topic} by {peer} ({e}; {e!r}) {n} {raw!r}",
        topic=HOSTILE,
        peer="tcp4:127.0.0.1:1\u2028forged line",
        e=KeyError(HOSTILE),
        n=3,
        raw=b"\x1b",
    )
    (event,) = seen
    assert event["topic"] == ESCAPED
    assert event["n"] == 3 and event["raw"] == b"\x1b"
    text = formatEvent(event)
    assert text == (
        f"SUBSCRIBE {ESCAPED} by tcp4:127.0.0.1:1\\u2028forged line "
        f"('{ESCAPED}'; KeyError('{ESCAPED}')) 3 b'\\x1b'"
    )
    assert text.isprintable()
    # failure(): the failure is kept as it is, the fields escaped
    seen.clear()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.failure("failed on {key}", key=HOSTILE)
    assert isinstance(seen[0]["log_failure"], Failure)
    assert seen[0]["key"] == ESCAPED


def test_logger_as_class_attribute_keeps_namespace_and_class():
    log = _Holder()._log
    assert isinstance(log, Logger)
    assert log.namespace == f"{__name__}._Holder"


def test_every_notifyd_module_logs_through_the_escaping_logger():
    from pathlib import Path

    import notifyd

    for path in sorted(Path(notifyd.__file__).parent.glob("*.py")):
        source = path.read_text(encoding="utf-8")
        if path.name == "logs.py":
            continue
        assert "from twisted.logger import Logger" not in source, path.name
        assert "twisted.python.log" not in source, path.name
        if "Logger()" in source:
            assert "from notifyd.logs import Logger" in source, path.name


def _strict_text_stream() -> tuple[io.BytesIO, io.TextIOWrapper]:
    raw = io.BytesIO()
    return raw, io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)


def test_text_observer_writes_the_line_holding_a_lone_surrogate(tmp_path):
    """twistd's text output (a strict UTF-8 stdout, or its LogFile) drops a
    line with a lone surrogate in it; through Logger it is written."""
    raw, stream = _strict_text_stream()
    log_file = logfile.LogFile.fromFullPath(str(tmp_path / "notifyd.log"))
    publisher = LogPublisher(textFileLogObserver(stream), textFileLogObserver(log_file))
    log = Logger(namespace="notifyd.test", observer=publisher)
    log.info("before")
    log.info("binding added: {key}", key=HOSTILE)
    log.info("after")
    log_file.flush()
    for data in (raw.getvalue(), (tmp_path / "notifyd.log").read_bytes()):
        text = data.decode("utf-8")
        lines = [line.split("] ", 1)[1] for line in text.splitlines()]
        assert lines == ["before", f"binding added: {ESCAPED}", "after"], text
        assert "\x1b" not in text and "\u202e" not in text


def test_text_observer_drops_the_line_without_escaping():
    """The hazard the escaping removes (so the test above means something)."""
    _, stream = _strict_text_stream()
    with pytest.raises(UnicodeEncodeError):
        textFileLogObserver(stream)(
            {"log_format": "{k}", "k": HOSTILE, "log_time": 0, "log_level": LogLevel.info}
        )


def test_json_lines_write_escapes_and_never_drop_the_line():
    out = io.StringIO()
    observer = JsonLines(out)
    publisher = LogPublisher(observer)
    log = Logger(namespace="notifyd.test", observer=publisher)
    log.info("binding added: {key}", key=HOSTILE)
    # a line from another library, not through Logger: still one line
    observer({"log_format": "raw {k}", "k": HOSTILE, "log_time": 0, "log_level": LogLevel.warn})
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == f"binding added: {ESCAPED}"
    assert first["key"] == ESCAPED
    assert second["k"] == HOSTILE  # JSON escapes it itself (\u001b, \ud800)
    assert out.getvalue().isascii()


def test_escape_event_for_lines_of_other_libraries():
    event = {
        "log_format": "autobahn says {what} \ud800\n{more}",
        "what": HOSTILE,
        "more": 7,
        "log_namespace": "autobahn.x",
        "log_level": LogLevel.info,
    }
    escape_event(event)
    assert event["what"] == ESCAPED and event["more"] == 7
    # the format keeps its layout; only what a text log cannot encode goes
    assert event["log_format"] == "autobahn says {what} \\ud800\n{more}"
    _, stream = _strict_text_stream()
    textFileLogObserver(stream)(event)  # no UnicodeEncodeError


# -- end to end -----------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def _subscribe_all(node):
    peer = yield raw_peer(node.port)
    welcome = yield hello(peer)
    assert welcome[0] == 2, welcome
    peer.sendMessage(json.dumps([32, 1, {"match": "prefix"}, ""]).encode())
    yield peer.wait_message(lambda m: m[0] == 33 and m[1] == 1)
    # a SUBSCRIBE to the hostile topic is refused (nothing of it is bound)
    peer.sendMessage(json.dumps([32, 2, {}, HOSTILE]).encode())
    err = yield peer.wait_message(lambda m: m[0] == 8 and m[2] == 2)
    assert err[4] == "wamp.error.invalid_uri", err
    return peer


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_notifyd_logs_what_a_backend_sent_escaped(spawn, publisher, log_format):
    """A real notifyd (text: what twistd writes; json: JsonLines) logs the
    rejected messages' routing key and header name escaped, and every line
    is there: the good event after them is delivered and logged around."""
    node = yield spawn.notifyd("--log-format", log_format)
    peer = yield _subscribe_all(node)
    publisher.publish("bad.\x1b[31m\u202e", {"seq": 1})
    publisher.publish("bad.header", {"seq": 2}, headers={"wamp-\x1b[31m\u202e": "x"})
    # not UTF-8 (a CESU-encoded surrogate): pika hands it over as bytes
    publisher.channel.basic_publish(publisher.exchange, b"bad.\xed\xa0\x80", b"{}")
    publisher.publish("good.one", {"seq": 3})
    ev = yield peer.wait_message(lambda m: m[0] == 36)
    assert ev[4] == [{"seq": 3}], ev
    yield node.wait_count("rejected AMQP message on", 3)
    lines = [line for line in node.lines if "rejected AMQP message on" in line]
    assert len(lines) == 3, node.lines
    text = "\n".join(node.lines)
    assert "\x1b" not in text and "\u202e" not in text and "\ufffd" not in text
    if log_format == "json":
        records = [json.loads(line) for line in lines]
        messages = [r["message"] for r in records]
        assert records[0]["key"] == "bad.\\x1b[31m\\u202e"
    else:
        messages = [line.split("] ", 1)[1] for line in lines]
    assert messages[0].startswith("rejected AMQP message on bad.\\x1b[31m\\u202e: ")
    assert messages[1].startswith("rejected AMQP message on bad.header: ")
    assert "wamp-\\x1b[31m\\u202e" in messages[1]
    assert messages[2].startswith("rejected AMQP message on b'bad.\\xed\\xa0\\x80': ")
    assert node.count("Temporarily disabling observer") == 0
    assert node.count("Traceback") == 0
