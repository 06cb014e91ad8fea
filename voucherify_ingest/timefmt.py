"""UTC times as the project writes them (``2026-11-26T10:52:31.123Z``) and reads them back."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


def iso_utc(epoch_s: float, *, timespec: str = "milliseconds") -> str:
    """``epoch_s`` as ISO 8601 in UTC with a ``Z``; ``timespec`` as ``datetime.isoformat``."""
    moment = datetime.fromtimestamp(epoch_s, timezone.utc)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")


def parse_iso(text: Any) -> float | None:
    """Epoch seconds of an ISO 8601 time (``Z`` or an offset), or None when it is not one."""
    if not isinstance(text, str) or not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()
