"""The Track Custom Event payload: one entry point, ``validate_event``, over two validators.

- ``schemas``: marshmallow schemas faithful to the official spec; the reference, and the source
  of every error message.
- ``fast``: plain checks that give the schemas' exact answer for the common valid payload in a
  tenth of the time, or ``None`` to hand over to the schemas.
- ``values``: the limits and helpers both use, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from voucherify_ingest.events.fast import fast_validate
from voucherify_ingest.events.schemas import CAMEL_CASE_ALIASES, validate_with_schemas
from voucherify_ingest.events.values import EVENT_MAX_LENGTH, METADATA_MAX_DEPTH

__all__ = [
    "CAMEL_CASE_ALIASES",
    "EVENT_MAX_LENGTH",
    "METADATA_MAX_DEPTH",
    "fast_validate",
    "validate_event",
    "validate_with_schemas",
]


def validate_event(payload: Any) -> dict[str, Any]:
    """Validate one Track Custom Event payload; return the wire dict.

    The result uses snake_case names and holds only the fields that were given (nothing added,
    no ``None`` filled in). camelCase aliases (``CAMEL_CASE_ALIASES``) are renamed first. The
    caller's objects are never modified or shared with the result's metadata.

    Raises ``InvalidEvent`` whose ``messages`` maps fields to lists of messages, nested like
    marshmallow's: ``{"customer": {"address": {"postal_code": ["Not a valid string."]}}}``. A
    payload that is not a ``dict`` gives ``{"_schema": ["event payload must be a JSON object"]}``.
    """
    wire = fast_validate(payload)  # the common valid case, 10x cheaper; None: ask the schemas
    return wire if wire is not None else validate_with_schemas(payload)
