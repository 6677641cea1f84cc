"""Who may read and act: the token, the session cookie it buys, the CSRF guard, the headers.

No JavaScript runs on the console's pages (the policy below forbids scripts outright), so text
from user code that escaped escaping still could not run. Actions are POST-only and need either
``Authorization: Bearer <token>`` (scripts) or the session cookie set by logging in with the
token, plus a CSRF field tied to that session and a same-origin request (browsers).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping

from pydantic import SecretStr

__all__ = ["COOKIE", "SECURITY_HEADERS", "Guard"]

COOKIE = "contend_console"

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
)


class Guard:
    """Checks a request's credentials against the configured token (None: actions off).

    The session cookie is an HMAC of the token under a key made when the console starts: it
    reveals nothing of the token and no longer opens anything once the console restarts.
    """

    def __init__(self, token: SecretStr | None, protect_reads: bool) -> None:
        self._token = token.get_secret_value().encode() if token is not None else None
        self.protect_reads = protect_reads and token is not None
        self._key = secrets.token_bytes(32)

    @property
    def actions_enabled(self) -> bool:
        return self._token is not None

    def _mac(self, *parts: bytes) -> str:
        return hmac.new(self._key, b"|".join(parts), hashlib.sha256).hexdigest()

    def token_matches(self, offered: str) -> bool:
        token = self._token
        return token is not None and hmac.compare_digest(offered.encode(), token)

    def session_for(self, offered: str) -> str | None:
        """The cookie value that logging in with `offered` buys, or None if it is wrong."""
        if self._token is None or not self.token_matches(offered):
            return None
        return self._mac(b"session", self._token)

    def session(self, cookies: Mapping[str, str]) -> str | None:
        """The request's valid session cookie, if it has one."""
        value = cookies.get(COOKIE)
        if self._token is None or not value:
            return None
        expected = self._mac(b"session", self._token)
        return value if hmac.compare_digest(value.encode(), expected.encode()) else None

    def bearer(self, headers: Mapping[str, str]) -> bool:
        scheme, _, value = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(value.strip())

    def authenticated(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        return self.bearer(headers) or self.session(cookies) is not None

    def may_read(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        return not self.protect_reads or self.authenticated(headers, cookies)

    def csrf_for(self, session: str | None) -> str:
        return self._mac(b"csrf", session.encode()) if session else ""

    def may_act(
        self, headers: Mapping[str, str], cookies: Mapping[str, str], form: Mapping[str, str]
    ) -> str | None:
        """None when the request may run an action, else why not (for the 403 page)."""
        if self._token is None:
            return "Actions are off: start the console with a token to turn them on."
        if self.bearer(headers):
            return None
        session = self.session(cookies)
        if session is None:
            return "This action needs the console token: log in first."
        if not same_origin(headers):
            return "Refused: the request came from another site."
        offered = form.get("csrf", "")
        if not offered or not hmac.compare_digest(
            offered.encode(), self.csrf_for(session).encode()
        ):
            return "Refused: the form is stale or forged (CSRF check failed); reload and retry."
        return None


def same_origin(headers: Mapping[str, str]) -> bool:
    """False when the browser says the request came from another origin."""
    site = headers.get("sec-fetch-site")
    if site is not None:  # a browser that sends it says exactly this
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return origin is None
    host = headers.get("host", "")
    return origin.partition("://")[2] == host
