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
import time
import uuid
from typing import Any

DELIVER_EVENT = "voucherify.deliver_event"
DELIVER_BATCH = "voucherify.deliver_batch"

#: Event ids end up in Redis key names and log lines: keep them to a safe alphabet.
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_ORIGIN = f"{os.getpid()}@{socket.gethostname()}"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def new_event_id() -> str:
    return str(uuid.uuid4())


_second = [-1, ""]


def utc_now_iso() -> str:
    """``2026-11-26T10:52:31.123Z``; the part up to the second is formatted once a second."""
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        _second[0], _second[1] = whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


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


# The message as kombu's Redis transport stores it, pre-rendered around the parts that change
# (the same JSON ``json.dumps`` of the dict would give, at a third of the cost).
_EMBED = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'
_HEAD = '{"body":"'
_AFTER_BODY = (
    '","content-encoding":"utf-8","content-type":"application/json","headers":{"lang":"py",'
    '"task":'
)
_AFTER_TASK = ',"id":'
_AFTER_ID = (
    ',"shadow":null,"eta":null,"expires":null,"group":null,"group_index":null,"retries":0,'
    '"timelimit":[null,null],"root_id":'
)
_AFTER_ROOT = ',"parent_id":null,"argsrepr":'
_AFTER_ARGSREPR = ',"kwargsrepr":"{}","origin":' + _dumps(_ORIGIN) + (
    ',"ignore_result":true,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}},'
    '"properties":{"correlation_id":'
)
_AFTER_CORRELATION = (
    ',"reply_to":"","delivery_mode":2,"delivery_info":{"exchange":"","routing_key":'
)
_AFTER_QUEUE = '},"priority":0,"body_encoding":"base64","delivery_tag":"'
_TAIL = '"}}'


def build_message(
    task: str, args: list[Any], queue: str, *, task_id: str | None = None, argsrepr: str = "",
    args_json: str | None = None,
) -> str:
    """Return the JSON string kombu's Redis transport expects on the queue list.

    ``argsrepr`` is what Celery shows in logs and Flower; we pass event ids only, never the
    payload (which carries emails and phone numbers). ``args_json`` is ``args`` already
    encoded, for callers that have it.
    """
    task_id_json = _dumps(task_id or str(uuid.uuid4()))
    body = f"[{args_json if args_json is not None else _dumps(args)},{{}},{_EMBED}]"
    return "".join((
        _HEAD, base64.b64encode(body.encode("utf-8")).decode("ascii"),
        _AFTER_BODY, _dumps(task),
        _AFTER_TASK, task_id_json,
        _AFTER_ID, task_id_json,
        _AFTER_ROOT, _dumps(argsrepr),
        _AFTER_ARGSREPR, task_id_json,
        _AFTER_CORRELATION, _dumps(queue),
        _AFTER_QUEUE, os.urandom(16).hex(),
        _TAIL,
    ))


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
