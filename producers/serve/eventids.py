"""Caller-chosen event ids through ``serve`` are scoped to the ingest credential that sent them.

The delivery ledger keys on the event id, so a global id space would let caller A's
``X-Ingest-Event-Id: order-1`` suppress caller B's different ``order-1`` as a duplicate. Here
the id stored (ledger, queue, dead letters) is ``<caller app id>:<given id>``; the caller still
sees and retries with its own id. An app id outside ``[A-Za-z0-9._-]{1,32}`` is replaced by
``c`` + 16 hex digits of its SHA-256, and a combined id over 128 characters keeps the prefix and
hashes the given part, so the mapping stays deterministic (a retry maps to the same id) and two
callers never share a prefix (the first ``:`` ends it).
"""

from __future__ import annotations

import hashlib
import re

_READABLE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
MAX_ID_CHARS = 128


def _digest(text: str, chars: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:chars]


def caller_prefix(caller: str) -> str:
    return caller if _READABLE.match(caller) else "c" + _digest(caller, 16)


def scoped_event_id(caller: str, given: str) -> str:
    """The id stored for ``given`` sent by ``caller`` (``given`` already checked)."""
    prefix = caller_prefix(caller)
    scoped = f"{prefix}:{given}"
    if len(scoped) <= MAX_ID_CHARS:
        return scoped
    return f"{prefix}:h{_digest(given, 40)}"
