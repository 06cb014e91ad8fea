"""What a dead letter is: the entry, its export shape, and the filters operators use.

An entry keeps the original payload, the reason, the HTTP status and what the API said
(code, key, message, details, request_id), attempts and times. ``export_record`` is the line
``dlq export`` writes, which ``enqueue --file`` reads back.
"""

from __future__ import annotations

import math
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from voucherify_ingest.timefmt import iso_utc as iso_ms

# internal: a bug or an unexpected error inside the worker (worker/internal_errors.py).
# in_doubt: the request may have reached the API and no outcome was recorded (worker died,
# read timeout, connection broke after the body was sent): held for an operator to check.
REASONS = ("invalid", "rejected", "retries_exhausted", "quota_exhausted", "auth", "internal",
           "in_doubt")
HOSTNAME = socket.gethostname()


def status_label(status: Any) -> str:
    """The counts/filter spelling of an HTTP status: ``"503"``, or ``"none"`` when absent."""
    if status is None or (isinstance(status, str) and status.lower() == "none"):
        return "none"
    if isinstance(status, (int, float)) and not isinstance(status, bool):
        return str(int(status))
    return str(status)


def make_entry(
    *,
    event_id: str | None,
    payload: Any,
    reason: str,
    error: dict[str, Any] | None = None,
    attempts: int = 0,
    enqueued_at: str | None = None,
    now_s: float | None = None,
    in_doubt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a dead-letter entry (plain dict, JSON-ready). ``in_doubt``: the evidence of an
    in-doubt send (sent at, by which worker, what happened), kept beside the error."""
    if reason not in REASONS:
        raise ValueError(f"unknown dead-letter reason {reason!r}")
    now = time.time() if now_s is None else now_s
    error = dict(error or {})
    event_name = payload.get("event") if isinstance(payload, dict) else None
    return {
        "id": event_id or f"invalid-{uuid.uuid4()}",
        "event": event_name if isinstance(event_name, str) else None,
        "reason": reason,
        "status": error.get("status"),
        "error": {
            "message": error.get("message"),
            "code": error.get("code"),
            "key": error.get("key"),
            "details": error.get("details"),
            "request_id": error.get("request_id"),
            "body_excerpt": (error.get("body_excerpt") or "")[:2000] or None,
        },
        "attempts": attempts,
        "first_enqueued_at": enqueued_at,
        "last_failed_at": iso_ms(now),
        # Rounded down: a stamp never lies after the moment it was taken, so a replay or purge
        # "up to now" right after takes the entry (rounding to nearest could put it 0.5 ms
        # ahead, and one CI run's replay moved nothing).
        "last_failed_ts": math.floor(now * 1000) / 1000,
        "worker_host": HOSTNAME,
        "payload": payload,
        **({"in_doubt": dict(in_doubt)} if in_doubt else {}),
    }


def export_record(entry: dict[str, Any]) -> dict[str, Any]:
    """One NDJSON line of ``dlq export``; ``voucherify-ingest enqueue --file`` takes it back
    (a record with ``payload`` and no ``event`` key is this wrapped form; ``event_id`` is kept,
    so the delivery ledger stops a re-enqueued event that had in fact got through)."""
    return {
        "event_id": entry["id"],
        "payload": entry.get("payload"),
        "dead_letter": {
            "reason": entry.get("reason"),
            "status": entry.get("status"),
            "error": entry.get("error"),
            "attempts": entry.get("attempts"),
            "first_enqueued_at": entry.get("first_enqueued_at"),
            "last_failed_at": entry.get("last_failed_at"),
            "worker_host": entry.get("worker_host"),
            **({"in_doubt": entry["in_doubt"]} if entry.get("in_doubt") else {}),
        },
    }


def _epoch(value: Any) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return value
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return moment.timestamp()
    raise TypeError(f"expected epoch seconds or a datetime, got {value!r}")


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries an operation takes. ``since``/``until`` are inclusive epoch seconds of the
    last failure; ``ids`` (when given) replaces the walk over the index."""

    reason: str | None = None
    status: str | None = None
    event: str | None = None
    since: float | None = None
    until: float | None = None
    ids: tuple[str, ...] = ()
    skip_invalid: bool = False

    @classmethod
    def of(cls, *, reason=None, status=None, event=None, since=None, until=None, ids=(),
           skip_invalid=False) -> DeadLetterFilter:
        if reason is not None and reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; one of {', '.join(REASONS)}")
        ids = (ids,) if isinstance(ids, str) else tuple(ids or ())
        return cls(reason, None if status is None else status_label(status), event,
                   _epoch(since), _epoch(until), ids, skip_invalid)

    @property
    def reads_entries(self) -> bool:
        return bool(self.status or self.event or self.skip_invalid)

    def matches(self, entry: dict[str, Any]) -> bool:
        return (
            (self.reason is None or entry.get("reason") == self.reason)
            and (self.status is None or status_label(entry.get("status")) == self.status)
            and (self.event is None or entry.get("event") == self.event)
            and not (self.skip_invalid and entry.get("reason") == "invalid")
        )


@dataclass
class Page:
    entries: list[dict[str, Any]]
    next_cursor: str | None
    scanned: int


@dataclass
class ReplayResult:
    matched: int = 0
    replayed: int = 0
    gone: int = 0  # matched, but replayed or purged by someone else first
    dry_run: bool = False
    sample_ids: list[str] = field(default_factory=list)
