"""
Authentication: who a WAMP session is.  No network I/O.

Three methods, offered by the client in HELLO.authmethods and tried in the
client's order among those this node has enabled:

``ticket``
    The ticket is a JWT issued by the application backend.  It is verified
    with pyjwt against keys from the configuration only: an HMAC secret file
    (HS256/384/512), a PEM public key file or a JWKS file (RS*, PS*, ES*,
    EdDSA).  The accepted algorithms are pinned by configuration, never taken
    from the token; an HMAC algorithm is only ever checked with the secret, an
    asymmetric one only with a public key, so HS/RS confusion is impossible.
    ``exp`` and ``sub`` are required; ``exp``/``nbf``/``iat`` are checked
    with a small leeway; ``aud`` and ``iss`` when configured.  Claims map to
    ``authid`` (``sub``), ``authrole`` (the configured role claim, or the
    default role) and ``authextra`` (the configured extra claims, e.g.
    ``account``).  The session is closed when the token expires.  A token
    whose ``exp`` lies more than ``jwt_max_lifetime`` (default one day) in
    the future, or whose ``exp - iat`` is longer than that, is refused, so
    a leaked long-lived token cannot be used for long.

``wampcra``
    Static users for service clients (from the authz file), with WAMP-CRA's
    challenge/response (HMAC-SHA256, optionally over a PBKDF2-derived key).

    An unknown authid gets a CHALLENGE of the same shape as a known one
    (with a salt when users have salts: a fake one, stable per authid,
    derived with HMAC from a random per-process key) and then fails with
    ``wamp.error.authentication_failed``, exactly as a wrong secret does:
    the answers never tell which authids exist.

``anonymous``
    Only when ``allow_anonymous`` is on; role ``anonymous``.

Identities
----------
Targeting headers list authids, roles and authextra values as
comma-separated strings (see docs/protocol.md), so an identity must be
expressible in that syntax.  An authid, authrole or authextra value (from a
JWT's ``sub``, role claim or extra claims, or a WAMP-CRA user in the authz
file) is refused if it is empty, longer than 255 characters, contains ``,``,
has leading or trailing whitespace, contains a control, format, surrogate or
line/paragraph separator character (Unicode Cc, Cf, Cs, Zl, Zp), or is not
valid UTF-8.  A ticket with such a claim fails authentication; a WAMP-CRA
user with one is a configuration error.

Claim names are matched case-insensitively everywhere (``tenantId``,
``tenantid`` and a header ``wamp-eligible-extra-tenantid`` name the same
claim); two extra claims whose names differ only in case are refused at
start-up.

JWT and WAMP-CRA identities never overlap: a ticket whose ``sub`` equals a
WAMP-CRA authid of the authz file (compared case-insensitively) is refused,
so a token issuer can never mint a session that looks like a service
client, and exclusions by authid never hit the wrong kind of principal.

Every failure is an :class:`AuthFailed` carrying the standard WAMP error URI
for the ABORT and a short reason that never contains a secret or the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any

import jwt

from notifyd.topics import validate_topic
from notifyd.uris import ERROR_AUTHENTICATION_FAILED

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)

ALGORITHMS = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS


class AuthFailed(Exception):
    """Authentication refused: ``uri`` for the ABORT, ``reason`` for people."""

    def __init__(self, uri: str, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.uri = uri
        self.reason = reason
        #: for the log only (never sent to the client); default: ``reason``
        self.detail = detail or reason


class AuthConfigError(ValueError):
    """The authentication settings cannot work."""


@dataclass(frozen=True)
class Principal:
    """An authenticated identity."""

    authid: str
    authrole: str
    authmethod: str
    authprovider: str = "static"
    authextra: dict[str, Any] = field(default_factory=dict)
    expires_at: float | None = None


_BAD_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
MAX_IDENTITY = 255


def identity_problem(value: Any) -> str | None:
    """Why ``value`` cannot be an authid, authrole or authextra value (the
    comma-separated list syntax of targeting headers could not name it),
    or None if it can."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if len(value) > MAX_IDENTITY:
        return f"is longer than {MAX_IDENTITY} characters"
    if "," in value:
        return "contains ','"
    if value != value.strip():
        return "has leading or trailing whitespace"
    for ch in value:
        if unicodedata.category(ch) in _BAD_CATEGORIES:
            return f"contains the character U+{ord(ch):04X}"
    return None


def _component(name: str, value: Any) -> str:
    """A claim that becomes part of the identity, checked."""
    problem = identity_problem(value)
    if problem is not None:
        raise AuthFailed(ERROR_AUTHENTICATION_FAILED, f"claim {name} {problem}")
    return value


def check_claim_names(setting: str, names: Any) -> None:
    """Claim names compare case-insensitively: refuse two that collide."""
    seen: dict[str, str] = {}
    for name in names:
        key = name.lower()
        if key in seen and seen[key] != name:
            raise AuthConfigError(
                f"{setting}: {seen[key]!r} and {name!r} differ only in case "
                "(claim names are matched case-insensitively)"
            )
        if key in seen:
            raise AuthConfigError(f"{setting}: {name!r} is named twice")
        seen[key] = name


class TicketAuthenticator:
    """Verifies JWT tickets."""

    def __init__(
        self,
        algorithms: list[str],
        *,
        secret: bytes | None = None,
        public_key: bytes | None = None,
        jwks: dict[str, Any] | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        leeway: float = 30.0,
        role_claim: str = "role",
        default_role: str = "user",
        extra_claims: tuple[str, ...] = ("account",),
        max_lifetime: float = 86400.0,
        reserved_authids: Any = (),
    ) -> None:
        if not algorithms:
            raise AuthConfigError(
                "jwt_algorithm: name at least one algorithm (e.g. HS256 or RS256)"
            )
        for alg in algorithms:
            if alg not in ALGORITHMS:
                raise AuthConfigError(f"jwt_algorithm: {alg!r} is not one of {sorted(ALGORITHMS)}")
            if alg in HMAC_ALGORITHMS and secret is None:
                raise AuthConfigError(
                    f"jwt_algorithm {alg} needs jwt_secret_file "
                    "(a public key is never used as an HMAC secret)"
                )
            if alg in PUBLIC_KEY_ALGORITHMS and public_key is None and jwks is None:
                raise AuthConfigError(f"jwt_algorithm {alg} needs jwt_public_key_file or jwks_file")
        if secret is not None and len(secret) < 32:
            raise AuthConfigError("jwt_secret_file: the secret must be at least 32 bytes")
        self.algorithms = list(algorithms)
        self._secret = secret
        self._public = None
        if public_key is not None:
            try:
                from cryptography.hazmat.primitives.serialization import load_pem_public_key

                self._public = load_pem_public_key(public_key)
            except Exception as e:
                raise AuthConfigError(f"jwt_public_key_file: not a PEM public key ({e})")
        self._jwks: jwt.PyJWKSet | None = None
        self._jwk_algs: dict[Any, str] = {}
        if jwks is not None:
            self._jwk_algs = {
                k.get("kid"): k["alg"]
                for k in jwks.get("keys", [])
                if isinstance(k, dict) and k.get("alg")
            }
            try:
                self._jwks = jwt.PyJWKSet.from_dict(jwks)
            except Exception as e:
                raise AuthConfigError(f"jwks_file: not a usable JWKS ({e})")
        self.audience = audience
        self.issuer = issuer
        self.leeway = leeway
        self.role_claim = role_claim
        self.default_role = default_role
        check_claim_names("jwt_extra_claims", extra_claims)
        self.extra_claims = tuple(extra_claims)
        if not max_lifetime > 0:
            raise AuthConfigError("jwt_max_lifetime must be positive")
        self.max_lifetime = float(max_lifetime)
        #: WAMP-CRA authids (case-folded): no ticket may claim one
        self.reserved_authids = frozenset(a.casefold() for a in reserved_authids)

    def _key_for(self, header: dict[str, Any]) -> Any:
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise AuthFailed(
                ERROR_AUTHENTICATION_FAILED, f"token algorithm {alg!r} is not accepted"
            )
        if alg in HMAC_ALGORITHMS:
            return self._secret
        if self._jwks is not None:
            kid = header.get("kid")
            keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
            if kid is None and len(keys) != 1:
                raise AuthFailed(
                    ERROR_AUTHENTICATION_FAILED, "token has no kid and the JWKS has several keys"
                )
            if not keys:
                if self._public is not None:
                    return self._public
                raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token kid is not in the JWKS")
            key = keys[0]
            declared = self._jwk_algs.get(key.key_id)
            if declared and declared != alg:
                raise AuthFailed(
                    ERROR_AUTHENTICATION_FAILED, "token algorithm does not match its key"
                )
            return key.key
        return self._public

    def verify(self, token: Any) -> Principal:
        """The principal of a valid ticket, else :class:`AuthFailed`."""
        if not isinstance(token, str) or not token or len(token) > 16384:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "malformed token")
        key = self._key_for(header)
        options: dict[str, Any] = {"require": ["exp", "sub"]}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[header["alg"]],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={**options, "verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token expired")
        except jwt.ImmatureSignatureError:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token not yet valid")
        except jwt.InvalidAudienceError:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token audience is wrong")
        except jwt.InvalidIssuerError:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token issuer is wrong")
        except jwt.MissingRequiredClaimError as e:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, f"token lacks the {e.claim} claim")
        except jwt.InvalidSignatureError:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token signature is invalid")
        except jwt.PyJWTError as e:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, f"invalid token ({type(e).__name__})")
        except Exception as e:  # e.g. a key that does not fit the token's algorithm
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, f"invalid token ({type(e).__name__})")
        try:
            expires_at = float(claims["exp"])
        except (TypeError, ValueError, OverflowError):
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token exp is not a time")
        # the leeway is for clock skew on nbf/iat; a token past its exp would
        # only get a session that is closed at once
        now = time.time()
        if expires_at <= now:
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token expired")
        if expires_at - now > self.max_lifetime + self.leeway:
            raise AuthFailed(
                ERROR_AUTHENTICATION_FAILED, "token lifetime is longer than jwt_max_lifetime"
            )
        iat = claims.get("iat")
        if iat is not None:
            try:
                lifetime = expires_at - float(iat)
            except (TypeError, ValueError, OverflowError):
                raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "token iat is not a time")
            if not lifetime <= self.max_lifetime:
                raise AuthFailed(
                    ERROR_AUTHENTICATION_FAILED, "token lifetime is longer than jwt_max_lifetime"
                )
        authid = _component("sub", claims["sub"])
        if authid.casefold() in self.reserved_authids:
            raise AuthFailed(
                ERROR_AUTHENTICATION_FAILED, "token sub names a WAMP-CRA user (not allowed)"
            )
        role = claims.get(self.role_claim, self.default_role)
        authrole = _component(self.role_claim, role)
        extra: dict[str, Any] = {}
        for name in self.extra_claims:
            wanted = name.lower()
            found = [k for k in claims if isinstance(k, str) and k.lower() == wanted]
            if len(found) > 1:
                raise AuthFailed(
                    ERROR_AUTHENTICATION_FAILED, f"token has several claims named {name!r}"
                )
            if found:
                value = claims[found[0]]
                if type(value) is int:
                    value = str(value)
                extra[name] = _component(name, value)
        return Principal(
            authid=authid,
            authrole=authrole,
            authmethod="ticket",
            authprovider="jwt",
            authextra=extra,
            expires_at=expires_at,
        )


@dataclass(frozen=True)
class CraUser:
    """A static WAMP-CRA user (a service client)."""

    secret: str
    role: str
    extra: dict[str, Any] = field(default_factory=dict)
    salt: str | None = None
    iterations: int = 1000
    keylen: int = 32


class CraAuthenticator:
    """WAMP-CRA against static users.

    Unknown authids are challenged like known ones and always fail at
    AUTHENTICATE with the same error and text as a wrong secret."""

    def __init__(self, users: dict[str, CraUser]) -> None:
        self.users = users
        # what a challenge for an unknown authid looks like: the most common
        # role and key derivation among the configured users
        self._fake_key = os.urandom(32)
        roles = [u.role for u in users.values()]
        self._fake_role = max(set(roles), key=roles.count) if roles else "user"
        salted = [(u.iterations, u.keylen) for u in users.values() if u.salt]
        self._fake_kdf = (
            max(set(salted), key=salted.count) if len(salted) * 2 >= len(users) and salted else None
        )

    def _user(self, authid: str) -> CraUser:
        user = self.users.get(authid)
        if user is not None:
            return user
        fake = hmac.new(self._fake_key, authid.encode("utf-8"), hashlib.sha256).digest()
        salt, iterations, keylen = None, 1000, 32
        if self._fake_kdf is not None:
            salt = base64.b64encode(fake[:16]).decode()
            iterations, keylen = self._fake_kdf
        # a secret nobody knows: the check fails as for a wrong secret
        return CraUser(
            secret=base64.b64encode(fake[16:] + os.urandom(16)).decode(),
            role=self._fake_role,
            salt=salt,
            iterations=iterations,
            keylen=keylen,
        )

    def challenge(self, authid: Any, session_id: int, now: float) -> tuple[dict[str, Any], str]:
        """The CHALLENGE extra for ``authid`` and the expected signature."""
        if identity_problem(authid) is not None:
            # no user can have such an authid: nothing to hide
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "wampcra needs a valid authid")
        user = self._user(authid)
        payload = json.dumps(
            {
                "authid": authid,
                "authrole": user.role,
                "authmethod": "wampcra",
                "authprovider": "static",
                "session": session_id,
                "nonce": base64.b64encode(os.urandom(24)).decode(),
                "timestamp": int(now),
            },
            separators=(",", ":"),
        )
        extra: dict[str, Any] = {"challenge": payload}
        key = user.secret.encode()
        if user.salt:
            extra.update(salt=user.salt, iterations=user.iterations, keylen=user.keylen)
            key = base64.b64encode(
                hashlib.pbkdf2_hmac("sha256", key, user.salt.encode(), user.iterations, user.keylen)
            )
        expected = base64.b64encode(
            hmac.new(key, payload.encode(), hashlib.sha256).digest()
        ).decode()
        return extra, expected

    def check(self, authid: str, expected: str, signature: Any) -> Principal:
        if not isinstance(signature, str):
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "malformed signature")
        try:
            given = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise AuthFailed(ERROR_AUTHENTICATION_FAILED, "malformed signature")
        user = self.users.get(authid)
        if not hmac.compare_digest(given, base64.b64decode(expected)) or user is None:
            raise AuthFailed(
                ERROR_AUTHENTICATION_FAILED,
                "wrong signature",
                detail=None if user is not None else "wrong signature (no such wampcra user)",
            )
        return Principal(
            authid=authid, authrole=user.role, authmethod="wampcra", authextra=dict(user.extra)
        )


def load_jwks(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise AuthConfigError(f"jwks_file: cannot read {path}: {e.strerror}")
    except ValueError:
        raise AuthConfigError(f"jwks_file: {path} is not JSON")
    if isinstance(data, dict) and "keys" not in data and "kty" in data:
        data = {"keys": [data]}
    return data


def read_bytes(setting: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read().strip()
    except OSError as e:
        raise AuthConfigError(f"{setting}: cannot read {path}: {e.strerror}")


def check_identity_component(value: str) -> bool:
    """Is ``value`` usable as one topic component (for rule placeholders)?"""
    try:
        validate_topic(value)
    except ValueError:
        return False
    return "." not in value
