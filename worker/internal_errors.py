"""A bug in a delivery must not lose the event: the last line of defence behind the tasks.

Anything other than :class:`~worker.delivery.OutcomeNotStored` that escapes the Deliverer (a
bug, an unwrapped library error) would otherwise fail the task and, with
``task_acks_on_failure_or_timeout``, ack the message with nothing to show for it. Here each
event of the message goes to the dead-letter store with reason ``internal``: its payload, the
error's type and a short message, and the line where it was raised. An event the ledger already
shows as delivered (a batch that failed half-way) is not dead-lettered again. If even that write
fails, :class:`OutcomeNotStored` is raised and the task requeues the message.
"""

from __future__ import annotations

import traceback
from typing import Any

import redis

from voucherify_ingest.deadletters import make_entry
from voucherify_ingest.logs import mask_secrets
from voucherify_ingest.messages import EVENT_ID_RE

SUMMARY_CHARS = 300


def error_summary(exc: BaseException) -> dict[str, Any]:
    """The error part of an ``internal`` dead letter: type, message, where (no locals)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else None
    message = mask_secrets(f"{type(exc).__name__}: {exc}")[:SUMMARY_CHARS]
    return {"message": message, "code": type(exc).__name__, "details": where}


def _events_of(value: Any) -> list[tuple[str | None, Any, Any]]:
    """(event id or None, payload, enqueued_at) for each event a task argument holds."""
    items = value if isinstance(value, list) else [value]
    found = []
    for item in items:
        if isinstance(item, dict):
            event_id = item.get("id")
            ok = isinstance(event_id, str) and EVENT_ID_RE.match(event_id)
            found.append((event_id if ok else None, item.get("payload", item),
                          item.get("enqueued_at")))
        else:
            found.append((None, item, None))
    return found


def dead_letter_internal(deliverer, value: Any, exc: BaseException) -> int:
    """Dead-letter every event of ``value`` not yet delivered (reason ``internal``); return
    how many. Raises :class:`~worker.delivery.OutcomeNotStored` when Redis refuses."""
    from worker.delivery import OutcomeNotStored

    error = error_summary(exc)
    events = _events_of(value)
    try:
        ids = [event_id for event_id, _, _ in events if event_id]
        delivered = set()
        if ids:
            flags = deliverer.redis.exists(*[deliverer.keys.delivered(i) for i in ids])
            if flags:  # EXISTS counts; look one by one only when some are delivered
                delivered = {i for i in ids if deliverer.redis.exists(deliverer.keys.delivered(i))}
    except redis.RedisError as exc_redis:
        raise OutcomeNotStored(type(exc_redis).__name__) from None
    stored = 0
    for event_id, payload, enqueued_at in events:
        if event_id in delivered:
            continue
        entry = make_entry(
            event_id=event_id, payload=payload, reason="internal", error=error,
            enqueued_at=enqueued_at if isinstance(enqueued_at, str) else None,
        )
        deliverer._store(
            lambda pipe: deliverer.stats.record(pipe, {"dead_lettered:internal": 1}),
            dead_letter=entry,
        )
        stored += 1
        deliverer.log.error(
            "delivery", event_id=entry["id"], outcome="dead_lettered", reason="internal",
            error=error["message"], where=error["details"],
        )
    return stored
