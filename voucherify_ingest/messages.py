"""Celery protocol-2 messages, built directly as JSON.

Why not ``app.send_task``: kombu's publish path costs ~1 ms per call (it renders ``argsrepr``,
builds a producer, declares the queue), while the message itself is one ``LPUSH`` of a small
JSON document. Producers, retries, rate-limit deferrals and dead-letter replay all build the
same message here, and a real ``celery worker`` consumes it (``tests/test_e2e*.py`` prove it).

An *envelope* is the single task argument: ``{"id", "payload", "enqueued_at", "attempt"}``.
``attempt`` counts delivery attempts already made; a replay resets it to 0. ``lane`` (absent for
``live``) names the lane the event travels in (``voucherify_ingest/lanes.py``).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import time
from binascii import b2a_base64
from collections.abc import Iterator
from typing import Any

from voucherify_ingest import jsoncodec
from voucherify_ingest.jsoncodec import dumps_text as _dumps

DELIVER_EVENT = "voucherify.deliver_event"
DELIVER_BATCH = "voucherify.deliver_batch"

#: Event ids end up in Redis key names and log lines: keep them to a safe alphabet.
EVENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_origin = [f"{os.getpid()}@{socket.gethostname()}"]  # Celery's "origin": this process


def new_event_id() -> str:
    """A random (version 4) UUID as text: ``str(uuid.uuid4())`` at a third of the cost."""
    h = os.urandom(16).hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


#: The RFC 4122 variant bits (10xx) set in the first hex digit of the fourth group.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


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
    enqueued_at: str | None = None, lane: str = "live",
) -> dict[str, Any]:
    """``lane`` is written only when it is not ``live`` (messages stay as they were)."""
    envelope = {
        "id": event_id or new_event_id(),
        "payload": payload,
        "enqueued_at": enqueued_at or utc_now_iso(),
        "attempt": attempt,
    }
    if lane != "live":
        envelope["lane"] = lane
    return envelope


# The message as kombu's Redis transport stores it, pre-rendered around the parts that change
# (the same JSON ``json.dumps`` of the dict would give, at a fraction of the cost).
_BODY_TAIL = b',{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
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
_AFTER_KWARGSREPR = ',"kwargsrepr":"{}","origin":'
_AFTER_ORIGIN = (
    ',"ignore_result":true,"replaced_task_nesting":0,"stamped_headers":null,"stamps":{}},'
    '"properties":{"correlation_id":'
)
_AFTER_CORRELATION = (
    ',"reply_to":"","delivery_mode":2,"delivery_info":{"exchange":"","routing_key":'
)
_AFTER_QUEUE = '},"priority":0,"body_encoding":"base64","delivery_tag":"'
_TAIL = '"}}'
#: Text that is its own JSON string body (no quote, backslash, control or non-ASCII character).
_PLAIN = re.compile(r"[ !#-\[\]-~]*")
_templates: dict[tuple[str, str], tuple[str, ...]] = {}  # (task, queue) -> the fixed parts


def _new_tag_source() -> tuple[str, Iterator[int]]:
    return os.urandom(8).hex(), itertools.count()


#: Delivery tags (kombu's key for an unacked message) need only be unique: a random 64-bit
#: prefix per process and a counter, instead of a getrandom() call per message.
_tags = [_new_tag_source()]


def _delivery_tag() -> str:
    prefix, counter = _tags[0]
    return f"{prefix}{next(counter):016x}"


def _new_process() -> None:
    """After a fork (``serve --workers``, prefork pools): messages name the child as origin,
    and its delivery tags must not repeat the parent's."""
    _origin[0] = f"{os.getpid()}@{socket.gethostname()}"
    _tags[0] = _new_tag_source()
    _templates.clear()


os.register_at_fork(after_in_child=_new_process)


def _quoted(text: str) -> str:
    """``text`` as a JSON string (event ids and uuids are plain: no encoder needed)."""
    return f'"{text}"' if _PLAIN.fullmatch(text) else _dumps(text)


def _fixed_parts(task: str, queue: str) -> tuple[str, ...]:
    """The message for ``task`` on ``queue`` around body, id, id, argsrepr, id, delivery tag."""
    parts = _templates.get((task, queue))
    if parts is None:
        if len(_templates) > 256:
            _templates.clear()
        parts = _templates[(task, queue)] = (
            _HEAD, _AFTER_BODY + _dumps(task) + _AFTER_TASK, _AFTER_ID, _AFTER_ROOT,
            _AFTER_KWARGSREPR + _dumps(_origin[0]) + _AFTER_ORIGIN,
            _AFTER_CORRELATION + _dumps(queue) + _AFTER_QUEUE, _TAIL,
        )
    return parts


def build_message(
    task: str, args: list[Any], queue: str, *, task_id: str | None = None, argsrepr: str = "",
    args_json: str | bytes | None = None,
) -> str:
    """Return the JSON string kombu's Redis transport expects on the queue list.

    ``argsrepr`` is what Celery shows in logs and Flower; we pass event ids only, never the
    payload (which carries emails and phone numbers). ``args_json`` is ``args`` already
    encoded, for callers that have it.
    """
    if args_json is None:
        args_json = jsoncodec.dumps(args)
    elif isinstance(args_json, str):
        args_json = args_json.encode("utf-8")
    return _assemble(
        task, queue, b"[" + args_json + _BODY_TAIL, _quoted(task_id or new_event_id()),
        _quoted(argsrepr),
    )


def _assemble(task: str, queue: str, body: bytes, id_json: str, argsrepr_json: str) -> str:
    head, after_body, after_id, after_root, after_argsrepr, after_queue, tail = _fixed_parts(
        task, queue
    )
    return "".join((
        head, b2a_base64(body, newline=False).decode("ascii"), after_body, id_json, after_id,
        id_json, after_root, argsrepr_json, after_argsrepr, id_json, after_queue,
        _delivery_tag(), tail,
    ))


def event_message(envelope: dict[str, Any], queue: str) -> str:
    """One event, one message; the Celery task id is the event id (easy to trace).

    Its ids are plain text (``EVENT_ID_RE``), so quoting them needs no JSON encoder.
    """
    event_id = envelope["id"]
    if _PLAIN.fullmatch(event_id) and "'" not in event_id:
        id_json, argsrepr_json = f'"{event_id}"', f'"(\'{event_id}\',)"'
    else:
        id_json, argsrepr_json = _dumps(event_id), _dumps(f"({event_id!r},)")
    body = b"[[" + jsoncodec.dumps(envelope) + b"]" + _BODY_TAIL
    return _assemble(DELIVER_EVENT, queue, body, id_json, argsrepr_json)


def batch_message(envelopes: list[dict[str, Any]], queue: str) -> str:
    """Several events in one message: a worker's per-message overhead is paid once."""
    ids = ",".join(e["id"] for e in envelopes[:3])
    more = f",+{len(envelopes) - 3}" if len(envelopes) > 3 else ""
    return build_message(DELIVER_BATCH, [envelopes], queue, argsrepr=f"[{ids}{more}]")


def envelope_bytes(envelope: dict[str, Any]) -> int:
    return len(jsoncodec.dumps(envelope))
