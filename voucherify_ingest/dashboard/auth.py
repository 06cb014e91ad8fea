"""Who may look and who may act: HTTP Basic users, a per-user CSRF token, an origin check.

Passwords are compared with :func:`hmac.compare_digest` against every configured user, so the
time taken says nothing about which user name exists or how much of a password was right.
The CSRF token is an HMAC of the user name under a secret drawn when the process starts: it
is embedded in each page, sent back on every POST, and means nothing to another process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from voucherify_ingest.errors import ConfigError

CREDENTIALS_ENV = "VOUCHERIFY_DASHBOARD_CREDENTIALS"


class Guard:
    """Checks Basic credentials, issues and checks CSRF tokens, judges a POST's origin."""

    def __init__(self, credentials: tuple[tuple[str, str], ...]):
        if not credentials:
            raise ConfigError(
                f"{CREDENTIALS_ENV} is not set: the dashboard refuses to start without at least "
                "one user:password (comma-separated for several)"
            )
        # Digests of equal length: compare_digest then runs in time independent of the input.
        self._users = [(user, _digest(f"{user}:{password}")) for user, password in credentials]
        self._secret = secrets.token_bytes(32)

    def user_of(self, authorization: str | None) -> str | None:
        """The user an ``Authorization: Basic ...`` header proves, or None."""
        if not authorization or not authorization[:6].lower() == "basic ":
            return None
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        offered = _digest(decoded)
        found = None
        for user, digest in self._users:  # every user is compared, match or not
            if hmac.compare_digest(offered, digest):
                found = user
        return found

    def csrf_token(self, user: str) -> str:
        return hmac.new(self._secret, user.encode("utf-8"), hashlib.sha256).hexdigest()

    def csrf_ok(self, user: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(user), str(token))


def same_origin(headers, host: str | None) -> tuple[bool, str]:
    """Whether a POST comes from one of our own pages: ``Sec-Fetch-Site`` (sent by every current
    browser) must say same-origin, and an ``Origin`` must name the host the request was sent to.
    Returns (ok, why-not)."""
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in ("same-origin", "none"):
        return False, f"Sec-Fetch-Site is {site}"
    origin = headers.get("Origin")
    if origin is not None:
        if origin == "null":
            return False, "Origin is null"
        if not host or urlsplit(origin).netloc.lower() != host.lower():
            return False, "Origin does not match Host"
    if site is None and origin is None:
        return False, "neither Origin nor Sec-Fetch-Site was sent"
    return True, ""


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()
