"""Checks on a request body before and while it is parsed: media type and JSON nesting depth.

``json.loads`` recurses once per nesting level, so ``[[[[...]]]]`` a hundred thousand deep
would exhaust the stack. The depth is checked on the raw bytes first; a body with fewer
brackets than the limit (every real event) is passed without a scan.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..schemas import METADATA_MAX_DEPTH

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
