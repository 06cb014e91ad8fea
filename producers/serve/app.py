"""The ingest endpoint as a plain ASGI application (no framework: every microsecond is a request).

Routes::

    POST /v1/events     validate with our schemas, enqueue, answer EventsCreateResponseBody
    GET  /healthz       the process answers (liveness; no I/O)
    GET  /readyz        Redis answers a PING (readiness)

A request to ``/v1/events`` passes, in order: method (405), credentials (401), the caller's
rate limit (429), media type (415), body size (413), JSON syntax and depth (400), the event
schema (400, or 413 for an event over ``VOUCHERIFY_MAX_PAYLOAD_BYTES``), then the ``LPUSH``
(503 with ``Retry-After`` when Redis refuses it or is unreachable; 503 saying the outcome is
unknown, with the ``X-Ingest-Event-Id`` to retry with, when Redis took the LPUSH but did not
answer in time). A caller's own ``X-Ingest-Event-Id`` is stored scoped to its ingest credential
(``producers/serve/eventids.py``). 200 means the event is in Redis,
or, when ``VOUCHERIFY_SPOOL_DIR`` is set, fsync'd in the producer's spool
(``producers/spool.py``), which drains to Redis once it answers again.

The optional header ``X-Ingest-Lane: bulk`` puts the event on the bulk lane (default live;
an unknown lane is a 400); bulk events are never spooled.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis
import structlog

from producers.producer import Producer, check_event_id
from producers.serve.auth import Authenticator, CallerRateLimit
from producers.serve.body import BodyError, is_json_media_type, parse_event_json
from producers.serve.eventids import scoped_event_id
from producers.serve.pusher import BatchPusher, PushOutcomeUnknown
from producers.serve.responses import (
    EVENT_ID_HEADER,
    RETRY_AFTER_S,
    error_body,
    json_headers,
    request_id,
    success_body,
)
from voucherify_ingest.errors import (
    BrokerUnavailable,
    InvalidEvent,
    PayloadTooLarge,
    SpoolFull,
    format_messages,
)
from voucherify_ingest.events import fast_validate, validate_event
from voucherify_ingest.lanes import LIVE, UnknownLane, check_lane, lane_queue
from voucherify_ingest.messages import event_message
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.settings import Settings

EVENTS_PATH = "/v1/events"
#: A raw body may be larger than the compact event it carries (whitespace, camelCase names);
#: the event itself must fit VOUCHERIFY_MAX_PAYLOAD_BYTES once validated.
BODY_SLACK_FACTOR = 2

#: A caller may choose the event id (a retry with the same id is delivered once: the ledger).
_EVENT_ID_REQUEST = EVENT_ID_HEADER
_LANE_REQUEST = b"x-ingest-lane"  # optional: live (default) or bulk
_JSON = b"application/json"
_CLOSE = (b"connection", b"close")
_OK_HEALTH = b'{"status":"ok"}'

Response = tuple[int, list[tuple[bytes, bytes]], bytes]


class _Disconnected(Exception):
    """The client went away before sending its whole body: there is nobody to answer."""


class IngestApp:
    """``POST /v1/events`` in front of the producer path (``Producer.prepare`` + ``LPUSH``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        rate_limit_per_s: float | None = None,
        pusher: BatchPusher | None = None,
    ):
        self.settings = settings
        self.auth = Authenticator(settings.ingest_credentials)
        # Only stamp() is used: the LPUSH is ours (async, batched).
        self.producer = Producer(settings.replace(spool_dir=""), client=_NoSyncClient())
        self.pusher = pusher or BatchPusher.for_settings(settings)
        self.lane_pushers: dict[str, BatchPusher] = {}  # other lanes', made on first use
        self.spool = None
        if settings.spool_dir:  # its fsync'd appends run in a thread, off the event loop
            from producers.spool import Spool

            self.spool = Spool.for_settings(settings, make_redis(settings))
        self.rate_limit = CallerRateLimit(rate_limit_per_s) if rate_limit_per_s else None
        self.max_body_bytes = settings.max_payload_bytes * BODY_SLACK_FACTOR
        self.log = structlog.get_logger("voucherify_ingest.serve")
        self._last_redis_warning = 0.0
        self.unavailable = 0  # 503s answered because Redis did not confirm an LPUSH

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            try:
                if scope["path"] == EVENTS_PATH and scope["method"] == "POST":  # the hot path
                    response = await self._events(scope, receive)
                else:
                    response = await self._route(scope, receive)
            except _Disconnected:
                return
            except Exception:
                rid = request_id()
                self.log.exception("serve_internal_error", request_id=rid, path=scope["path"])
                body = error_body(500, rid=rid)
                response = (500, json_headers(body), body)
            status, headers, body = response
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.pusher.close()
                for other in self.lane_pushers.values():
                    await other.close()
                self.log.info(
                    "serve_pushed", events=self.pusher.pushed, round_trips=self.pusher.batches,
                    answered_503=self.unavailable, pid=os.getpid(),
                )
                if self.spool is not None:
                    await asyncio.get_running_loop().run_in_executor(None, self.spool.close)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: dict, receive: Any) -> Response:
        path, method = scope["path"], scope["method"]
        if path == EVENTS_PATH:
            if method != "POST":
                return _error(405, f"{EVENTS_PATH} accepts POST only", (b"allow", b"POST"))
            return await self._events(scope, receive)
        if path in ("/healthz", "/readyz"):
            if method not in ("GET", "HEAD"):
                return _error(405, f"{path} accepts GET and HEAD", (b"allow", b"GET, HEAD"))
            if path == "/healthz" or await self.pusher.ping():
                return 200, json_headers(_OK_HEALTH), _OK_HEALTH
            return _error(503, "Redis does not answer", (b"retry-after", b"%d" % RETRY_AFTER_S))
        return _error(404, f"no route for {method} {path[:200]}")

    async def _events(self, scope: dict, receive: Any) -> Response:
        content_type = app_id = app_token = authorization = event_id = length = lane = None
        for name, value in scope["headers"]:  # a loop beats a dict of them: most are skipped
            if name == b"content-type":
                content_type = value
            elif name == b"x-app-id":
                app_id = value
            elif name == b"x-app-token":
                app_token = value
            elif name == b"content-length":
                length = value
            elif name == b"authorization":
                authorization = value
            elif name == _EVENT_ID_REQUEST:
                event_id = value
            elif name == _LANE_REQUEST:
                lane = value
        caller = self.auth.identify(app_id, app_token, authorization)
        if caller is None:
            return _error(401, "send X-App-Id and X-App-Token (or Authorization: Bearer) "
                               "matching this service's ingest credentials")
        if self.rate_limit is not None:
            wait_s = self.rate_limit.wait_s(caller)
            if wait_s:
                after = b"%d" % CallerRateLimit.retry_after(wait_s)
                return _error(429, None, (b"retry-after", after))
        if lane is not None:
            try:
                lane = check_lane(lane.decode("latin-1"))
            except UnknownLane as exc:
                return _error(400, f"X-Ingest-Lane: {exc}")
            if lane == LIVE:
                lane = None
        if content_type != _JSON and not is_json_media_type(content_type):
            return _error(415, "send the event as Content-Type: application/json")
        limit = self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            return self._too_large()
        first = await receive()
        raw = first.get("body", b"")
        if first.get("more_body", False) or first["type"] != "http.request" or len(raw) > limit:
            raw = await self._read_rest(first, receive)
            if raw is None:
                return self._too_large()
        try:
            payload, fresh = parse_event_json(raw)
        except BodyError as exc:
            return _error(400, str(exc))
        given = None
        try:
            given = event_id.decode("ascii") if event_id is not None else None
            wire = (fresh and fast_validate(payload, fresh=True)) or validate_event(payload)
            if given is not None:
                check_event_id(given)
            stored_id = scoped_event_id(caller, given) if given is not None else None
            event_id_text, envelope = self.producer.stamp(wire, stored_id, lane=lane or LIVE)
        except UnicodeDecodeError:
            return _error(400, "event_id: must be ASCII")
        except PayloadTooLarge as exc:
            return _error(413, format_messages(exc.messages))
        except InvalidEvent as exc:
            return _error(400, format_messages(exc.messages))
        answer_id = (given if given is not None else event_id_text).encode("ascii")
        if lane is not None:  # not live: its own list (never spooled, like a backfill)
            try:
                await self._lane_pusher(lane).push(
                    event_message(envelope, lane_queue(self.settings.queue, lane)))
            except PushOutcomeUnknown as exc:
                return self._unknown(exc, answer_id)
            except (redis.RedisError, OSError) as exc:
                return self._unavailable(exc)
            body = success_body(wire)
            return 200, json_headers(body, (EVENT_ID_HEADER, answer_id)), body
        message = event_message(envelope, self.settings.queue)
        if self.spool is None:
            try:
                await self.pusher.push(message)
            except PushOutcomeUnknown as exc:
                return self._unknown(exc, answer_id)
            except (redis.RedisError, OSError) as exc:
                return self._unavailable(exc)
        else:
            error = await self._store(message)
            if isinstance(error, PushOutcomeUnknown):
                return self._unknown(error, answer_id)
            if error is not None:
                return self._unavailable(error)
        body = success_body(wire)
        return 200, json_headers(body, (EVENT_ID_HEADER, answer_id)), body

    def _lane_pusher(self, lane: str) -> BatchPusher:
        pusher = self.lane_pushers.get(lane)
        if pusher is None:
            pusher = BatchPusher.for_settings(self.settings,
                                              lane_queue(self.settings.queue, lane))
            self.lane_pushers[lane] = pusher
        return pusher

    async def _read_rest(self, first: dict, receive: Any) -> bytes | None:
        """The whole body from its ``first`` message on, or ``None`` once it is over the limit."""
        limit = self.max_body_bytes
        chunks, size, message = [], 0, first
        while True:
            if message["type"] == "http.disconnect":
                raise _Disconnected
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
            message = await receive()

    def _too_large(self) -> Response:
        return _error(413, f"the body is over {self.max_body_bytes} bytes", _CLOSE)

    async def _store(self, message: str) -> BaseException | None:
        """LPUSH (or spool) ``message``; return the error when it was stored nowhere.

        Like ``Producer._push``: while the spool holds events, new ones join it (their order
        is kept and no Redis timeout is paid per request) until its thread has drained it.
        """
        spool = self.spool
        loop = asyncio.get_running_loop()
        if spool is not None and spool.pending:
            try:
                await loop.run_in_executor(None, spool.append, [message])
                return None
            except SpoolFull:
                pass  # Redis may be back already: try it before giving up
            except BrokerUnavailable as exc:  # the spool could not write
                return exc
        try:
            await self.pusher.push(message)
            return None
        except PushOutcomeUnknown as exc:  # it may be in Redis: spooling it would push again
            return exc
        except (redis.RedisError, OSError) as exc:
            if spool is None:
                return exc
        try:
            await loop.run_in_executor(None, spool.append, [message])
        except (SpoolFull, BrokerUnavailable) as exc:
            return exc
        return None

    def _unavailable(self, exc: BaseException) -> Response:
        self.unavailable += 1
        now = time.monotonic()
        if now - self._last_redis_warning >= 1.0:  # one line a second, not one per request
            self._last_redis_warning = now
            self.log.warning(
                "serve_redis_unavailable", redis=self.settings.safe_redis_url,
                error=type(exc).__name__, answered_503=self.unavailable,
            )
        return _error(
            503, "the event queue is unreachable; nothing was stored, retry later",
            (b"retry-after", b"%d" % RETRY_AFTER_S),
        )


    def _unknown(self, exc: BaseException, answer_id: bytes) -> Response:
        """Redis did not answer in time after the LPUSH went out: it may or may not have been
        applied. Say so, push nothing more, and give the id to retry with: a retry with the
        same ``X-Ingest-Event-Id`` is delivered once (the delivery ledger)."""
        self.unavailable += 1
        self.log.warning("serve_push_outcome_unknown", redis=self.settings.safe_redis_url,
                         error=type(exc).__name__)
        return _error(
            503,
            "the event queue did not confirm in time: the event may or may not be stored. "
            "Retry with the same X-Ingest-Event-Id header (given in this answer); it is "
            "delivered once",
            (b"retry-after", b"%d" % RETRY_AFTER_S), (EVENT_ID_HEADER, answer_id),
        )


def _error(status: int, details: str | None, *extra: tuple[bytes, bytes]) -> Response:
    body = error_body(status, details)
    return status, json_headers(body, *extra), body


class _NoSyncClient:
    """Stands where the producer's sync Redis client would be: the server never uses one."""

    def close(self) -> None:
        pass
