"""What the bulk modules share: a record read from the input, the input error, the sizes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Events per batch message, chosen by measurement (see docs/backfills.md, "Batch messages"):
#: past ~50 the worker's drain rate stops improving, while a bigger batch makes a killed
#: worker's message longer to redo and a batch's wait behind the rate limit longer.
DEFAULT_BATCH_SIZE = 50
#: Records validated, deduplicated and pushed per round trip.
DEFAULT_CHUNK_SIZE = 1000
FORMATS = ("auto", "ndjson", "json", "csv")
GZIP_MAGIC = b"\x1f\x8b"
_READ_CHARS = 1 << 16
_SNIFF_BYTES = 512
_REJECT_ECHO_LIMIT = 20


class BulkInputError(Exception):
    """The input cannot be read at all (unreadable file, bad CSV header)."""


@dataclass(slots=True)
class Record:
    """One record read from the input: ``data`` when it parsed, else ``error`` (messages)."""

    line: int
    data: Any = None
    error: dict[str, list[str]] | None = None
    raw: str | None = None


def excerpt(text: str | bytes, limit: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


# -- readers ----------------------------------------------------------------------------------
