"""One OAuth access token for the whole fleet, shared through Redis (``VOUCHERIFY_AUTH=oauth``).

Voucherify caps live tokens per project (1,000; an older docs page said 200) and a token lives
900 s. A fleet where each process fetched its own token at each expiry would use one token per
process per lifetime; here all workers that share Redis, the key prefix, the app id, the API
base URL and the scope share one:

- the token sits in ``{p}:oauth:{h}`` (``voucherify_ingest.keys``) with ``expires_at`` and
  ``refresh_at`` (``VOUCHERIFY_OAUTH_REFRESH_AHEAD_S`` before expiry, at most half the
  lifetime); each process also keeps it in memory until ``refresh_at``;
- once it is due, the one worker that wins ``SET {p}:oauth:{h}:lock NX PX`` fetches the next
  token (``POST /v1/oauth/token``, its slot taken from the shared rate limiter) while the
  others keep using the current one; with no usable token they wait for the new one, bounded;
- a 401 on an API call with token T makes T unusable for this worker, which fetches once
  more under the same lock (unless another worker already replaced T): a burst of 401s for
  one token makes one new token, and the fleet makes at most one such replacement per
  ``REPLACE_AFTER_401_EVERY_S`` (an API that rejects every token gets ``AuthRejected``, not
  a new token per event).

The token never reaches a log line, an exception message or a ``repr``.

Request and answer as Voucherify documents them (``/work/shared/voucherify`` -> docs):
form-encoded ``grant_type=client_credentials`` and space-separated ``scope``, authenticated with
``X-App-Id``/``X-App-Token``; the answer's ``access_token``, ``expires_in`` (s) and
``token_type`` ``Bearer``; used as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
import structlog

from voucherify_ingest.errors import AuthRejected, RetryableDelivery
from voucherify_ingest.keys import Keys
from voucherify_ingest.settings import Settings
from worker.client import USER_AGENT, classify

TOKEN_PATH = "/v1/oauth/token"  # noqa: S105 - a path, not a secret
WAIT_FOR_TOKEN_S = 15.0  # how long a worker without a usable token waits for another's fetch
POLL_S = 0.05
MIN_REFRESH_AHEAD_S = 1.0
EXPIRY_MARGIN_S = 2.0  # a token this close to its expiry is not sent any more
# At most one replacement after a 401 per this many seconds for the fleet: an API that rejects
# every token (a scope without "events", a blocked key) must not burn the project's token cap.
REPLACE_AFTER_401_EVERY_S = 30

# KEYS[1] = the lock; ARGV[1] = its owner. Deletes it only if still ours; returns 1 or 0.
DELETE_IF_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _redis_failed(exc: BaseException) -> RetryableDelivery:
    return RetryableDelivery(f"OAuth token not shared: Redis failed ({type(exc).__name__})")


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # epoch seconds (this host's clock, from expires_in)
    refresh_at: float

    def to_json(self) -> str:
        return json.dumps(
            {"access_token": self.value, "expires_at": self.expires_at,
             "refresh_at": self.refresh_at}
        )

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> AccessToken | None:
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            return cls(str(data["access_token"]), float(data["expires_at"]),
                       float(data["refresh_at"]))
        except (ValueError, TypeError, KeyError):
            return None  # unreadable: treated as absent, a fresh token replaces it


class TokenSource:
    """The fleet's current token (:meth:`token`) and its replacement after a 401."""

    def __init__(
        self,
        settings: Settings,
        client: redis.Redis,
        limiter: Any = None,
        *,
        session: requests.Session | None = None,
        sleep=time.sleep,
    ):
        self.settings = settings
        self.redis = client
        self.limiter = limiter
        self.sleep = sleep
        keys = Keys.from_settings(settings)
        self.key = keys.oauth_token(settings.app_id, settings.api_base, settings.oauth_scope)
        self.lock_key = keys.oauth_lock(settings.app_id, settings.api_base, settings.oauth_scope)
        self.replaced_key = f"{self.key}:replaced"
        self.url = settings.api_base + TOKEN_PATH
        self.timeout = (settings.connect_timeout_s, settings.read_timeout_s)
        self.lock_ttl_ms = int(
            1000 * (settings.connect_timeout_s + settings.read_timeout_s
                    + settings.rate_limit_max_wait_s + 5)
        )
        self.session = session or requests.Session()
        self.session.trust_env = False
        self._delete_if = client.register_script(DELETE_IF_LUA)
        self._cached: AccessToken | None = None
        self._local = threading.Lock()
        self.fetched = 0  # tokens this process fetched (for tests and logs)
        self.log = structlog.get_logger("voucherify_ingest.oauth")

    # -- the API the HTTP client uses --------------------------------------------------------

    def token(self) -> str:
        """A token to send now: the cached one, the fleet's, or a fresh one when due."""
        cached = self._cached
        if cached is not None and time.time() < cached.refresh_at:
            return cached.value
        try:
            shared = self._read()
            if shared is not None and time.time() < shared.refresh_at:
                self._cached = shared
                return shared.value
            return self._replace(rejected=None).value
        except redis.RedisError as exc:
            raise _redis_failed(exc) from None

    def refresh_after_rejection(self, rejected: str) -> str:
        """The API answered 401 to ``rejected``: get another (the fleet's, or a fresh one)."""
        self._cached = None
        try:
            return self._replace(rejected=rejected).value
        except redis.RedisError as exc:
            raise _redis_failed(exc) from None

    # -- sharing ------------------------------------------------------------------------------

    def _read(self) -> AccessToken | None:
        return AccessToken.from_json(self.redis.get(self.key))

    def _usable(self, token: AccessToken | None, rejected: str | None) -> bool:
        return (
            token is not None
            and token.value != rejected
            and time.time() < token.expires_at - EXPIRY_MARGIN_S
        )

    def _replace(self, rejected: str | None) -> AccessToken:
        """Fetch the next token if this worker wins the lock; otherwise use or await another's."""
        deadline = time.monotonic() + WAIT_FOR_TOKEN_S
        owner = uuid.uuid4().hex
        while True:
            if self.redis.set(self.lock_key, owner, nx=True, px=self.lock_ttl_ms):
                try:
                    shared = self._read()  # someone may have refreshed while we looked
                    if self._usable(shared, rejected) and time.time() < shared.refresh_at:
                        self._cached = shared
                        return shared
                    if rejected is not None and not self.redis.set(
                        self.replaced_key, "1", nx=True, ex=REPLACE_AFTER_401_EVERY_S
                    ):
                        raise AuthRejected(
                            "HTTP 401: the API rejected a fresh OAuth token too (not fetching "
                            f"another within {REPLACE_AFTER_401_EVERY_S} s; check the scope "
                            "and the API key)",
                            status=401,
                        )
                    fresh = self._fetch()
                    ttl_ms = max(1, int((fresh.expires_at - time.time()) * 1000))
                    self.redis.set(self.key, fresh.to_json(), px=ttl_ms)
                    self._cached = fresh
                    return fresh
                finally:
                    self._delete_if(keys=[self.lock_key], args=[owner])
            shared = self._read()
            if self._usable(shared, rejected):  # another worker is fetching; this one still works
                if time.time() < shared.refresh_at:
                    self._cached = shared
                return shared
            if time.monotonic() >= deadline:
                raise RetryableDelivery("no OAuth token: another worker's fetch did not finish")
            self.sleep(POLL_S)

    # -- the token endpoint -------------------------------------------------------------------

    def _take_slot(self) -> None:
        """The token call spends the project's API budget like an event: wait for a slot."""
        if self.limiter is None:
            return
        max_wait = self.settings.rate_limit_max_wait_s
        deadline = time.monotonic() + max_wait + 1
        while True:
            granted, wait_s = self.limiter.acquire(max_wait)
            if granted:
                if wait_s > 0:
                    self.sleep(wait_s)
                return
            if time.monotonic() + wait_s > deadline:
                raise RetryableDelivery("no rate-limit slot for the OAuth token call")
            self.sleep(max(POLL_S, wait_s))

    def _fetch(self) -> AccessToken:
        self._take_slot()
        headers = {
            "X-App-Id": self.settings.app_id,
            "X-App-Token": self.settings.app_token,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        data = {"grant_type": "client_credentials", "scope": self.settings.oauth_scope}
        try:
            response = self.session.post(
                self.url, data=data, headers=headers, timeout=self.timeout,
                allow_redirects=False,
            )
            body = response.content
        except requests.RequestException as exc:
            raise RetryableDelivery(f"OAuth token call failed: {type(exc).__name__}") from None
        error = classify(response.status_code, response.headers, body)
        if error is not None:
            raise error
        try:
            answer = json.loads(body)
            value = answer["access_token"]
            lifetime_s = float(answer["expires_in"])
        except (ValueError, TypeError, KeyError):
            raise RetryableDelivery("OAuth token answer without access_token/expires_in") from None
        if not isinstance(value, str) or not value or lifetime_s <= 0:
            raise RetryableDelivery("OAuth token answer without a usable token")
        now = time.time()
        ahead = max(MIN_REFRESH_AHEAD_S, min(self.settings.oauth_refresh_ahead_s, lifetime_s / 2))
        self.fetched += 1
        self.log.info("oauth_token_fetched", lifetime_s=lifetime_s, refresh_in_s=lifetime_s - ahead)
        return AccessToken(value, now + lifetime_s, now + lifetime_s - ahead)

    def close(self) -> None:
        self.session.close()
