"""
The table of notifyd's settings: one :class:`Setting` per key, with its type,
default, help text and check.

Every setting has a config-file key (TOML, ``key = value``), a ``twistd
notifyd`` flag (``--key-with-dashes``) and an environment variable
(``NOTIFYD_KEY``).  :mod:`notifyd.config` reads them from those sources,
``notifyd.tap`` builds the flags, and ``docs/configuration.md`` is generated
from :data:`SETTINGS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from notifyd import checks

ENV_PREFIX = "NOTIFYD_"


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
        checks.amqp_urls,
    ),
    Setting(
        "exchange",
        str,
        "events",
        "Topic exchange the events are published to.",
        checks.exchange,
    ),
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
        checks.endpoints,
    ),
    Setting(
        "workers",
        str,
        "1",
        "Worker processes, each a full node sharing the listen sockets: a number, or "
        "auto (one per CPU core this process may use). More than 1 needs admin_listen "
        "(the parent serves /metrics, /readyz and /healthz for all workers) and tcp: "
        "listen endpoints (terminate TLS in front).",
        checks.workers,
    ),
    Setting("realm", str, "realm1", "The WAMP realm clients join.", checks.realm),
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
        checks.prefixes,
    ),
    Setting(
        "authz_file",
        str,
        None,
        "TOML file with the roles' subscribe/publish rules and the wampcra users "
        "(see docs/security.md). Required with JWT tickets.",
        checks.file,
        optional=True,
    ),
    Setting(
        "jwt_secret_file",
        str,
        None,
        "File holding the HMAC secret (32+ bytes) for HS256/384/512 tickets.",
        checks.file,
        optional=True,
    ),
    Setting(
        "jwt_public_key_file",
        str,
        None,
        "PEM public key for RS*/PS*/ES*/EdDSA tickets.",
        checks.file,
        optional=True,
    ),
    Setting(
        "jwks_file",
        str,
        None,
        "JWKS file (keys chosen by the token's kid) for RS*/PS*/ES*/EdDSA tickets.",
        checks.file,
        optional=True,
    ),
    Setting(
        "jwt_algorithm",
        list,
        [],
        "Accepted JWT algorithm (repeatable), e.g. HS256 or RS256; never taken from the token.",
        checks.algorithms,
    ),
    Setting("jwt_audience", str, None, "Required aud claim of tickets.", optional=True),
    Setting("jwt_issuer", str, None, "Required iss claim of tickets.", optional=True),
    Setting(
        "jwt_leeway",
        float,
        30.0,
        "Clock skew allowed when checking exp/nbf/iat, in seconds.",
        checks.between(0, 300),
    ),
    Setting(
        "jwt_role_claim",
        str,
        "role",
        "Ticket claim that holds the WAMP authrole.",
        checks.claim,
    ),
    Setting(
        "jwt_default_role",
        str,
        "user",
        "authrole of tickets without the role claim.",
        checks.role,
    ),
    Setting(
        "jwt_extra_claims",
        list,
        ["account"],
        "Ticket claims copied into authextra (usable in rules as {authextra.NAME}).",
        checks.claims,
    ),
    Setting(
        "allowed_origins",
        list,
        [],
        "Origins allowed to open the WebSocket (repeatable; scheme, host and port compared; "
        "'*' for any; patterns like https://*.example.com). Empty: only the connection's own "
        "scheme://IP:port (or localhost on loopback); a deployment reached by a DNS name "
        "must list its origins.",
        checks.origins,
    ),
    Setting(
        "binding_compaction",
        int,
        256,
        "Bind a group of topics (their first word, e.g. user.#) once when this node "
        "holds more than this many binding keys in it, and filter locally; split it "
        "again below half (docs/scaling.md). 0: one binding per key.",
        checks.compaction,
    ),
    Setting(
        "prefetch",
        int,
        256,
        "AMQP prefetch: deliveries in flight between RabbitMQ and this node.",
        checks.between(1, 65535),
    ),
    Setting(
        "amqp_read_batch",
        float,
        0.002,
        "Seconds notifyd waits after a small read from RabbitMQ (under 16 KiB) before "
        "reading again, so that the deliveries arriving meanwhile are handled in one "
        "batch: less CPU per event under load, at most this much more latency per hop "
        "(a logged topic's event takes three: ingest, its confirm, the log). 0: read "
        "at once.",
        checks.between(0, 0.1),
    ),
    Setting(
        "max_message_size",
        int,
        1048576,
        "Largest WebSocket message accepted and largest AMQP body delivered, in bytes.",
        checks.between(1024, 64 * 1024 * 1024),
    ),
    Setting(
        "dead_letter_exchange",
        str,
        None,
        "Dead-letter exchange for rejected AMQP messages (set on this node's queue).",
        checks.exchange,
        optional=True,
    ),
    Setting(
        "amqp_max_retry_delay",
        float,
        10.0,
        "Longest wait between RabbitMQ reconnection attempts, in seconds.",
        checks.between(0.1, 3600),
    ),
    Setting(
        "admin_listen",
        list,
        [],
        "Endpoint for /healthz, /readyz and /metrics (repeatable). Empty: they are "
        "served on the public listen endpoints.",
        checks.endpoints_or_none,
    ),
    Setting(
        "log_format",
        str,
        "text",
        "Log output: text (human-readable) or json (one JSON object per line).",
        checks.one_of("text", "json"),
    ),
    Setting(
        "log_level",
        str,
        "info",
        "Lowest level of notifyd's own log lines: debug (adds every binding change), "
        "info, warn or error.",
        checks.one_of("debug", "info", "warn", "error"),
    ),
    Setting(
        "max_connections",
        int,
        10000,
        "Most connections this node holds open on its listen endpoints, HTTP and "
        "WebSocket, counted from accept (0: no limit).",
        checks.between(0, 10_000_000),
    ),
    Setting(
        "max_connections_per_address",
        int,
        100,
        "Most connections from one remote address, HTTP and WebSocket (0: no limit). "
        "Behind a proxy every connection comes from the proxy: set 0 (or the proxy's "
        "share) there.",
        checks.between(0, 10_000_000),
    ),
    Setting(
        "max_subscriptions_per_session",
        int,
        200,
        "Most subscriptions one session may hold.",
        checks.between(1, 1_000_000),
    ),
    Setting(
        "max_outbound_buffer",
        int,
        1048576,
        "Bytes a session may have waiting to be written once its socket is full; a "
        "client that falls further behind is disconnected.",
        checks.between(1024, 1024 * 1024 * 1024),
    ),
    Setting(
        "handshake_timeout",
        float,
        10.0,
        "Seconds a connection may take, from accept (or its previous response), to send an "
        "HTTP request and have it answered or upgraded to a WebSocket; also the limit for "
        "the WebSocket opening handshake.",
        checks.between(0.1, 600),
    ),
    Setting(
        "hello_timeout",
        float,
        10.0,
        "Seconds to send HELLO (and authenticate) after the WebSocket opened.",
        checks.between(0.1, 600),
    ),
    Setting(
        "auto_ping_interval",
        float,
        25.0,
        "Seconds between WebSocket pings to each client (0: no pings).",
        checks.between(0, 3600),
    ),
    Setting(
        "auto_ping_timeout",
        float,
        10.0,
        "Seconds to wait for a pong before closing a dead connection.",
        checks.between(0.1, 3600),
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
        checks.between(1024, 64 * 1024 * 1024),
    ),
    Setting(
        "testee_listen",
        list,
        [],
        "Endpoint for a WebSocket echo service with notifyd's WebSocket options, for "
        "conformance suites (off by default; never expose it).",
        checks.endpoints_or_none,
    ),
    Setting(
        "shutdown_timeout",
        float,
        5.0,
        "On stop, how long to wait for clients to answer GOODBYE before dropping them, in seconds.",
        checks.between(0, 600),
    ),
    Setting(
        "presence",
        bool,
        False,
        "Publish session joins and leaves and a node heartbeat with the node's "
        "sessions to presence_exchange (docs/presence.md).",
    ),
    Setting(
        "presence_exchange",
        str,
        "notifyd.presence",
        "Topic exchange presence messages go to (declared durable).",
        checks.exchange,
    ),
    Setting(
        "presence_claims",
        list,
        [],
        "authextra claims published with each session's presence (repeatable; "
        "default: none: only session id, authid and authrole).",
        checks.claims,
    ),
    Setting(
        "presence_heartbeat",
        float,
        10.0,
        "Seconds between a node's presence heartbeats; a consumer drops a node "
        "silent for three of them.",
        checks.between(1, 3600),
    ),
    Setting(
        "receipts",
        bool,
        False,
        "Publish delivery receipts for events with notifyd-receipt or "
        "notifyd-fallback-after, and decide their undelivered fallback "
        "(docs/presence.md).",
    ),
    Setting(
        "receipts_exchange",
        str,
        "notifyd.receipts",
        "Topic exchange receipts go to, keyed by message_id (declared durable; "
        "also names the <exchange>.waits exchange and <exchange>.decide queue).",
        checks.exchange,
    ),
    Setting(
        "undelivered_exchange",
        str,
        "notifyd.undelivered",
        "Topic exchange an event nobody displayed within its "
        "notifyd-fallback-after goes to, once (declared durable).",
        checks.exchange,
    ),
    Setting(
        "meta_api_roles",
        list,
        [],
        "Roles that may call the meta procedures that reveal other sessions "
        "(wamp.session.count, wamp.subscription.list_subscribers) (repeatable; "
        "default: none).",
        checks.roles,
    ),
    Setting(
        "jwt_max_lifetime",
        float,
        86400.0,
        "Longest ticket lifetime accepted, in seconds: a JWT whose exp lies further "
        "ahead, or whose exp - iat is longer, is refused.",
        checks.between(1, 366 * 86400),
    ),
    Setting(
        "subscribe_rate",
        float,
        50.0,
        "SUBSCRIBEs a second one session may send on average (0: no limit); more get "
        "ERROR notifyd.error.rate_limited.",
        checks.between(0, 1_000_000),
    ),
    Setting(
        "subscribe_burst",
        int,
        100,
        "SUBSCRIBEs one session may send at once before subscribe_rate applies.",
        checks.between(1, 1_000_000),
    ),
    Setting(
        "call_rate",
        float,
        20.0,
        "CALLs a second one session may send on average (0: no limit); meta calls that "
        "walk many subscriptions count more.",
        checks.between(0, 1_000_000),
    ),
    Setting(
        "call_burst",
        int,
        40,
        "CALLs one session may send at once before call_rate applies.",
        checks.between(1, 1_000_000),
    ),
    Setting(
        "publish_rate",
        float,
        100.0,
        "PUBLISHes a second one session may send on average (0: no limit).",
        checks.between(0, 1_000_000),
    ),
    Setting(
        "publish_burst",
        int,
        200,
        "PUBLISHes one session may send at once before publish_rate applies.",
        checks.between(1, 1_000_000),
    ),
    Setting(
        "publish_log_bytes_per_second",
        int,
        65536,
        "Bytes a second one session may PUBLISH to topics kept by the event log (0: no "
        "limit), so one user cannot roll the shared log over.",
        checks.between(0, 1024 * 1024 * 1024),
    ),
    Setting(
        "publish_log_bytes_burst",
        int,
        1048576,
        "Bytes one session may PUBLISH to logged topics at once (at least "
        "max_message_size is always allowed).",
        checks.between(1024, 1024 * 1024 * 1024),
    ),
    Setting(
        "history",
        list,
        [],
        "AMQP binding key of the topics whose events are kept in the event log, a RabbitMQ "
        "stream (repeatable; e.g. 'invoice.#', '#' for all). Enables resume, "
        "wamp.subscription.get_events and retained events. Empty: no history.",
        checks.binding_keys,
    ),
    Setting(
        "history_stream",
        str,
        "notifyd.history",
        "Name of the event-log stream queue (shared by every node of the deployment).",
        checks.exchange,
    ),
    Setting(
        "history_max_age",
        str,
        "7D",
        "Keep logged events this long (RabbitMQ x-max-age: Y, M, D, h, m or s).",
        checks.age,
    ),
    Setting(
        "history_max_bytes",
        int,
        1_000_000_000,
        "Keep at most this many bytes of logged events (x-max-length-bytes).",
        checks.between(1, 2**62),
    ),
    Setting(
        "history_segment_bytes",
        int,
        50_000_000,
        "Size of one stream segment file; retention drops whole segments "
        "(x-stream-max-segment-size-bytes).",
        checks.between(1, 2**62),
    ),
    Setting(
        "history_replicas",
        int,
        0,
        "Replicas of the streams in a RabbitMQ cluster (x-initial-cluster-size; 0: "
        "RabbitMQ's default, every node).",
        checks.between(0, 64),
    ),
    Setting(
        "history_ingest_queue_type",
        str,
        "classic",
        "Queue type of the ingest queue (<history_stream>.ingest) through which events "
        "reach the event log after the same checks as live events: classic, or quorum "
        "for a RabbitMQ cluster.",
        checks.one_of("classic", "quorum"),
    ),
    Setting(
        "retained_stream",
        str,
        "notifyd.retained",
        "Name of the stream holding retained events (with history on).",
        checks.exchange,
    ),
    Setting(
        "retained_max_age",
        str,
        "30D",
        "Keep retained events this long (x-max-age of the retained stream).",
        checks.age,
    ),
    Setting(
        "history_max_events",
        int,
        1000,
        "Largest limit wamp.subscription.get_events answers.",
        checks.between(1, 1_000_000),
    ),
    Setting(
        "history_scan_limit",
        int,
        10_000,
        "Most log entries one get_events call reads looking for its subscription's events.",
        checks.between(1, 100_000_000),
    ),
    Setting(
        "history_readers",
        int,
        8,
        "Log replays (resumes, get_events) one node runs at once; more wait their turn.",
        checks.between(1, 1000),
    ),
    Setting(
        "history_memory",
        int,
        10000,
        "Newest event-log entries each node keeps in memory: resumes and get_events "
        "within them read no stream (a reconnect storm after a node dies); 0: none.",
        checks.between(0, 1000000),
    ),
    Setting(
        "web_root",
        str,
        None,
        "Directory served at / (default: the web/ folder of the source checkout).",
        checks.directory,
        optional=True,
    ),
)

BY_KEY = {s.key: s for s in SETTINGS}
