"""The error tree. Classification of HTTP outcomes happens in one place: ``worker.client``.

::

    IngestError
     +-- ConfigError               bad or missing settings; the process refuses to start
     +-- InvalidEvent              payload fails the schema (carries field -> messages)
     +-- PayloadTooLarge           payload over the size cap (an InvalidEvent)
     +-- BrokerUnavailable         Redis did not answer or refused us (URL without password)
     +-- SpoolFull                 the producer's local spool is at its size cap
     +-- DeliveryError             POST /v1/events did not succeed
          +-- RetryableDelivery    connection errors, timeouts, 408, 429, 5xx, gateway pages
          |    +-- RateLimited     429 (carries Retry-After / X-Rate-Limit-* hints)
          +-- PermanentDelivery    400, 401, 403, 404, 409, 413, 422 and other 4xx
               +-- AuthRejected    401 / 403: the credentials are wrong for this project
               +-- QuotaExhausted  402, or 429 with X-Rate-Limit-Type: api_calls_cycle
"""

from __future__ import annotations

from typing import Any


class IngestError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(IngestError):
    """Settings are missing or malformed."""


class InvalidEvent(IngestError):
    """The payload does not match the Track Custom Event schema.

    ``messages`` maps field paths to lists of messages, e.g.
    ``{"customer": ["must carry id or source_id"], "costumer": ["Unknown field."]}``.
    """

    def __init__(self, messages: dict[str, Any], message: str | None = None):
        self.messages = messages
        super().__init__(message or f"invalid event: {format_messages(messages)}")


class PayloadTooLarge(InvalidEvent):
    def __init__(self, size: int, limit: int):
        self.size = size
        self.limit = limit
        super().__init__(
            {"_payload": [f"payload is {size} bytes, over the {limit}-byte limit"]},
        )


class BrokerUnavailable(IngestError):
    """Redis could not be reached; the message names the URL without its password."""


class SpoolFull(IngestError):
    """The local spool reached its size cap: the event was NOT stored anywhere."""


class DeliveryError(IngestError):
    """A delivery attempt failed. Carries what Voucherify said, for logs and dead letters."""

    retryable = False
    reason = "rejected"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: Any = None,
        key: str | None = None,
        details: str | None = None,
        request_id: str | None = None,
        retry_after_s: float | None = None,
        body_excerpt: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.key = key
        self.details = details
        self.request_id = request_id
        self.retry_after_s = retry_after_s
        self.body_excerpt = body_excerpt
        self.headers = headers or {}
        self.latency_ms: float | None = None
        # The request may have reached the API and no answer says what became of it (read
        # timeout, connection broken after the body went out): see voucherify_ingest.indoubt.
        self.in_doubt = False

    def as_dict(self) -> dict[str, Any]:
        """What a dead-letter entry and a log line keep of this error."""
        return {
            "error": type(self).__name__,
            "message": str(self),
            "status": self.status,
            "code": self.code,
            "key": self.key,
            "details": self.details,
            "request_id": self.request_id,
            "body_excerpt": self.body_excerpt,
        }


class RetryableDelivery(DeliveryError):
    retryable = True
    reason = "retries_exhausted"


class RateLimited(RetryableDelivery):
    """429 from the API: every worker should pause until ``retry_after_s``."""


class PermanentDelivery(DeliveryError):
    reason = "rejected"


class AuthRejected(PermanentDelivery):
    reason = "auth"


class QuotaExhausted(PermanentDelivery):
    reason = "quota_exhausted"


def format_messages(messages: Any, prefix: str = "") -> str:
    """Flatten marshmallow-style nested messages into ``a.b: msg; c: msg``.

    Keys starting with ``_`` (``_schema``, ``_json``, ``_payload``) are the validator's own
    bookkeeping, not fields of the event: their messages are shown without them, so a person
    reads ``event payload must be a JSON object``, not ``_schema: ...``. The ``messages``
    structure itself (what serve answers and rejects files keep) is unchanged.
    """
    parts: list[str] = []
    if isinstance(messages, dict):
        for key, value in messages.items():
            if str(key).startswith("_"):
                path = prefix
            else:
                path = f"{prefix}.{key}" if prefix else str(key)
            if isinstance(value, dict):
                parts.append(format_messages(value, path))
            elif isinstance(value, (list, tuple)):
                flat = [v for v in value if not isinstance(v, dict)]
                nested = [v for v in value if isinstance(v, dict)]
                if flat:
                    parts.append(_labelled(path, " ".join(str(v) for v in flat)))
                for v in nested:
                    parts.append(format_messages(v, path))
            else:
                parts.append(_labelled(path, value))
    else:
        parts.append(_labelled(prefix, messages))
    return "; ".join(p for p in parts if p)


def _labelled(path: str, message: Any) -> str:
    return f"{path}: {message}" if path else str(message)
