"""The dead-letter store: events that failed for good, with the reason and what the API said.

Key layout (``{p}`` is ``VOUCHERIFY_KEY_PREFIX``):

- ``{p}:dlq:entries``  hash: entry id (the event id) -> entry JSON
- ``{p}:dlq:index``    zset: entry id -> last-failed epoch seconds (listing newest first)
- ``{p}:dlq:reason:{reason}``  zset: the same, one per reason (filtered listing without scans)

An entry is keyed by its event id, so an event dead-lettered twice is one entry (the newest
failure wins, ``attempts`` keeps counting) and a replay can never enqueue it twice.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import redis

from .keys import Keys

REASONS = ("invalid", "rejected", "retries_exhausted", "quota_exhausted", "auth")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
HOSTNAME = socket.gethostname()


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )


def make_entry(
    *,
    event_id: str | None,
    payload: Any,
    reason: str,
    error: dict[str, Any] | None = None,
    attempts: int = 0,
    enqueued_at: str | None = None,
    now_s: float | None = None,
) -> dict[str, Any]:
    """Build a dead-letter entry (plain dict, JSON-ready)."""
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
        "last_failed_at": _iso(now),
        "last_failed_ts": round(now, 3),
        "worker_host": HOSTNAME,
        "payload": payload,
    }


class DeadLetterStore:
    """Writes and reads dead letters. Writing raises on Redis errors: the caller must then NOT
    ack the message, so it comes back instead of being lost."""

    def __init__(self, client: redis.Redis, keys: Keys):
        self.redis = client
        self.keys = keys

    def add(self, entry: dict[str, Any], pipe=None) -> None:
        """Store ``entry``; on ``pipe`` when given (the caller executes it), else at once."""
        if pipe is None:
            with self.redis.pipeline(transaction=True) as own:
                self.add(entry, own)
                own.execute()
            return
        entry_id = entry["id"]
        score = entry["last_failed_ts"]
        pipe.hset(self.keys.dlq_entries, entry_id, _dumps(entry))
        pipe.zadd(self.keys.dlq_index, {entry_id: score})
        for reason in REASONS:
            if reason != entry["reason"]:
                pipe.zrem(self.keys.dlq_reason(reason), entry_id)
        pipe.zadd(self.keys.dlq_reason(entry["reason"]), {entry_id: score})

    def get(self, entry_id: str) -> dict[str, Any] | None:
        raw = self.redis.hget(self.keys.dlq_entries, entry_id)
        return json.loads(raw) if raw else None

    def count(self) -> int:
        return int(self.redis.zcard(self.keys.dlq_index))

    def ids(self, limit: int = 100) -> list[str]:
        """Newest first."""
        return [i.decode() for i in self.redis.zrevrange(self.keys.dlq_index, 0, limit - 1)]
