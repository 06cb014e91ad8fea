"""What the ingest endpoint answers: Voucherify's own shapes, pre-encoded where possible.

SDKs treat our answers as Voucherify's: a 200 body shaped like ``EventsCreateResponseBody``
(the official Python SDK deserialises it with pydantic), and errors as Voucherify's error
object ``{"code", "key", "message", "details", "request_id"}``, which SDK error handlers read
from the exception's body. No response carries a stack trace or internal detail.
"""

from __future__ import annotations

from typing import Any

from voucherify_ingest.apierrors import error_object, request_id  # noqa: F401 - re-exported
from voucherify_ingest.jsoncodec import dumps

#: Our event id, on every 200. uvicorn sends header names in lower case (as HTTP/2 must), so
#: an SDK that hands headers over in a plain dict has it as ``x-ingest-event-id``.
EVENT_ID_HEADER = b"x-ingest-event-id"
JSON_TYPE = b"application/json; charset=utf-8"
RETRY_AFTER_S = 2  # what a 503 tells the caller to wait before trying again
_ECHOED_CUSTOMER_FIELDS = frozenset(("id", "source_id", "name", "email", "metadata"))

def error_body(status: int, details: str | None = None, *, rid: str | None = None) -> bytes:
    return dumps(error_object(status, details, rid=rid))


def success_body(wire: dict[str, Any]) -> bytes:
    """``EventsCreateResponseBody`` for a validated event: the customer as sent.

    Voucherify would also answer the customer id it assigned; we cannot know it before the
    worker delivers the event, so ``id`` is present only when the caller sent one.
    """
    sent = wire.get("customer") or {}
    # The wire customer is in the schema's field order, so these come out in that order too.
    customer = {name: value for name, value in sent.items() if name in _ECHOED_CUSTOMER_FIELDS}
    customer["object"] = "customer"
    return dumps(
        {
            "object": "event",
            "type": wire.get("event"),
            "customer": customer,
            "referral": None,
            "loyalty": None,
            "metadata": wire.get("metadata", {}),
        }
    )


def json_headers(body: bytes, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", JSON_TYPE),
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
