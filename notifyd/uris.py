"""
Every error and close URI notifyd sends, in one place.

The ``wamp.*`` ones are the WAMP specification's (and Crossbar.io's) names;
the ``notifyd.*`` ones are notifyd's own and documented in the README
("Errors").  Modules import them from here; none defines its own.
"""

# -- the WAMP specification's ---------------------------------------------------------
ERROR_AUTHENTICATION_FAILED = "wamp.error.authentication_failed"
ERROR_FEATURE_NOT_SUPPORTED = "wamp.error.feature_not_supported"
ERROR_INTERNAL = "wamp.error.internal"
ERROR_INVALID_ARGUMENT = "wamp.error.invalid_argument"
ERROR_INVALID_URI = "wamp.error.invalid_uri"
ERROR_NO_AUTH_METHOD = "wamp.error.no_auth_method"
ERROR_NO_SUCH_PROCEDURE = "wamp.error.no_such_procedure"
ERROR_NO_SUCH_REALM = "wamp.error.no_such_realm"
ERROR_NO_SUCH_SESSION = "wamp.error.no_such_session"
ERROR_NO_SUCH_SUBSCRIPTION = "wamp.error.no_such_subscription"
ERROR_NOT_AUTHORIZED = "wamp.error.not_authorized"
ERROR_PROTOCOL_VIOLATION = "wamp.error.protocol_violation"
ERROR_RUNTIME_ERROR = "wamp.error.runtime_error"

CLOSE_AUTH_EXPIRED = "wamp.close.auth_expired"
CLOSE_GOODBYE_AND_OUT = "wamp.close.goodbye_and_out"
CLOSE_KILLED = "wamp.close.killed"
CLOSE_SYSTEM_SHUTDOWN = "wamp.close.system_shutdown"

# -- notifyd's own -----------------------------------------------------------------------
#: a meta call that reads the event log while the session runs too many of them
ERROR_BUSY = "notifyd.error.busy"
#: no HELLO (or no AUTHENTICATE) within hello_timeout
ERROR_HELLO_TIMEOUT = "notifyd.error.hello_timeout"
#: a resume or get_events on topics the event log does not keep
ERROR_HISTORY_UNAVAILABLE = "notifyd.error.history_unavailable"
#: transient: RabbitMQ (or the stream) cannot be read right now; try again
ERROR_LOG_UNAVAILABLE = "notifyd.error.log_unavailable"
#: a resume from a publication id the event log no longer (or never) held
ERROR_NOT_RECOVERED = "notifyd.error.not_recovered"
#: notifyd.presence.lookup on a node without presence
ERROR_PRESENCE_OFF = "notifyd.error.presence_off"
#: notifyd.receipt.displayed on a node without receipts
ERROR_RECEIPTS_OFF = "notifyd.error.receipts_off"
#: notifyd.receipt.displayed for an event this session was not sent (or
#: that asked for no receipt)
ERROR_NO_RECEIPT = "notifyd.error.no_receipt"
ERROR_PUBLISH_REJECTED = "notifyd.error.publish_rejected"
ERROR_PUBLISH_UNAVAILABLE = "notifyd.error.publish_unavailable"
ERROR_RATE_LIMITED = "notifyd.error.rate_limited"
ERROR_TOO_MANY_SUBSCRIPTIONS = "notifyd.error.too_many_subscriptions"

#: a session may have missed logged events it cannot be given any more:
#: reconnect and resume (which reports the gap)
CLOSE_RESUME_FAILED = "notifyd.close.resume_failed"
#: a client that fell too far behind (see notifyd.websocket)
CLOSE_SLOW_CONSUMER = "notifyd.close.slow_consumer"
