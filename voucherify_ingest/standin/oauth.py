"""The stand-in's OAuth 2.0 (v1) side: ``POST /v1/oauth/token`` and ``Authorization: Bearer``.

Shaped after Voucherify's spec (``OAuthTokenGenerateRequestBody``/``ResponseBody``): a form body
with ``grant_type=client_credentials`` and a space-separated ``scope``, the ``X-App-Id``/
``X-App-Token`` pair, and an answer with ``access_token``, ``client_id``, ``expires_at``,
``expires_in``, ``scope`` and ``token_type: Bearer``. The lifetime is short in tests
(``token_lifetime_s``; Voucherify's is 900 s), and every token issued is counted.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from urllib.parse import parse_qs

OAUTH_TOKEN_PATH = "/v1/oauth/token"  # noqa: S105 - a path, not a secret


class TokenIssuer:
    """Issues, checks and counts access tokens; thread-safe."""

    def __init__(self, lifetime_s: float = 900.0):
        self.lifetime_s = lifetime_s
        self._lock = threading.Lock()
        self._live: dict[str, float] = {}  # token -> expiry, epoch s
        self.issued = 0
        self.issued_at: list[float] = []

    def issue(self, form: bytes, client_id: str) -> tuple[int, dict]:
        """``(200, answer)`` or ``(400, error)`` for a form-encoded token request."""
        try:
            fields = parse_qs(form.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            fields = {}
        grant = fields.get("grant_type", [""])[0]
        scope = fields.get("scope", [""])[0]
        if grant != "client_credentials":
            return 400, {"code": 400, "key": "invalid_grant_type", "message": "Invalid grant_type"}
        if not scope or "," in scope:
            return 400, {"code": 400, "key": "invalid_scope", "message": f"Invalid scope: {scope}"}
        now = time.time()
        token = secrets.token_urlsafe(36)
        with self._lock:
            lifetime = self.lifetime_s
            self._live[token] = now + lifetime
            self.issued += 1
            self.issued_at.append(now)
            for old, until in list(self._live.items()):
                if until < now:
                    del self._live[old]
        return 200, {
            "access_token": token,
            "client_id": client_id,
            "expires_at": int(now + lifetime),
            "expires_in": max(1, math.floor(lifetime)),
            "scope": scope,
            "token_type": "Bearer",
        }

    def valid(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries a live token."""
        if not authorization or not authorization.startswith("Bearer "):
            return False
        with self._lock:
            until = self._live.get(authorization[len("Bearer ") :].strip())
        return until is not None and time.time() < until

    def revoke_all(self) -> None:
        with self._lock:
            self._live.clear()

    def set_lifetime(self, seconds: float) -> None:
        with self._lock:
            self.lifetime_s = float(seconds)

    def reset(self) -> None:
        with self._lock:
            self._live.clear()
            self.issued = 0
            self.issued_at = []
