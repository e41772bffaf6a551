"""Configuration sources, precedence and validation messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from notifyd import config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    p = tmp_path / "notifyd.toml"
    p.write_text(text)
    return str(p)


def test_defaults_are_safe():
    c = config.load(None, {}, {})
    assert c.allow_anonymous is False and c.allow_publish == []
    assert c.listen == ["tcp:8080:interface=127.0.0.1"]
    assert c.amqp_url == ["amqp://guest:guest@127.0.0.1:5672/%2F"]
    assert c.exchange == "events" and c.realm == "realm1"


def test_precedence_flags_env_file_defaults(tmp_path):
    path = write(tmp_path, 'realm = "file.realm"\nexchange = "file-ex"\nprefetch = 10\n')
    env = {"NOTIFYD_EXCHANGE": "env-ex", "NOTIFYD_PREFETCH": "20"}
    c = config.load(path, env, {"prefetch": 30})
    assert (c.realm, c.exchange, c.prefetch) == ("file.realm", "env-ex", 30)


def test_config_file_from_environment(tmp_path):
    path = write(tmp_path, 'listen = ["tcp:1:interface=127.0.0.1", "tcp:2:interface=127.0.0.1"]\n')
    c = config.load(None, {"NOTIFYD_CONFIG": path}, {})
    assert c.listen == ["tcp:1:interface=127.0.0.1", "tcp:2:interface=127.0.0.1"]


def test_environment_lists_and_flags():
    c = config.load(
        None, {"NOTIFYD_ALLOW_PUBLISH": "chat., demo.", "NOTIFYD_ALLOW_ANONYMOUS": "yes"}, {}
    )
    assert c.allow_publish == ["chat.", "demo."] and c.allow_anonymous is True


@pytest.mark.parametrize(
    "text, env, message",
    [
        ("bogus = 1\n", {}, "unknown setting 'bogus' in config file"),
        ("prefetch = 'x'\n", {}, "prefetch (in "),
        ("realm = [\n", {}, "is not valid TOML"),
        ("", {"NOTIFYD_PREFETCH": "many"}, "prefetch (from $NOTIFYD_PREFETCH) must be an integer"),
        (
            "",
            {"NOTIFYD_ALLOW_ANONYMOUS": "perhaps"},
            "allow_anonymous (from $NOTIFYD_ALLOW_ANONYMOUS) must be true or false",
        ),
        ("max_message_size = 10\n", {}, "max_message_size (in "),
        ("web_root = '/nonexistent'\n", {}, "web_root (in "),
        ("amqp_url = 'redis://x'\n", {}, "must be an amqp:// or amqps:// URL"),
    ],
)
def test_validation_messages_name_the_setting(tmp_path, text, env, message):
    with pytest.raises(config.ConfigError) as e:
        config.load(write(tmp_path, text), env, {})
    assert message in str(e.value)


def test_configuration_reference_matches_the_code():
    """docs/configuration.md lists every setting with its flag and variable."""
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert config.reference_table() in doc, (
        "regenerate: python -m notifyd.config --update docs/configuration.md"
    )
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, re.M))
    assert documented == {s.key for s in config.SETTINGS}
