"""A fast path for ``validate_event``: plain checks of a payload already in wire shape.

Why: marshmallow's ``Schema.load`` costs ~100 us per event, more than everything else a
producer or a worker does for it (a backfill's budget is ~100 us per event in all). Most
payloads are plain dicts in snake_case with nothing wrong, and for those these checks give the
same dict marshmallow would (same keys, same order, metadata copied by the same walk) in a
tenth of the time.

It is only ever an accelerator: :func:`fast_validate` returns ``None`` at the first thing it
does not handle itself (a camelCase alias, an unknown or null field, a subclass of ``dict`` or
``str``, anything invalid), and ``validate_event`` then runs the schemas, which produce the
result or the error messages. ``tests/unit/test_schema_fast.py`` checks on random and mutated
payloads that a non-``None`` answer always equals the schemas' answer.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from voucherify_ingest.events.values import (
    DATE_RE,
    EVENT_MAX_LENGTH,
    copy_json_object,
    is_utf8_encodable,
)

# Field names in the schemas' declaration order (marshmallow emits them in that order).
_TOP = ("event", "customer", "referral", "loyalty", "metadata")
_CUSTOMER = (
    "id", "source_id", "name", "description", "email", "phone", "birthday", "birthdate",
    "address", "metadata",
)
_CUSTOMER_STRINGS = frozenset(_CUSTOMER[:6])
_DATES = frozenset(("birthday", "birthdate"))
_ADDRESS = ("city", "state", "line_1", "line_2", "country", "postal_code")
_TOP_SET, _CUSTOMER_SET, _ADDRESS_SET = frozenset(_TOP), frozenset(_CUSTOMER), frozenset(_ADDRESS)
_REFERRAL_SET, _LOYALTY_SET = frozenset(("code", "referrer_id")), frozenset(("code",))


def _string(value: Any) -> bool:
    return type(value) is str and (value.isascii() or is_utf8_encodable(value))


def _metadata(value: Any, fresh: bool) -> dict[str, Any] | None:
    if type(value) is not dict:
        return None
    if fresh:
        return value
    copy, errors = copy_json_object(value)
    return None if errors else copy


def _date(value: Any) -> bool:
    if type(value) is not str or not DATE_RE.fullmatch(value):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _address(value: Any) -> Any:
    """The address copy, ``None`` for a JSON null, or ``False`` when not handled here."""
    if value is None:
        return None
    if type(value) is not dict or not value.keys() <= _ADDRESS_SET:
        return False
    out = {}
    for name in _ADDRESS:
        if name in value:
            item = value[name]
            if not _string(item):
                return False
            out[name] = item
    return out


def _customer(value: Any, fresh: bool) -> dict[str, Any] | None:
    if type(value) is not dict or not value.keys() <= _CUSTOMER_SET:
        return None
    out: dict[str, Any] = {}
    for name in _CUSTOMER:
        if name not in value:
            continue
        item = value[name]
        if name in _CUSTOMER_STRINGS:
            if not _string(item):
                return None
        elif name in _DATES:
            if not _date(item):
                return None
        elif name == "address":
            item = _address(item)
            if item is False:
                return None
        else:
            item = _metadata(item, fresh)
            if item is None:
                return None
        out[name] = item
    if not (out.get("id") or out.get("source_id")):
        return None
    return out


def _coded(value: Any, allowed: frozenset[str]) -> dict[str, Any] | None:
    """``referral`` / ``loyalty``: a required ``code`` plus the other allowed strings."""
    if type(value) is not dict or "code" not in value or not value.keys() <= allowed:
        return None
    out = {}
    for name in ("code", "referrer_id"):
        if name in value:
            if not _string(value[name]):
                return None
            out[name] = value[name]
    return out


def fast_validate(payload: Any, *, fresh: bool = False) -> dict[str, Any] | None:
    """The wire dict ``validate_event`` would return, or ``None``: ask the schemas.

    ``fresh=True`` is for a payload just parsed from JSON text that cannot hold metadata the
    metadata walk would refuse (``producers.serve.body.parse_event_json`` says when), and that
    nobody else holds: the result takes its metadata over instead of copying it (the walk is
    most of the cost).
    """
    if type(payload) is not dict or not payload.keys() <= _TOP_SET:
        return None
    event = payload.get("event")
    if not _string(event) or not 1 <= len(event) <= EVENT_MAX_LENGTH:
        return None
    customer = _customer(payload.get("customer"), fresh)
    if customer is None:
        return None
    out: dict[str, Any] = {"event": event, "customer": customer}
    if "referral" in payload:
        referral = _coded(payload["referral"], _REFERRAL_SET)
        if referral is None:
            return None
        out["referral"] = referral
    if "loyalty" in payload:
        loyalty = _coded(payload["loyalty"], _LOYALTY_SET)
        if loyalty is None:
            return None
        out["loyalty"] = loyalty
    if "metadata" in payload:
        metadata = _metadata(payload["metadata"], fresh)
        if metadata is None:
            return None
        out["metadata"] = metadata
    return out
