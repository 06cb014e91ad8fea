"""Poison messages: what Celery would drop (or die on) becomes a dead letter, reason ``invalid``.

Celery rejects, before any task code runs, a message it cannot handle: a content type it does
not accept (a pickle is refused and never deserialised), a body that does not decode, an
unknown task name, headers that are not a task message. It logs the full body (customer data)
and discards the message, and some malformed bodies even crash the worker. This consumer
(Celery's ``worker_consumer`` setting, see ``worker.app``) files each of them in the
dead-letter store instead, one entry per event it carries (event id and payload kept) or one
entry for the message itself, logs one bounded line without the body, and keeps running.

Bodies are only ever parsed as JSON, and only when the content type is JSON (or when the
transport wrapped an unreadable item, which is raw bytes: ``worker.transport``).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import redis
import structlog
from celery import signals
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer as CeleryConsumer
from celery.worker.consumer.consumer import promise

from voucherify_ingest.deadletters import DeadLetterStore, make_entry
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import DELIVER_BATCH, DELIVER_EVENT, EVENT_ID_RE
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.stats import StatsRecorder
from worker.transport import UNREADABLE_CONTENT_TYPE

EXCERPT_CHARS = 2000
JSON_TYPES = ("application/json", "application/x-json", "text/json")
_celery_log = get_logger(__name__)


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _excerpt(raw: bytes) -> str:
    return raw[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]


def envelopes_in(value: Any) -> list[dict]:
    """Event envelopes found in task arguments (one event, a batch) or a bare envelope."""
    if isinstance(value, dict) and "payload" in value:
        return [value]
    if isinstance(value, (list, tuple)):
        found = [v for v in value if isinstance(v, dict) and "payload" in v]
        if found:
            return found
        for item in value[:1]:  # [args, kwargs, embed] -> args -> args[0]
            found = envelopes_in(item)
            if found:
                return found
    return []


def _body_json(message: Any) -> Any:
    """The message body parsed as JSON when that is safe and possible, else None."""
    content_type = (message.content_type or "").split(";")[0].strip().lower()
    body = message.body
    if content_type == UNREADABLE_CONTENT_TYPE or content_type in JSON_TYPES:
        raw = body if isinstance(body, bytes) else str(body).encode("utf-8", "replace")
        try:
            parsed = json.loads(raw)
        except ValueError:
            return None
        unreadable = content_type == UNREADABLE_CONTENT_TYPE
        if unreadable and isinstance(parsed, dict) and "body" in parsed:
            # An item shaped almost like a kombu message: look inside its body too.
            try:
                return json.loads(base64.b64decode(parsed["body"], validate=True))
            except (ValueError, TypeError):
                return parsed
        return parsed
    return None  # pickle, yaml, msgpack, ...: never deserialised


def shape_problem(payload: Any) -> str | None:
    """Why a decoded task body cannot be called as ``task(*args, **kwargs)`` (None: it can)."""
    if isinstance(payload, dict):  # task protocol 1
        args, kwargs = payload.get("args", ()), payload.get("kwargs", {})
    elif isinstance(payload, (list, tuple)) and len(payload) == 3:
        args, kwargs, embed = payload
        if embed is not None and not isinstance(embed, dict):
            return "task body's third item must be an object"
    else:
        return "task body must be [args, kwargs, embed]"
    if not isinstance(args, (list, tuple)):
        return "task args must be a list"
    if not isinstance(kwargs, dict):
        return "task kwargs must be an object"
    return None


class PoisonFiler:
    """Writes dead letters for poison messages (one Redis client per worker process)."""

    def __init__(self, settings):
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.stats = StatsRecorder(settings.key_prefix)
        self.log = structlog.get_logger("voucherify_ingest.poison")
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        with self._lock:
            if self._client is None:
                self._client = make_redis(self.settings, timeout_s=5.0)
            return self._client

    def entries_for(self, message: Any, why: str) -> list[dict]:
        headers = message.headers if isinstance(message.headers, dict) else {}
        task = headers.get("task")
        content_type = _short(message.content_type or "", 80)
        size = headers.get("x-raw-bytes")
        if not isinstance(size, int):
            body = message.body
            size = len(body) if isinstance(body, (bytes, str)) else None
        details = f"task={_short(task, 80)}; content_type={content_type}; bytes={size}"
        error = {"message": why, "details": details}
        decoded = _body_json(message)
        entries = []
        for envelope in envelopes_in(decoded):
            event_id = envelope.get("id")
            enqueued_at = envelope.get("enqueued_at")
            entries.append(make_entry(
                event_id=event_id if isinstance(event_id, str) and EVENT_ID_RE.match(event_id)
                else None,
                payload=envelope.get("payload"),
                reason="invalid",
                error=error,
                enqueued_at=enqueued_at if isinstance(enqueued_at, str) else None,
            ))
        if not entries:
            if content_type.lower().startswith(UNREADABLE_CONTENT_TYPE) or decoded is not None:
                kept: Any = _excerpt(message.body if isinstance(message.body, bytes)
                                     else str(message.body).encode("utf-8", "replace"))
            else:
                kept = None  # a body we must not decode (pickle, ...): keep no part of it
            entries.append(make_entry(event_id=None, payload=kept, reason="invalid", error=error))
        return entries

    def file(self, message: Any, why: str) -> bool:
        """Store the dead letters; False when Redis refused (the message must come back)."""
        entries = self.entries_for(message, why)
        store = DeadLetterStore(self.client, self.keys)
        try:
            with self.client.pipeline(transaction=True) as pipe:
                for entry in entries:
                    store.add(entry, pipe)
                self.stats.record(pipe, {"dead_lettered:invalid": len(entries)})
                pipe.execute()
        except redis.RedisError as exc:
            self.log.error("poison_not_stored", why=why, error=type(exc).__name__)
            return False
        headers = message.headers if isinstance(message.headers, dict) else {}
        self.log.warning(
            "poison_message", outcome="dead_lettered", reason="invalid", why=why,
            event_ids=[e["id"] for e in entries][:10], events=len(entries),
            task=_short(headers.get("task"), 80), content_type=_short(message.content_type, 80),
        )
        return True


class Consumer(CeleryConsumer):
    """Celery's consumer, with poison messages dead-lettered instead of logged and dropped."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.poison = PoisonFiler(self.app.voucherify_settings)

    def _poisoned(self, message: Any, why: str, exc: Exception | None = None) -> None:
        if getattr(message, "acknowledged", False):
            return
        if self.poison.file(message, why):
            message.reject_log_error(_celery_log, self.connection_errors)
        else:
            time.sleep(0.5)  # Redis is failing: hand it back rather than lose it
            message.reject_log_error(_celery_log, self.connection_errors, requeue=True)
        signals.task_rejected.send(sender=self, message=message, exc=exc)

    def on_unknown_message(self, body, message):
        self._poisoned(message, "not a task message (no task headers)")

    def on_unknown_task(self, body, message, exc):
        headers = message.headers if isinstance(message.headers, dict) else {}
        if headers.get("task") == "voucherify.unreadable":
            why = f"unreadable queue item: {_short(headers.get('x-unreadable'), 200)}"
        else:
            why = f"unknown task {_short(headers.get('task'), 80)}"
        self._poisoned(message, why, exc)

    def on_invalid_task(self, body, message, exc):
        self._poisoned(message, f"invalid task message: {_short(str(exc), 200)}", exc)

    def on_decode_error(self, message, exc):
        self._poisoned(message, f"body does not decode: {type(exc).__name__}", exc)

    def update_strategies(self):
        super().update_strategies()
        for name in (DELIVER_EVENT, DELIVER_BATCH):
            if name in self.strategies:
                self.strategies[name] = self._checked(self.strategies[name])

    def _checked(self, strategy):
        """Refuse a body our task cannot even be called with (Celery would fail it silently)."""

        def checked(message, body, ack, reject, callbacks, **kwargs):
            if body is None:
                problem = shape_problem(message.payload)  # decoded once; Celery reuses it
                if problem:
                    return self._poisoned(message, problem)
            return strategy(message, body, ack, reject, callbacks, **kwargs)

        return checked

    def create_task_handler(self, promise=promise):
        handler = super().create_task_handler(promise)
        connection_errors = tuple(self.connection_errors)

        def guarded(message):
            try:
                return handler(message)
            except connection_errors:
                raise
            except Exception as exc:  # a malformed message must not stop the worker
                self._poisoned(message, f"malformed task message: {type(exc).__name__}", exc)

        return guarded
