"""Checks on a request body before and while it is parsed: media type and JSON nesting depth.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a hundred thousand deep
would exhaust the stack. The depth is checked on the raw bytes first; a body with fewer
brackets than the limit (every real event) is passed without a scan.

:func:`parse_json` is the reference (the standard library, precise error messages);
:func:`parse_event_json` gives the same results with orjson, ~4x cheaper, and falls back to the
reference for anything orjson would read differently or refuses.
"""

from __future__ import annotations

import json
import re
from typing import Any

from voucherify_ingest import jsoncodec
from voucherify_ingest.events import METADATA_MAX_DEPTH

#: Deeper than anything the schema accepts (customer metadata nests 32 levels at depth 3),
#: so the schema's own, more precise message wins for near misses.
JSON_MAX_DEPTH = METADATA_MAX_DEPTH + 8

_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class BodyError(ValueError):
    """The body cannot be read as one JSON document; ``str()`` is safe to show the caller."""


def is_json_media_type(content_type: bytes | None) -> bool:
    """``application/json`` with any parameters (``; charset=utf-8``), case-insensitive."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json"


def json_depth_exceeds(raw: bytes, limit: int = JSON_MAX_DEPTH) -> bool:
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    for match in _TOKENS.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif token in (b"]", b"}"):
            depth -= 1
    return False


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise BodyError("the body is empty; send the event as a JSON object")
    if json_depth_exceeds(raw):
        raise BodyError(f"the body nests deeper than {JSON_MAX_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body is not valid UTF-8") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError:  # an integer literal over Python's 4300-digit limit
        raise BodyError("the body holds a number too long to read") from None
    except RecursionError:  # belt and braces: the depth check above should prevent this
        raise BodyError(f"the body nests deeper than {JSON_MAX_DEPTH} levels") from None


def parse_event_json(raw: bytes) -> tuple[Any, bool]:
    """``(parse_json(raw), fresh)``, or its ``BodyError``; ``fresh`` is for ``fast_validate``.

    ``fresh`` is true when orjson read a body with no more opening brackets than the metadata
    depth limit: then no metadata in it can fail the schema's metadata walk. orjson gives only
    string keys, valid strings, finite floats and plain containers; what the walk would still
    check is integers beyond 64 bits (impossible without 19 digits in a row, which
    ``jsoncodec.loads_fast`` leaves to ``json``) and nesting (impossible past
    ``METADATA_MAX_DEPTH`` with no more opening brackets than that in the whole text).
    """
    brackets = raw.count(b"{") + raw.count(b"[")
    if brackets <= JSON_MAX_DEPTH or not json_depth_exceeds(raw):
        try:
            return jsoncodec.loads_fast(raw), brackets <= METADATA_MAX_DEPTH
        except ValueError:  # a long digit run, or bad JSON: the reference reads or words it
            pass
    return parse_json(raw), False
