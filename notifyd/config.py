"""
notifyd's settings: one schema, three sources.

Every setting has a config-file key (TOML, ``key = value``), a ``twistd
notifyd`` flag (``--key-with-dashes``) and an environment variable
(``NOTIFYD_KEY``).  Precedence: flags > environment > file > defaults.  Values
are checked once, here, and a bad one raises :class:`ConfigError` naming the
setting and the problem.  ``docs/configuration.md`` is checked against
:data:`SETTINGS` by the test suite.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "NOTIFYD_"


class ConfigError(ValueError):
    """A setting has a value notifyd cannot use."""


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


# -- validators -----------------------------------------------------------------
def _amqp_url(value: str) -> str:
    import pika

    if not re.match(r"amqps?://", value):
        raise ConfigError("must be an amqp:// or amqps:// URL")
    try:
        pika.URLParameters(value)
    except Exception as e:
        raise ConfigError(f"is not a valid AMQP URL ({e})")
    return value


def _amqp_urls(values: list[str]) -> list[str]:
    if not values:
        raise ConfigError("needs at least one URL")
    return [_amqp_url(v) for v in values]


def _binding_keys(values: list[str]) -> list[str]:
    for v in values:
        if not re.fullmatch(r"(?:[^\s.#*]+|\*|#)(?:\.(?:[^\s.#*]+|\*|#))*", v):
            raise ConfigError(
                f"{v!r} is not an AMQP binding key such as 'invoice.#', 'account.*.sent' or '#'"
            )
    return values


def _age(value: str) -> str:
    if not re.fullmatch(r"\d+[YMDhms]", value):
        raise ConfigError("must be a number and a unit: Y, M, D, h, m or s (e.g. '7D', '12h')")
    return value


_AGE_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}


def age_seconds(value: str) -> float:
    """A RabbitMQ age such as ``7D`` or ``12h`` in seconds (M: 30 days)."""
    return float(int(value[:-1]) * _AGE_UNITS[value[-1]])


def _exchange(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:\-]{1,255}", value):
        raise ConfigError("must be 1-255 characters of letters, digits, '-', '_', '.' or ':'")
    return value


def _realm(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z\d_\-@.]{2,254}", value):
        raise ConfigError("must start with a letter and have 3-255 letters, digits or _-@.")
    return value


def _endpoints(values: list[str]) -> list[str]:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    if not values:
        raise ConfigError("needs at least one endpoint")
    for v in values:
        try:
            serverFromString(reactor, v)
        except Exception as e:
            raise ConfigError(
                f"{v!r} is not a listening endpoint such as 'tcp:8080:interface=127.0.0.1' ({e})"
            )
    return values


def _endpoints_or_none(values: list[str]) -> list[str]:
    return _endpoints(values) if values else values


def _one_of(*choices: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if value not in choices:
            raise ConfigError(f"must be one of {', '.join(choices)}")
        return value

    return check


def _prefixes(values: list[str]) -> list[str]:
    for v in values:
        if v != "*" and not re.fullmatch(r"[^\s#*]+", v):
            raise ConfigError(f"{v!r} is not a topic prefix (or '*' for every topic)")
    return values


def _file(value: str | None) -> str | None:
    if value is not None and not Path(value).is_file():
        raise ConfigError(f"{value!r} is not a readable file")
    return value


def _algorithms(values: list[str]) -> list[str]:
    from notifyd.auth import ALGORITHMS

    for v in values:
        if v not in ALGORITHMS:
            raise ConfigError(f"{v!r} is not one of {', '.join(sorted(ALGORITHMS))}")
    return values


def _origins(values: list[str]) -> list[str]:
    for v in values:
        if v != "*" and not re.fullmatch(r"https?://[A-Za-z0-9*.\-]+(:\d+|:\*)?", v):
            raise ConfigError(
                f"{v!r} is not an origin such as 'https://app.example.com', "
                "'https://*.example.com' or '*'"
            )
    return values


def _claim(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}", value):
        raise ConfigError("must be a claim name (letters, digits, _ and -)")
    return value


def _role(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_\-]{1,64}", value):
        raise ConfigError("must be a role name (letters, digits, _ and -)")
    return value


def _each(check: Callable[[str], str]) -> Callable[[list[str]], list[str]]:
    """A list validator that applies ``check`` to every item."""

    def check_all(values: list[str]) -> list[str]:
        for v in values:
            check(v)
        return values

    return check_all


_roles = _each(_role)
_claims = _each(_claim)


def _range(lo: float, hi: float) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not lo <= value <= hi:
            raise ConfigError(f"must be between {lo} and {hi}")
        return value

    return check


def _directory(value: str | None) -> str | None:
    if value is not None and not Path(value).is_dir():
        raise ConfigError(f"{value!r} is not a directory")
    return value


# -- the schema ----------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One setting: its key, type, default, help and validator."""

    key: str
    kind: type
    default: Any
    help: str
    check: Callable[[Any], Any] | None = None
    optional: bool = False

    @property
    def flag(self) -> str:
        return self.key.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "amqp_url",
        list,
        ["amqp://guest:guest@127.0.0.1:5672/%2F"],
        "RabbitMQ URL (amqp:// or amqps://). Repeat it for the nodes of a cluster: "
        "notifyd uses one and moves to the next when it fails.",
        _amqp_urls,
    ),
    Setting("exchange", str, "events", "Topic exchange the events are published to.", _exchange),
    Setting(
        "exchange_passive",
        bool,
        False,
        "Use an existing exchange as it is (passive declare) instead of declaring it.",
    ),
    Setting(
        "listen",
        list,
        ["tcp:8080:interface=127.0.0.1"],
        "Endpoint to serve the page, /ws, /healthz and /readyz on (repeatable).",
        _endpoints,
    ),
    Setting("realm", str, "realm1", "The WAMP realm clients join.", _realm),
    Setting(
        "allow_anonymous",
        bool,
        False,
        "Let clients join without authentication (off by default).",
    ),
    Setting(
        "allow_publish",
        list,
        [],
        "Topic prefix clients may PUBLISH to (repeatable; '*' for every topic). "
        "Client publishing is off by default.",
        _prefixes,
    ),
    Setting(
        "authz_file",
        str,
        None,
        "TOML file with the roles' subscribe/publish rules and the wampcra users "
        "(see docs/security.md). Required with JWT tickets.",
        _file,
        optional=True,
    ),
    Setting(
        "jwt_secret_file",
        str,
        None,
        "File holding the HMAC secret (32+ bytes) for HS256/384/512 tickets.",
        _file,
        optional=True,
    ),
    Setting(
        "jwt_public_key_file",
        str,
        None,
        "PEM public key for RS*/PS*/ES*/EdDSA tickets.",
        _file,
        optional=True,
    ),
    Setting(
        "jwks_file",
        str,
        None,
        "JWKS file (keys chosen by the token's kid) for RS*/PS*/ES*/EdDSA tickets.",
        _file,
        optional=True,
    ),
    Setting(
        "jwt_algorithm",
        list,
        [],
        "Accepted JWT algorithm (repeatable), e.g. HS256 or RS256; never taken from the token.",
        _algorithms,
    ),
    Setting("jwt_audience", str, None, "Required aud claim of tickets.", optional=True),
    Setting("jwt_issuer", str, None, "Required iss claim of tickets.", optional=True),
    Setting(
        "jwt_leeway",
        float,
        30.0,
        "Clock skew allowed when checking exp/nbf/iat, in seconds.",
        _range(0, 300),
    ),
    Setting("jwt_role_claim", str, "role", "Ticket claim that holds the WAMP authrole.", _claim),
    Setting(
        "jwt_default_role",
        str,
        "user",
        "authrole of tickets without the role claim.",
        _role,
    ),
    Setting(
        "jwt_extra_claims",
        list,
        ["account"],
        "Ticket claims copied into authextra (usable in rules as {authextra.NAME}).",
        _claims,
    ),
    Setting(
        "allowed_origins",
        list,
        [],
        "Origins allowed to open the WebSocket (repeatable; scheme, host and port compared; "
        "'*' for any; patterns like https://*.example.com). Empty: only the connection's own "
        "scheme://IP:port (or localhost on loopback); a deployment reached by a DNS name "
        "must list its origins.",
        _origins,
    ),
    Setting(
        "prefetch",
        int,
        256,
        "AMQP prefetch: deliveries in flight between RabbitMQ and this node.",
        _range(1, 65535),
    ),
    Setting(
        "max_message_size",
        int,
        1048576,
        "Largest WebSocket message accepted and largest AMQP body delivered, in bytes.",
        _range(1024, 64 * 1024 * 1024),
    ),
    Setting(
        "dead_letter_exchange",
        str,
        None,
        "Dead-letter exchange for rejected AMQP messages (set on this node's queue).",
        _exchange,
        optional=True,
    ),
    Setting(
        "amqp_max_retry_delay",
        float,
        10.0,
        "Longest wait between RabbitMQ reconnection attempts, in seconds.",
        _range(0.1, 3600),
    ),
    Setting(
        "admin_listen",
        list,
        [],
        "Endpoint for /healthz, /readyz and /metrics (repeatable). Empty: they are "
        "served on the public listen endpoints.",
        _endpoints_or_none,
    ),
    Setting(
        "log_format",
        str,
        "text",
        "Log output: text (human-readable) or json (one JSON object per line).",
        _one_of("text", "json"),
    ),
    Setting(
        "log_level",
        str,
        "info",
        "Lowest level of notifyd's own log lines: debug (adds every binding change), "
        "info, warn or error.",
        _one_of("debug", "info", "warn", "error"),
    ),
    Setting(
        "max_connections",
        int,
        10000,
        "Most connections this node holds open on its listen endpoints, HTTP and "
        "WebSocket, counted from accept (0: no limit).",
        _range(0, 10_000_000),
    ),
    Setting(
        "max_connections_per_address",
        int,
        100,
        "Most connections from one remote address, HTTP and WebSocket (0: no limit). "
        "Behind a proxy every connection comes from the proxy: set 0 (or the proxy's "
        "share) there.",
        _range(0, 10_000_000),
    ),
    Setting(
        "max_subscriptions_per_session",
        int,
        200,
        "Most subscriptions one session may hold.",
        _range(1, 1_000_000),
    ),
    Setting(
        "max_outbound_buffer",
        int,
        1048576,
        "Bytes a session may have waiting to be written once its socket is full; a "
        "client that falls further behind is disconnected.",
        _range(1024, 1024 * 1024 * 1024),
    ),
    Setting(
        "handshake_timeout",
        float,
        10.0,
        "Seconds a connection may take, from accept (or its previous response), to send an "
        "HTTP request and have it answered or upgraded to a WebSocket; also the limit for "
        "the WebSocket opening handshake.",
        _range(0.1, 600),
    ),
    Setting(
        "hello_timeout",
        float,
        10.0,
        "Seconds to send HELLO (and authenticate) after the WebSocket opened.",
        _range(0.1, 600),
    ),
    Setting(
        "auto_ping_interval",
        float,
        25.0,
        "Seconds between WebSocket pings to each client (0: no pings).",
        _range(0, 3600),
    ),
    Setting(
        "auto_ping_timeout",
        float,
        10.0,
        "Seconds to wait for a pong before closing a dead connection.",
        _range(0.1, 3600),
    ),
    Setting(
        "compression",
        bool,
        False,
        "Offer permessage-deflate (costs CPU and disables shared pre-built frames).",
    ),
    Setting(
        "max_message_size_before_welcome",
        int,
        65536,
        "Largest WebSocket message accepted before the session is WELCOMEd (HELLO, "
        "AUTHENTICATE), in bytes; max_message_size applies after.",
        _range(1024, 64 * 1024 * 1024),
    ),
    Setting(
        "testee_listen",
        list,
        [],
        "Endpoint for a WebSocket echo service with notifyd's WebSocket options, for "
        "conformance suites (off by default; never expose it).",
        _endpoints_or_none,
    ),
    Setting(
        "shutdown_timeout",
        float,
        5.0,
        "On stop, how long to wait for clients to answer GOODBYE before dropping them, in seconds.",
        _range(0, 600),
    ),
    Setting(
        "meta_api_roles",
        list,
        [],
        "Roles that may call the meta procedures that reveal other sessions "
        "(wamp.session.count, wamp.subscription.list_subscribers) (repeatable; "
        "default: none).",
        _roles,
    ),
    Setting(
        "jwt_max_lifetime",
        float,
        86400.0,
        "Longest ticket lifetime accepted, in seconds: a JWT whose exp lies further "
        "ahead, or whose exp - iat is longer, is refused.",
        _range(1, 366 * 86400),
    ),
    Setting(
        "subscribe_rate",
        float,
        50.0,
        "SUBSCRIBEs a second one session may send on average (0: no limit); more get "
        "ERROR notifyd.error.rate_limited.",
        _range(0, 1_000_000),
    ),
    Setting(
        "subscribe_burst",
        int,
        100,
        "SUBSCRIBEs one session may send at once before subscribe_rate applies.",
        _range(1, 1_000_000),
    ),
    Setting(
        "call_rate",
        float,
        20.0,
        "CALLs a second one session may send on average (0: no limit); meta calls that "
        "walk many subscriptions count more.",
        _range(0, 1_000_000),
    ),
    Setting(
        "call_burst",
        int,
        40,
        "CALLs one session may send at once before call_rate applies.",
        _range(1, 1_000_000),
    ),
    Setting(
        "publish_rate",
        float,
        100.0,
        "PUBLISHes a second one session may send on average (0: no limit).",
        _range(0, 1_000_000),
    ),
    Setting(
        "publish_burst",
        int,
        200,
        "PUBLISHes one session may send at once before publish_rate applies.",
        _range(1, 1_000_000),
    ),
    Setting(
        "publish_log_bytes_per_second",
        int,
        65536,
        "Bytes a second one session may PUBLISH to topics kept by the event log (0: no "
        "limit), so one user cannot roll the shared log over.",
        _range(0, 1024 * 1024 * 1024),
    ),
    Setting(
        "publish_log_bytes_burst",
        int,
        1048576,
        "Bytes one session may PUBLISH to logged topics at once (at least "
        "max_message_size is always allowed).",
        _range(1024, 1024 * 1024 * 1024),
    ),
    Setting(
        "history",
        list,
        [],
        "AMQP binding key of the topics whose events are kept in the event log, a RabbitMQ "
        "stream (repeatable; e.g. 'invoice.#', '#' for all). Enables resume, "
        "wamp.subscription.get_events and retained events. Empty: no history.",
        _binding_keys,
    ),
    Setting(
        "history_stream",
        str,
        "notifyd.history",
        "Name of the event-log stream queue (shared by every node of the deployment).",
        _exchange,
    ),
    Setting(
        "history_max_age",
        str,
        "7D",
        "Keep logged events this long (RabbitMQ x-max-age: Y, M, D, h, m or s).",
        _age,
    ),
    Setting(
        "history_max_bytes",
        int,
        1_000_000_000,
        "Keep at most this many bytes of logged events (x-max-length-bytes).",
        _range(1, 2**62),
    ),
    Setting(
        "history_segment_bytes",
        int,
        50_000_000,
        "Size of one stream segment file; retention drops whole segments "
        "(x-stream-max-segment-size-bytes).",
        _range(1, 2**62),
    ),
    Setting(
        "history_replicas",
        int,
        0,
        "Replicas of the streams in a RabbitMQ cluster (x-initial-cluster-size; 0: "
        "RabbitMQ's default, every node).",
        _range(0, 64),
    ),
    Setting(
        "history_ingest_queue_type",
        str,
        "classic",
        "Queue type of the ingest queue (<history_stream>.ingest) through which events "
        "reach the event log after the same checks as live events: classic, or quorum "
        "for a RabbitMQ cluster.",
        _one_of("classic", "quorum"),
    ),
    Setting(
        "retained_stream",
        str,
        "notifyd.retained",
        "Name of the stream holding retained events (with history on).",
        _exchange,
    ),
    Setting(
        "retained_max_age",
        str,
        "30D",
        "Keep retained events this long (x-max-age of the retained stream).",
        _age,
    ),
    Setting(
        "history_max_events",
        int,
        1000,
        "Largest limit wamp.subscription.get_events answers.",
        _range(1, 1_000_000),
    ),
    Setting(
        "history_scan_limit",
        int,
        10_000,
        "Most log entries one get_events call reads looking for its subscription's events.",
        _range(1, 100_000_000),
    ),
    Setting(
        "history_readers",
        int,
        8,
        "Log replays (resumes, get_events) one node runs at once; more wait their turn.",
        _range(1, 1000),
    ),
    Setting(
        "web_root",
        str,
        None,
        "Directory served at / (default: the web/ folder of the source checkout).",
        _directory,
        optional=True,
    ),
)

BY_KEY = {s.key: s for s in SETTINGS}


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
