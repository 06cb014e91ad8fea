"""HTTP to Voucherify: one keep-alive session per process, explicit timeouts, and the single
place where an HTTP outcome is classified into the error tree (``voucherify_ingest.errors``)."""

from __future__ import annotations

import email.utils
import json
import time
from dataclasses import dataclass, field
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from voucherify_ingest import __version__
from voucherify_ingest.errors import (
    AuthRejected,
    DeliveryError,
    PermanentDelivery,
    QuotaExhausted,
    RateLimited,
    RetryableDelivery,
)
from voucherify_ingest.jsoncodec import dumps
from voucherify_ingest.settings import Settings

USER_AGENT = f"voucherify-ingest/{__version__} (+python-requests/{requests.__version__})"
EVENT_ID_HEADER = "X-Ingest-Event-Id"
BODY_EXCERPT_CHARS = 2000
# OAuth: a 401 is resent at once with a new token only within this long of the refused POST's
# start, inside the 5 s by which the ledger claim outlasts one attempt.
RESEND_AFTER_401_WITHIN_S = 4.0
RETRYABLE_4XX = {408, 425, 429}


@dataclass
class RateHints:
    """What the API said about its rate limit (any field may be missing)."""

    limit: int | None = None
    remaining: int | None = None
    retry_at_epoch_s: float | None = None
    retry_after_s: float | None = None
    limit_type: str | None = None


@dataclass
class Delivered:
    status: int
    latency_ms: float
    hints: RateHints = field(default_factory=RateHints)


def _int_header(headers: Any, name: str) -> int | None:
    raw = headers.get(name)
    try:
        return int(float(raw)) if raw is not None else None
    except (TypeError, ValueError):
        return None


def parse_retry_after(raw: str | None, now_epoch_s: float | None = None) -> float | None:
    """``Retry-After`` is either delta-seconds or an HTTP date; None when absent or garbage."""
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    now = time.time() if now_epoch_s is None else now_epoch_s
    return max(0.0, when.timestamp() - now)


def rate_hints(headers: Any, now_epoch_s: float | None = None) -> RateHints:
    now = time.time() if now_epoch_s is None else now_epoch_s
    retry_at = _int_header(headers, "X-Rate-Limit-Retry")
    retry_after = parse_retry_after(headers.get("Retry-After"), now)
    if retry_after is None and retry_at is not None and retry_at > now:
        retry_after = retry_at - now
    return RateHints(
        limit=_int_header(headers, "X-Rate-Limit-Limit"),
        remaining=_int_header(headers, "X-Rate-Limit-Remaining"),
        retry_at_epoch_s=float(retry_at) if retry_at is not None else None,
        retry_after_s=retry_after,
        limit_type=headers.get("X-Rate-Limit-Type"),
    )


def classify(status: int, headers: Any, body: bytes) -> DeliveryError | None:
    """Map a response to ``None`` (delivered) or the error to raise. The one place for this."""
    if 200 <= status < 300:
        return None
    text = body[: BODY_EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    excerpt = text[:BODY_EXCERPT_CHARS]
    info: dict[str, Any] = {}
    try:
        parsed = json.loads(text) if text.lstrip().startswith("{") else None
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        info = parsed
    hints = rate_hints(headers)
    fields = {
        "status": status,
        "code": info.get("code"),
        "key": info.get("key") if isinstance(info.get("key"), str) else None,
        "details": str(info["details"])[:500] if info.get("details") is not None else None,
        "request_id": info.get("request_id") if isinstance(info.get("request_id"), str) else None,
        "retry_after_s": hints.retry_after_s,
        "body_excerpt": excerpt,
        "headers": {k: v for k, v in headers.items() if k.lower().startswith("x-rate-limit")},
    }
    api_message = info.get("message") if isinstance(info.get("message"), str) else None
    message = f"HTTP {status}" + (f": {api_message}" if api_message else "")
    if status == 429:
        if (hints.limit_type or "").lower() == "api_calls_cycle":
            return QuotaExhausted(message + " (API call quota used up for this cycle)", **fields)
        return RateLimited(message, **fields)
    if status == 402:
        return QuotaExhausted(message + " (over the pricing plan)", **fields)
    if status >= 500 or status in RETRYABLE_4XX:
        return RetryableDelivery(message, **fields)
    if status in (401, 403):
        return AuthRejected(message, **fields)
    return PermanentDelivery(message, **fields)


class _DeadlinePassed(Exception):
    """The attempt's total deadline passed while its answer was still being read."""


def _in_doubt(message: str) -> RetryableDelivery:
    error = RetryableDelivery(message)
    error.in_doubt = True
    return error


def _nothing_sent(exc: requests.ConnectionError) -> bool:
    """A refused or failed connect (urllib3's NewConnectionError, a name that did not
    resolve): the request never left. Anything else (reset, remote closed) may have."""
    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (urllib3.exceptions.NewConnectionError, ConnectionRefusedError,
                              urllib3.exceptions.NameResolutionError)):
            return True
        if isinstance(cause, urllib3.exceptions.MaxRetryError):
            cause = cause.reason
            continue
        cause = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else (
            cause.__cause__ or cause.__context__)
    return False


def _read_by(response: requests.Response, deadline: float) -> bytes:
    """The whole body, each socket read bounded by what is left until ``deadline``."""
    raw = response.raw
    conn = getattr(raw, "connection", None)
    sock = getattr(conn, "sock", None)
    chunks = []
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise _DeadlinePassed()
        if sock is not None:
            sock.settimeout(left)
        chunk = raw.read1(65536, decode_content=True)  # what one socket read brought
        if not chunk:
            break
        chunks.append(chunk)
    response._content = body = b"".join(chunks)
    response._content_consumed = True
    raw.release_conn()
    return body


def with_marker(payload: dict[str, Any], key: str, event_id: str) -> dict[str, Any]:
    """The payload with the event id in its metadata under ``key`` (for in-doubt lookups)."""
    metadata = payload.get("metadata")
    metadata = dict(metadata) if isinstance(metadata, dict) else {}
    metadata[key] = event_id
    return {**payload, "metadata": metadata}


class VoucherifyClient:
    """``POST /v1/events`` with keep-alive, (connect, read) timeouts and classified errors.

    ``trust_env`` is off (it costs ~40% of a POST's CPU: requests re-reads proxy settings and
    netrc on every call); proxies and a CA bundle from the environment are resolved once here.

    Each POST copies one prepared request and hands it to the session's transport adapter, as
    ``Session.send`` would, with the session's proxies, TLS verification and client
    certificate, but without re-merging session settings, hooks and cookies per call (which
    cost ~30% of the client's CPU per event). Redirects are never followed either way.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session: requests.Session | None = None,
        pool_size: int = 32,
        tokens: Any = None,
    ):
        self.settings = settings
        self.url = settings.events_url
        self.total_s = settings.connect_timeout_s + settings.read_timeout_s
        # urllib3 bounds connect + the wait for the status line by ``total``; the body is read
        # against the same deadline in ``_read_by``.
        self.timeout = urllib3.Timeout(
            connect=settings.connect_timeout_s, read=settings.read_timeout_s, total=self.total_s
        )
        self.marker_key = settings.event_id_metadata_key
        self.session = session or self._make_session(settings, pool_size)
        # VOUCHERIFY_AUTH=oauth: a worker.oauth.TokenSource; each POST carries its Bearer token.
        self.tokens = tokens
        self.resend_after_401_within_s = RESEND_AFTER_401_WITHIN_S
        pair = {"X-App-Id": settings.app_id, "X-App-Token": settings.app_token}
        self._headers = {
            **(pair if tokens is None else {}),
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        # The request every POST starts from: URL and headers checked and encoded once.
        self._template = requests.Request("POST", self.url, headers=self._headers).prepare()
        self._adapter = self.session.get_adapter(self.url)
        self._send_kwargs = {
            "timeout": self.timeout,
            "stream": True,
            "verify": self.session.verify,
            "cert": self.session.cert,
            "proxies": dict(self.session.proxies),
        }

    @staticmethod
    def _make_session(settings: Settings, pool_size: int) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.proxies.update(requests.utils.get_environ_proxies(settings.events_url))
        env_bundle = requests.utils.extract_zipped_paths(
            requests.utils.os.environ.get("REQUESTS_CA_BUNDLE")
            or requests.utils.os.environ.get("CURL_CA_BUNDLE")
            or ""
        )
        if env_bundle:
            session.verify = env_bundle
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        session.mount("https://", adapter)
        session.mount("http://", adapter)
        return session

    def ready_token(self) -> None:
        """OAuth: have a token in hand before the event is claimed. A fetch (or the wait for
        another worker's) can take seconds, and the ledger claim's clock must not run meanwhile:
        a claim that lapses mid-attempt lets another worker send the same event. Raises what
        ``send_event`` would (nothing is sent); a no-op with the App ID/Token pair."""
        if self.tokens is not None:
            self.tokens.token()

    def send_event(self, payload: dict[str, Any], event_id: str | None = None) -> Delivered:
        """Deliver one event; return ``Delivered`` or raise a ``DeliveryError`` subclass.

        One attempt takes at most ``total_s`` (connect + read timeout) in all: requests' read
        timeout bounds each socket read, not the attempt, so the body is read chunk by chunk
        against the deadline. A 2xx whose body then breaks is delivered all the same (the API
        said so). A failure after the request may have reached the API is marked ``in_doubt``;
        a connect error or refusal is not (nothing was sent).

        With OAuth, a 401 gets one retry with a new token (the old one expired or was revoked),
        at once only when the refused POST and the new token took less than
        ``resend_after_401_within_s``: the event's ledger claim outlasts one attempt by 5 s, and
        a slower resend could outlast the claim. Otherwise a ``RetryableDelivery`` (nothing was
        recorded: the API answered 401) sends it again later under a fresh claim.
        """
        if self.tokens is None:
            return self._send(payload, event_id, None)
        token = self.tokens.token()
        started = time.monotonic()
        try:
            return self._send(payload, event_id, token)
        except AuthRejected as exc:
            if exc.status != 401:
                raise
        fresh = self.tokens.refresh_after_rejection(token)
        took_s = time.monotonic() - started
        if took_s > self.resend_after_401_within_s:
            raise RetryableDelivery(
                f"HTTP 401, and the new OAuth token took {took_s:.1f} s: the event goes again "
                "later under a fresh ledger claim (the API did not record it)", status=401)
        return self._send(payload, event_id, fresh)

    def _send(self, payload: dict[str, Any], event_id: str | None, token: str | None) -> Delivered:
        request = self._template.copy()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        if event_id:
            request.headers[EVENT_ID_HEADER] = event_id
            if self.marker_key:
                payload = with_marker(payload, self.marker_key, event_id)
        request.prepare_body(dumps(payload), None)
        started = time.perf_counter()
        response, status, body = self._exchange(request, started)
        latency_ms = (time.perf_counter() - started) * 1000
        error = classify(status, response.headers, body)
        if error is not None:
            error.latency_ms = latency_ms
            raise error
        return Delivered(status, latency_ms, rate_hints(response.headers))

    def get_json(self, path: str, params: dict[str, Any]) -> tuple[int, Any, Any]:
        """``GET {api}{path}`` within the same total deadline: (status, parsed body or None,
        headers). Raises ``RetryableDelivery`` when no answer came (never in doubt: a GET
        records nothing)."""
        headers = dict(self._headers)
        if self.tokens is not None:
            headers["Authorization"] = f"Bearer {self.tokens.token()}"
        request = requests.Request(
            "GET", f"{self.settings.api_base}{path}", headers=headers, params=params
        ).prepare()
        response, status, body = self._exchange(request, time.perf_counter())
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return status, parsed, response.headers

    def _exchange(self, request, started: float):
        """Send ``request`` and read its answer by ``started + total_s``: (response, status,
        body). Every failure is a RetryableDelivery, ``in_doubt`` when the request may have
        been received."""
        deadline = started + self.total_s
        try:
            response = self._adapter.send(request, **self._send_kwargs)
        except (requests.ConnectTimeout, requests.exceptions.SSLError) as exc:
            raise RetryableDelivery(f"could not connect: {type(exc).__name__}") from None
        except requests.Timeout as exc:
            raise _in_doubt(f"timed out: {type(exc).__name__}") from None
        except requests.ConnectionError as exc:
            if _nothing_sent(exc):
                raise RetryableDelivery(f"could not connect: {type(exc).__name__}") from None
            raise _in_doubt(f"connection broke: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise _in_doubt(f"connection failed: {type(exc).__name__}") from None
        status = response.status_code
        try:
            body = _read_by(response, deadline)
        except (requests.RequestException, OSError, _DeadlinePassed,
                urllib3.exceptions.HTTPError) as exc:
            response.close()
            if 200 <= status < 300:
                return response, status, b""  # the API said 2xx: delivered, body or not
            raise RetryableDelivery(
                f"HTTP {status}, answer cut short: {type(exc).__name__}", status=status
            ) from None
        return response, status, body

    def close(self) -> None:
        self.session.close()
        if self.tokens is not None:
            self.tokens.close()
