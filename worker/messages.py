"""Celery protocol-2 messages, built directly as JSON.

Why not ``app.send_task``: kombu's publish path costs ~1 ms per call (it renders ``argsrepr``,
builds a producer, declares the queue), while the message itself is one ``LPUSH`` of a small
JSON document. Producers, retries, rate-limit deferrals and dead-letter replay all build the
same message here, and a real ``celery worker`` consumes it (``tests/test_e2e*.py`` prove it).

An *envelope* is the single task argument: ``{"id", "payload", "enqueued_at", "attempt"}``.
``attempt`` counts delivery attempts already made; a replay resets it to 0.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import uuid
from datetime import datetime, timezone
from typing import Any

DELIVER_EVENT = "voucherify.deliver_event"
DELIVER_BATCH = "voucherify.deliver_batch"

#: Event ids end up in Redis key names and log lines: keep them to a safe alphabet.
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def new_event_id() -> str:
    return str(uuid.uuid4())


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_envelope(
    payload: dict[str, Any], event_id: str | None = None, *, attempt: int = 0,
    enqueued_at: str | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or new_event_id(),
        "payload": payload,
        "enqueued_at": enqueued_at or utc_now_iso(),
        "attempt": attempt,
    }


def build_message(
    task: str, args: list[Any], queue: str, *, task_id: str | None = None, argsrepr: str = ""
) -> str:
    """Return the JSON string kombu's Redis transport expects on the queue list.

    ``argsrepr`` is what Celery shows in logs and Flower; we pass event ids only, never the
    payload (which carries emails and phone numbers).
    """
    task_id = task_id or str(uuid.uuid4())
    body = _dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    message = {
        "body": base64.b64encode(body.encode("utf-8")).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": argsrepr,
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return _dumps(message)


def event_message(envelope: dict[str, Any], queue: str) -> str:
    """One event, one message; the Celery task id is the event id (easy to trace)."""
    return build_message(
        DELIVER_EVENT, [envelope], queue, task_id=envelope["id"], argsrepr=f"({envelope['id']!r},)"
    )


def batch_message(envelopes: list[dict[str, Any]], queue: str) -> str:
    """Several events in one message: a worker's per-message overhead is paid once."""
    ids = ",".join(e["id"] for e in envelopes[:3])
    more = f",+{len(envelopes) - 3}" if len(envelopes) > 3 else ""
    return build_message(DELIVER_BATCH, [envelopes], queue, argsrepr=f"[{ids}{more}]")


def envelope_bytes(envelope: dict[str, Any]) -> int:
    return len(_dumps(envelope).encode("utf-8"))
