"""The Track Custom Event payload as marshmallow schemas: the reference validator.

Faithful to ``EventsCreateRequestBody`` in Voucherify's OpenAPI spec (a copy ships in
``voucherify_ingest/openapi/openapi_events.json``; ``tests/unit/test_schemas.py`` checks the field
names against
it and validates our output with it). Where we are stricter than the spec, on purpose:

- Unknown fields are refused at every level, with a message naming them
  (``{"costumer": ["Unknown field."]}``); the spec does not forbid extra properties, but a typo
  would otherwise be sent and silently ignored.
- ``customer`` must carry a non-empty ``id`` or ``source_id`` (the spec requires neither; what the
  server does without both is unconfirmed). This check runs once the customer's own fields are
  valid, and its message sits on ``customer`` itself: ``{"customer": ["must carry ..."]}``.
- Strings are strict: no number, bool or ``bytes`` becomes a string, and a string that cannot be
  encoded as UTF-8 (an unpaired surrogate) is refused, since it cannot be sent as JSON text.
- ``birthdate`` and ``birthday`` must be ``YYYY-MM-DD`` (ASCII digits) and a real calendar date;
  they are kept as the same string.
- ``metadata`` (of the event and of the customer) must be a ``dict`` holding only JSON values:
  ``dict`` with ``str`` keys, ``list``, ``str``, ``bool``, ``None``, finite ``float`` and ``int``
  within the signed 64-bit range. Refused: NaN and +/-Infinity (not valid JSON, and
  ``json.dumps`` would write them as bare ``NaN``), tuples, sets, bytes, ``Decimal`` and other
  objects, non-string keys, and nesting deeper than ``METADATA_MAX_DEPTH`` (32) levels, the
  metadata object itself being level 1. The walk is iterative, so neither deep nor cyclic
  structures can exhaust the stack. The output holds a copy of the metadata, never the
  caller's own objects.
- Every JSON object in the payload must be a ``dict``; other mappings are refused.

The wire format is snake_case. Payloads in the camelCase shape of Voucherify's TypeScript SDK
(``sourceId``, ``postalCode``, ``line1``, ``line2``, ``referrerId``; see ``CAMEL_CASE_ALIASES``)
are renamed to the wire names before validation. Only those aliases, only where they belong;
metadata keys are never renamed. Giving both forms of one field is refused.

Schema instances are built once, at import, and reused: ``validate_event`` is meant to run
inside a web request.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from types import MappingProxyType
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate
from marshmallow.error_store import merge_errors

from voucherify_ingest.errors import InvalidEvent
from voucherify_ingest.events.values import (
    DATE_RE,
    EVENT_MAX_LENGTH,
    METADATA_MAX_DEPTH,
    NOT_UTF8,
    copy_json_object,
    is_utf8_encodable,
)

__all__ = [
    "CAMEL_CASE_ALIASES",
    "EVENT_MAX_LENGTH",
    "METADATA_MAX_DEPTH",
    "AddressSchema",
    "CustomerSchema",
    "DateString",
    "EventSchema",
    "JSONObject",
    "LoyaltySchema",
    "Object",
    "ReferralSchema",
    "StrictString",
    "validate_with_schemas",
]

#: camelCase names used by the TypeScript SDK -> wire names, per object (a path from the root).
CAMEL_CASE_ALIASES: Mapping[tuple[str, ...], Mapping[str, str]] = MappingProxyType(
    {
        ("customer",): MappingProxyType({"sourceId": "source_id"}),
        ("customer", "address"): MappingProxyType(
            {"postalCode": "postal_code", "line1": "line_1", "line2": "line_2"}
        ),
        ("referral",): MappingProxyType({"referrerId": "referrer_id"}),
    }
)

_NOT_AN_OBJECT = "Not a valid object."


# --- fields -----------------------------------------------------------------------------------


class _SkipEmptyValidation:
    """marshmallow builds an ``And`` of the field's validators on every call, even when there
    are none; skipping that for validator-less fields saves ~10% of ``validate_event``. Should
    marshmallow rename ``_validate``, this override is merely never called."""

    validators: list[Any]

    def _validate(self, value: Any) -> None:
        if self.validators:
            super()._validate(value)  # type: ignore[misc]


class StrictString(_SkipEmptyValidation, fields.String):
    """A ``str`` and nothing else: no ``bytes``, no numbers, no unpaired surrogates."""

    default_error_messages = {"invalid_utf8": NOT_UTF8}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if not is_utf8_encodable(value):
            raise self.make_error("invalid_utf8")
        return value


class DateString(StrictString):
    """``YYYY-MM-DD``, a real calendar date, kept as the string it came as."""

    default_error_messages = {
        "invalid_date": "Not a valid date: expected a real calendar date as YYYY-MM-DD."
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        value = super()._deserialize(value, attr, data, **kwargs)
        if not DATE_RE.fullmatch(value):
            raise self.make_error("invalid_date")
        try:
            date.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid_date") from None
        return value


class Object(_SkipEmptyValidation, fields.Nested):
    """A nested schema whose input must be a ``dict`` (marshmallow accepts any ``Mapping``)."""

    default_error_messages = {"type": _NOT_AN_OBJECT}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, dict):
            raise self.make_error("type")
        return super()._deserialize(value, attr, data, **kwargs)


class JSONObject(_SkipEmptyValidation, fields.Field):
    """Free-form metadata: a ``dict`` of JSON values, copied, checked without recursion."""

    default_error_messages = {"invalid": _NOT_AN_OBJECT}

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.make_error("invalid")
        copy, errors = copy_json_object(value)
        if errors:
            raise ValidationError(errors)
        return copy


# --- schemas ----------------------------------------------------------------------------------


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class AddressSchema(_Strict):
    city = StrictString()
    state = StrictString()
    line_1 = StrictString()
    line_2 = StrictString()
    country = StrictString()
    postal_code = StrictString()


def _has_identity(customer: dict[str, Any]) -> None:
    if not (customer.get("id") or customer.get("source_id")):
        raise ValidationError("must carry a non-empty id or source_id")


class CustomerSchema(_Strict):
    """``Customer``: ``id``/``source_id`` plus ``CustomerBase``."""

    id = StrictString()
    source_id = StrictString()
    name = StrictString()
    description = StrictString()
    email = StrictString()
    phone = StrictString()
    birthday = DateString()  # deprecated in the spec, still accepted
    birthdate = DateString()
    address = Object(AddressSchema, allow_none=True)
    metadata = JSONObject()


class ReferralSchema(_Strict):
    code = StrictString(required=True)
    referrer_id = StrictString()


class LoyaltySchema(_Strict):
    code = StrictString(required=True)


class EventSchema(_Strict):
    """``EventsCreateRequestBody``, in wire (snake_case) names."""

    event = StrictString(required=True, validate=validate.Length(min=1, max=EVENT_MAX_LENGTH))
    customer = Object(CustomerSchema, required=True, validate=_has_identity)
    referral = Object(ReferralSchema)
    loyalty = Object(LoyaltySchema)
    metadata = JSONObject()


_EVENT_SCHEMA = EventSchema()


# --- camelCase normalisation ------------------------------------------------------------------


def _rename(
    obj: dict[Any, Any], aliases: Mapping[str, str], errors: dict[str, Any]
) -> dict[Any, Any]:
    """Return ``obj`` with camelCase aliases renamed (a copy if anything changed).

    A field given in both forms keeps its wire name and gets a message in ``errors``.
    """
    renamed = None
    for camel, snake in aliases.items():
        if camel not in obj:
            continue
        if renamed is None:
            renamed = dict(obj)
        value = renamed.pop(camel)
        if snake in renamed:
            errors[snake] = [f"given twice, as {snake!r} and as {camel!r}; send only {snake!r}"]
        else:
            renamed[snake] = value
    return obj if renamed is None else renamed


def _normalise(payload: dict[Any, Any]) -> tuple[dict[Any, Any], dict[str, Any]]:
    """Apply ``CAMEL_CASE_ALIASES`` without touching the caller's objects."""
    errors: dict[str, Any] = {}
    out = payload
    for path, aliases in CAMEL_CASE_ALIASES.items():
        # Walk to the object at ``path``; skip when it is absent or not a dict.
        parents = [out]
        node: Any = out
        for name in path:
            node = node.get(name) if isinstance(node, dict) else None
            parents.append(node)
        if not isinstance(node, dict) or not any(camel in node for camel in aliases):
            continue
        local: dict[str, Any] = {}
        new = _rename(node, aliases, local)
        if local:
            target = errors
            for name in path:
                target = target.setdefault(name, {})
            target.update(local)
        # Copy the chain of parents down to the renamed object.
        for depth in range(len(path) - 1, -1, -1):
            parent = dict(parents[depth])
            parent[path[depth]] = new
            new = parent
        out = new
    return out, errors


def _stringify_keys(messages: Any) -> Any:
    """Error keys as strings (an unknown field may have any hashable key)."""
    if isinstance(messages, dict):
        return {
            (key if isinstance(key, str) else repr(key)): _stringify_keys(value)
            for key, value in messages.items()
        }
    return messages


# --- public API -------------------------------------------------------------------------------


def validate_with_schemas(payload: Any) -> dict[str, Any]:
    """``validate_event`` without the fast path (``voucherify_ingest.events.fast``): always
    marshmallow."""
    if not isinstance(payload, dict):
        raise InvalidEvent({"_schema": ["event payload must be a JSON object"]})
    data, errors = _normalise(payload)
    try:
        wire = _EVENT_SCHEMA.load(data)
    except ValidationError as exc:
        errors = merge_errors(errors, exc.messages)
    if errors:
        raise InvalidEvent(_stringify_keys(errors))
    return wire


