"""The twistd plugin, its options and the tac file, run as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest
import pytest_twisted
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from notifyd import config
from notifyd.tap import Options
from tests.harness import BIN, ROOT, Notifyd

TWISTD = str(BIN / "twistd")


def test_plugin_is_discoverable():
    makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
    assert makers["notifyd"].options is Options


def test_options_to_overrides(monkeypatch):
    for s in config.SETTINGS:
        monkeypatch.delenv(s.env, raising=False)
    o = Options()
    o.parseOptions(
        [
            "--amqp-url",
            "amqp://u:p@10.0.0.5:5673/v",
            "--listen",
            "tcp:9000:interface=127.0.0.1",
            "--listen",
            "tcp:9001:interface=127.0.0.1",
            "--allow-publish",
            "chat.",
            "--allow-anonymous",
            "--prefetch",
            "50",
        ]
    )
    assert o.overrides() == {
        "amqp_url": ["amqp://u:p@10.0.0.5:5673/v"],
        "listen": ["tcp:9000:interface=127.0.0.1", "tcp:9001:interface=127.0.0.1"],
        "allow_publish": ["chat."],
        "allow_anonymous": True,
        "prefetch": 50,
    }
    assert o["settings"].listen == ["tcp:9000:interface=127.0.0.1", "tcp:9001:interface=127.0.0.1"]
    assert o["settings"].exchange == "events"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prefetch", "lots"], "--prefetch must be an integer, not 'lots'"),
        (["--prefetch", "0"], "prefetch (--prefetch) must be between 1 and 65535"),
        (["--amqp-url", "http://x"], "amqp_url (--amqp-url) must be an amqp:// or amqps:// URL"),
        (
            ["--listen", "carrier-pigeon:1"],
            "listen (--listen) 'carrier-pigeon:1' is not a listening endpoint",
        ),
        (["--realm", "x"], "realm (--realm) must start with a letter"),
        (["--exchange", "a b"], "exchange (--exchange) must be 1-255 characters"),
        (["--allow-publish", "a b"], "allow_publish (--allow-publish) 'a b' is not a topic prefix"),
        (["--config", "/nonexistent.toml"], "cannot read config file /nonexistent.toml"),
    ],
)
def test_bad_options_are_usage_errors(args, message):
    with pytest.raises(usage.UsageError) as e:
        Options().parseOptions(args)
    assert message in str(e.value)


def test_twistd_help_lists_every_setting():
    out = subprocess.run([TWISTD, "notifyd", "--help"], capture_output=True, text=True, check=True)
    for s in config.SETTINGS:
        assert f"--{s.flag}" in out.stdout


def test_twistd_bad_value_exits_with_message():
    out = subprocess.run(
        [TWISTD, "-n", "notifyd", "--prefetch", "-3"], capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "prefetch (--prefetch) must be between 1 and 65535" in out.stdout + out.stderr


@pytest_twisted.inlineCallbacks
def test_tac_file_runs_from_environment(spawn, rabbit, exchange, publisher):
    env = {
        "NOTIFYD_AMQP_URL": rabbit.url,
        "NOTIFYD_EXCHANGE": exchange,
        "NOTIFYD_LISTEN": "tcp:0:interface=127.0.0.1",
        "NOTIFYD_ALLOW_ANONYMOUS": "true",
    }
    node = Notifyd(rabbit.url, exchange, env=env)
    node.args = [TWISTD, "-n", "--pidfile=", "-y", str(ROOT / "notifyd.tac")]
    yield node.start()
    try:
        client = yield spawn.js(node.url)
        yield client.subscribe("s", "invoice.sent")
        publisher.publish("invoice.sent", {"ok": True})
        yield client.wait_events("s", 1)
        assert client.events("s")[0]["args"] == [{"ok": True}]
    finally:
        yield node.signal()


@pytest_twisted.inlineCallbacks
def test_config_file_and_flags(spawn, rabbit, exchange, publisher):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'amqp_url = "{rabbit.url}"\nrealm = "from.file"\nallow_anonymous = true\n')
    try:
        node = yield spawn.notifyd("--config", f.name, "--realm", "from.flag")
        client = yield spawn.js(node.url, realm="from.flag")  # the flag wins
        r = yield client.subscribe("s", "a.b")
        assert r["ev"] == "subscribed", r
        refused = yield spawn.js(node.url, realm="from.file", expect_open=False)
        r = refused.reports[-1]
        assert r["ev"] == "close" and r["details"]["reason"] == "wamp.error.no_such_realm", r
    finally:
        os.unlink(f.name)


def test_installed_copy_has_a_working_plugin(tmp_path):
    """``pip install .`` (not editable) puts a working plugin in place."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "twisted" / "plugins" / "notifyd_plugin.py").is_file()
    assert not (target / "twisted" / "plugins" / "__init__.py").exists()
    import site

    env = {**os.environ, "PYTHONPATH": f"{target}:{site.getsitepackages()[0]}"}
    code = (
        "import notifyd, sys; assert notifyd.__file__.startswith(sys.argv[1]), notifyd.__file__\n"
        "from twisted.plugin import getPlugins\n"
        "from twisted.application.service import IServiceMaker\n"
        "print(sorted(p.tapname for p in getPlugins(IServiceMaker)))\n"
    )
    # -S: no .pth files, so the editable checkout is not on sys.path
    out = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target)],
        env=env,
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        check=True,
    )
    assert "'notifyd'" in out.stdout
