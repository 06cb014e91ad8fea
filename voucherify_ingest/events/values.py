"""What both validators share: the limits, the UTF-8 check, the date shape, the metadata walk.

``schemas`` (marshmallow, the reference with the error messages) and ``fast`` (plain checks for
the common valid payload) both import from here and never from each other, so the rules a
payload must meet are written once.
"""

from __future__ import annotations

import math
import re
from typing import Any

EVENT_MAX_LENGTH = 300
METADATA_MAX_DEPTH = 32
INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
_MAX_ERRORS_PER_METADATA = 10

NOT_UTF8 = "Not a valid string: contains an unpaired surrogate."


def is_utf8_encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True



DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")



def format_path(path: tuple[Any, ...]) -> str:
    out = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            text = part if len(part) <= 64 else part[:61] + "..."
            out.append(f".{text}" if out else text)
    return "".join(out) or "(top)"


def copy_json_object(root: dict[Any, Any]) -> tuple[dict[str, Any], list[str]]:
    """Copy ``root`` keeping only JSON values; return ``(copy, error messages)``.

    Depth-first with an explicit stack, so neither deep nor cyclic input can exhaust the Python
    stack (a cycle ends at the depth limit). Messages name the offending value's path relative
    to the metadata object; after the first error nothing more is copied.
    """
    errors: list[str] = []
    out_root: dict[str, Any] = {}
    # (source container, destination container, depth of source, path of source)
    stack: list[tuple[Any, Any, int, tuple[Any, ...]]] = [(root, out_root, 1, ())]
    while stack:
        src, dst, depth, path = stack.pop()
        is_dict = isinstance(src, dict)
        for key, value in src.items() if is_dict else enumerate(src):
            problem = None
            if is_dict and not isinstance(key, str):
                problem = f"{format_path(path)}: keys must be strings, not {type(key).__name__}"
            elif is_dict and not is_utf8_encodable(key):
                problem = f"{format_path(path)}: a key contains an unpaired surrogate"
            elif value is None or value is True or value is False:
                pass
            elif isinstance(value, str):
                if not is_utf8_encodable(value):
                    problem = f"{format_path((*path, key))}: {NOT_UTF8}"
            elif isinstance(value, int):
                if not INT_MIN <= value <= INT_MAX:
                    problem = f"{format_path((*path, key))}: integer outside the 64-bit range"
            elif isinstance(value, float):
                if not math.isfinite(value):
                    problem = f"{format_path((*path, key))}: NaN and Infinity are not valid JSON"
            elif isinstance(value, (dict, list)):
                if depth >= METADATA_MAX_DEPTH:
                    problem = (
                        f"{format_path((*path, key))}: nested deeper than "
                        f"{METADATA_MAX_DEPTH} levels"
                    )
                else:
                    child: Any = {} if isinstance(value, dict) else []
                    stack.append((value, child, depth + 1, (*path, key)))
                    value = child
            else:
                problem = f"{format_path((*path, key))}: not a JSON value ({type(value).__name__})"
            if problem is not None:
                errors.append(problem)
                if len(errors) >= _MAX_ERRORS_PER_METADATA:
                    errors.append("(further errors not reported)")
                    return out_root, errors
            elif not errors:
                if is_dict:
                    dst[key] = value
                else:
                    dst.append(value)
    return out_root, errors
