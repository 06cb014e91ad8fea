"""Voucherify's error object, ``{"code", "key", "message", "details", "request_id"}``.

Written by ``serve`` (which must answer like Voucherify, so SDK error handlers work) and by the
local stand-in (which must fail like Voucherify, so workers are tested against real shapes).
Keys and messages are spelled as the API spells them.
"""

from __future__ import annotations

import os
from http import HTTPStatus
from typing import Any

#: status -> (key, message)
API_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_payload", "Invalid payload"),
    401: ("unauthorized", "Unauthorized"),
    402: ("payment_required", "Payment required"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Resource not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("duplicate", "Duplicated resource"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("too_many_requests", "Too many requests hit the API too quickly."),
    500: ("internal_error", "Internal server error"),
    502: ("bad_gateway", "Bad gateway"),
    503: ("service_unavailable", "Service unavailable"),
    504: ("gateway_timeout", "Gateway timeout"),
}


def request_id() -> str:
    """An id for one error answer, in Voucherify's ``v-...`` style."""
    return "v-" + os.urandom(9).hex()


def error_object(status: int, details: str | None = None, *, rid: str | None = None
                 ) -> dict[str, Any]:
    """The error object for ``status``; an unlisted status gets its HTTP phrase."""
    known = API_ERRORS.get(status)
    if known is None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        known = (phrase.lower().replace(" ", "_"), phrase)
    key, message = known
    body: dict[str, Any] = {"code": status, "key": key, "message": message}
    if details:
        body["details"] = details
    body["request_id"] = rid or request_id()
    return body
