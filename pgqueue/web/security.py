"""The dashboard's defences: HTTP basic auth, the cross-site checks of actions (a token and
the Origin), and the redaction of secret arguments.

>>> guard = Security.from_environment()      # PGQUEUE_DASHBOARD_USER / _PASSWORD / _REDACT
>>> guard.redact({"user": "ann", "password": "hunter2"})
{'user': 'ann', 'password': '***'}
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from pgqueue.errors import ConfigurationError

#: Argument keys whose values show as REDACTED unless PGQUEUE_DASHBOARD_REDACT says others.
DEFAULT_REDACT = ("password", "token", "secret", "api_key")
REDACTED = "***"
#: The cookie holding this browser's nonce; forms carry its HMAC as their token.
CSRF_COOKIE = "pgqueue_csrf"


@dataclasses.dataclass(frozen=True)
class Security:
    """Who may look (basic auth), what actions must carry, and which values are hidden."""

    user: str | None = None
    password: str | None = None
    redact_keys: frozenset[str] = frozenset(DEFAULT_REDACT)
    secret: bytes = dataclasses.field(default_factory=lambda: secrets.token_bytes(32))

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Security:
        """PGQUEUE_DASHBOARD_USER and _PASSWORD (both, or neither), PGQUEUE_DASHBOARD_REDACT
        (comma-separated keys), PGQUEUE_DASHBOARD_SECRET (the token key shared by several
        processes behind one address; random per process otherwise)."""
        env = os.environ if environ is None else environ
        user = env.get("PGQUEUE_DASHBOARD_USER") or None
        password = env.get("PGQUEUE_DASHBOARD_PASSWORD") or None
        if (user is None) != (password is None):
            raise ConfigurationError(
                "set both PGQUEUE_DASHBOARD_USER and PGQUEUE_DASHBOARD_PASSWORD (basic auth), "
                "or neither"
            )
        redact = env.get("PGQUEUE_DASHBOARD_REDACT")
        keys = DEFAULT_REDACT if redact is None else redact.split(",")
        secret = env.get("PGQUEUE_DASHBOARD_SECRET")
        return cls(
            user=user,
            password=password,
            redact_keys=frozenset(key.strip().lower() for key in keys if key.strip()),
            secret=secret.encode() if secret else secrets.token_bytes(32),
        )

    # -- basic auth ----------------------------------------------------------------------

    @property
    def asks_password(self) -> bool:
        return self.user is not None

    def allows(self, authorization: str | None) -> bool:
        """Whether an Authorization header carries the user and password (constant time)."""
        if not self.asks_password:
            return True
        assert self.user is not None and self.password is not None
        scheme, _, encoded = (authorization or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        user_ok = hmac.compare_digest(user, self.user.encode())
        password_ok = hmac.compare_digest(password, self.password.encode())
        return user_ok and password_ok

    # -- cross-site requests -------------------------------------------------------------

    def token_for(self, nonce: str) -> str:
        """The form token of a browser whose CSRF cookie holds `nonce`."""
        return hmac.new(self.secret, nonce.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, nonce: str | None, token: str | None) -> bool:
        if not nonce or not token:
            return False
        return hmac.compare_digest(self.token_for(nonce), token)

    # -- secrets in arguments ------------------------------------------------------------

    def redact(self, value: Any) -> Any:
        """`value` with the values of secret keys replaced by REDACTED, at any depth."""
        if isinstance(value, dict):
            return {
                key: REDACTED if str(key).lower() in self.redact_keys else self.redact(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        return value

    def redacted_keys_in(self, value: Any) -> list[str]:
        """The secret keys a JSON filter names (filtering on them would reveal values)."""
        found: list[str] = []
        if isinstance(value, dict):
            for key, item in value.items():
                if str(key).lower() in self.redact_keys:
                    found.append(str(key))
                found += self.redacted_keys_in(item)
        elif isinstance(value, list):
            for item in value:
                found += self.redacted_keys_in(item)
        return found


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def same_origin(headers: Headers, scope: Scope) -> bool:
    """Whether a request comes from a page of this dashboard: its Origin (else its Referer)
    is this request's own scheme and host. Neither header: refused."""
    claimed = headers.get("origin")
    if not claimed or claimed == "null":
        referer = headers.get("referer")
        if not referer:
            return False
        parts = urlsplit(referer)
        claimed = f"{parts.scheme}://{parts.netloc}"
    host = headers.get("host")
    if not host:
        return False
    return claimed.rstrip("/").lower() == f"{scope.get('scheme', 'http')}://{host}".lower()


class BasicAuth:
    """ASGI middleware: every request (pages, static files, events) needs the password."""

    def __init__(self, app: ASGIApp, security: Security) -> None:
        self.app = app
        self.security = security

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.security.allows(
            Headers(scope=scope).get("authorization")
        ):
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse(
            "pgqueue dashboard: authentication required",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="pgqueue dashboard", charset="UTF-8"'},
        )
        await response(scope, receive, send)
