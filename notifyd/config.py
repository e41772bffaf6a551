"""
Loading notifyd's settings: three sources, one :class:`Config`.

Precedence: flags > environment > file > defaults.  :func:`load` reads the
TOML config file and the ``NOTIFYD_*`` environment variables, merges them
with the flags and the defaults of :data:`notifyd.settings.SETTINGS`, and
runs every setting's check once (:mod:`notifyd.checks`); a bad value raises
:class:`ConfigError` naming the setting, where it came from and the problem.

It also writes the settings table of ``docs/configuration.md``, which the test
suite checks against :data:`SETTINGS`::

    python -m notifyd.config --update docs/configuration.md
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notifyd.checks import ConfigError, age_seconds
from notifyd.settings import BY_KEY, ENV_PREFIX, SETTINGS, Setting

__all__ = [
    "BY_KEY",
    "ENV_PREFIX",
    "SETTINGS",
    "Config",
    "ConfigError",
    "Setting",
    "age_seconds",
    "default_web_root",
    "load",
    "read_environ",
    "read_file",
    "read_toml",
    "reference_table",
    "update_reference",
]


def default_web_root() -> str | None:
    """``web/`` of a source checkout, else the web files ``pip`` installed."""
    import sys

    for candidate in (
        Path(__file__).resolve().parent.parent / "web",
        Path(sys.prefix) / "share" / "notifyd" / "web",
    ):
        if (candidate / "index.html").is_file():
            return str(candidate)
    return None


@dataclass
class Config:
    """The checked settings, as attributes."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None


# -- parsing ---------------------------------------------------------------------------
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _from_text(setting: Setting, text: str) -> Any:
    kind = setting.kind
    if kind is bool:
        t = text.strip().lower()
        if t in _TRUE:
            return True
        if t in _FALSE:
            return False
        raise ConfigError("must be true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"must be an integer, not {text!r}")
    if kind is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"must be a number, not {text!r}")
    if kind is list:
        return [v for v in re.split(r"[\s,]+", text) if v]
    return text


def _from_toml(setting: Setting, value: Any) -> Any:
    kind = setting.kind
    if kind is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("must be a list of strings")
        return value
    if kind is float and type(value) is int:
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"must be a {kind.__name__}, not {type(value).__name__}")
    return value


def _checked(setting: Setting, value: Any, source: str) -> Any:
    try:
        if value is None:
            if setting.optional:
                return None
            raise ConfigError("must be set")
        return setting.check(value) if setting.check else value
    except ConfigError as e:
        raise ConfigError(f"{setting.key} ({source}) {e}") from None


def read_toml(path: str, label: str) -> dict[str, Any]:
    """A TOML file's contents; ConfigError names ``label`` and the problem."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {label} {path}: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{label} {path} is not valid TOML: {e}")


def read_file(path: str) -> dict[str, Any]:
    """The settings in a TOML file, checked for unknown keys and types."""
    data = read_toml(path, "config file")
    values: dict[str, Any] = {}
    for key, value in data.items():
        setting = BY_KEY.get(key.replace("-", "_"))
        if setting is None:
            raise ConfigError(f"unknown setting {key!r} in config file {path}")
        try:
            values[setting.key] = _from_toml(setting, value)
        except ConfigError as e:
            raise ConfigError(f"{setting.key} (in {path}) {e}") from None
    return values


def read_environ(environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings given as ``NOTIFYD_*`` environment variables."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        if setting.env in environ:
            try:
                values[setting.key] = _from_text(setting, environ[setting.env])
            except ConfigError as e:
                raise ConfigError(f"{setting.key} (from ${setting.env}) {e}") from None
    return values


def load(
    path: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Merge defaults < file < environment < overrides (flags) and check."""
    import os

    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(ENV_PREFIX + "CONFIG") or None
    sources: dict[str, tuple[Any, str]] = {
        s.key: (s.default if s.key != "web_root" else default_web_root(), "default")
        for s in SETTINGS
    }
    if path:
        for k, v in read_file(path).items():
            sources[k] = (v, f"in {path}")
    for k, v in read_environ(env).items():
        sources[k] = (v, f"from ${BY_KEY[k].env}")
    for k, v in (overrides or {}).items():
        sources[k] = (v, f"--{BY_KEY[k].flag}")
    values = {k: _checked(BY_KEY[k], v, src) for k, (v, src) in sources.items()}
    return Config(values)


def reference_table() -> str:
    """The settings table of ``docs/configuration.md`` (kept in sync by a test).

    Regenerate with ``python -m notifyd.config --update docs/configuration.md``.
    """

    def show(value: Any) -> str:
        if value is None:
            return "(unset)"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return ", ".join(f"`{v}`" for v in value) or "(empty)"
        return f"`{value}`"

    rows = [
        "| key | flag | environment | type | default | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        default = "web/ of the checkout" if s.key == "web_root" else show(s.default)
        kind = {list: "list of strings", bool: "bool", int: "integer", float: "number"}.get(
            s.kind, "string"
        )
        rows.append(f"| `{s.key}` | `--{s.flag}` | `{s.env}` | {kind} | {default} | {s.help} |")
    return "\n".join(rows) + "\n"


def update_reference(path: str) -> None:
    """Rewrite the settings table in ``path`` (docs/configuration.md)."""
    text = Path(path).read_text()
    start = text.index("| key | flag |")
    end = text.index("\n\n", start)
    Path(path).write_text(text[:start] + reference_table().rstrip("\n") + text[end:])


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--update"]:
        update_reference(sys.argv[2])
    else:
        print(reference_table(), end="")
