"""The enqueue API: validate at the door, stamp an id and a UTC time, cap the size, LPUSH.

One ``LPUSH`` of a pre-built Celery message per event (``voucherify_ingest.messages``): no kombu
publish
path, no per-call client construction. Safe after ``fork()``: redis-py's connection pool notices
the new pid and opens fresh connections in the child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

import redis

from voucherify_ingest import jsoncodec
from voucherify_ingest.errors import InvalidEvent, PayloadTooLarge, SpoolFull
from voucherify_ingest.events import validate_event
from voucherify_ingest.lanes import LIVE, check_lane, lane_queue
from voucherify_ingest.messages import EVENT_ID_RE, batch_message, event_message, make_envelope
from voucherify_ingest.redis_conn import broker_unavailable, check_replicas, make_redis
from voucherify_ingest.settings import Settings


def check_event_id(event_id: str) -> str:
    if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
        raise InvalidEvent(
            {"event_id": ["must be 1-128 characters of letters, digits, '.', '_', ':' or '-'"]}
        )
    return event_id


class Producer:
    """Enqueues events for the workers. Build one per process (or use ``enqueue_event``)."""

    def __init__(self, settings: Settings | None = None, *, client: redis.Redis | None = None):
        self.settings = settings or Settings.from_env(role="producer")
        self.queue = self.settings.queue
        self.max_payload_bytes = self.settings.max_payload_bytes
        self._redis = client or make_redis(self.settings)
        self.spool = None
        if self.settings.spool_dir:
            from producers.spool import Spool  # optional: only when a spool directory is configured

            self.spool = Spool.for_settings(self.settings, self._redis)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def prepare(
        self, payload: Mapping[str, Any], event_id: str | None = None, *, lane: str = LIVE
    ) -> tuple[str, dict[str, Any]]:
        """Validate and stamp one payload; return ``(event_id, envelope)``. No I/O."""
        return self.stamp(validate_event(payload), event_id, lane=lane)

    def stamp(
        self, wire: dict[str, Any], event_id: str | None = None, *, lane: str = LIVE
    ) -> tuple[str, dict[str, Any]]:
        """Cap the size of a payload ``validate_event`` returned, and stamp it. No I/O."""
        size = len(jsoncodec.dumps(wire))
        if size > self.max_payload_bytes:
            raise PayloadTooLarge(size, self.max_payload_bytes)
        if event_id is not None:
            check_event_id(event_id)
        envelope = make_envelope(wire, event_id, lane=lane)
        return envelope["id"], envelope

    def lane_queue(self, lane: str) -> str:
        """The Redis list of ``lane`` (``UnknownLane`` for a name that is not a lane)."""
        return lane_queue(self.queue, check_lane(lane))

    def enqueue_event(
        self, payload: Mapping[str, Any], *, event_id: str | None = None, lane: str = LIVE
    ) -> str:
        """Validate, stamp and enqueue one event on ``lane`` (``live`` or ``bulk``); return
        its event id. An unknown lane raises ``UnknownLane`` (a ``ValueError``).

        Raises ``InvalidEvent`` (with ``.messages``) for a bad payload and ``BrokerUnavailable``
        for every Redis failure: no answer within ``VOUCHERIFY_REDIS_TIMEOUT_S``, a refused
        connection, a write refused (OOM under ``noeviction``, a ``READONLY`` replica after a
        failover, ``LOADING``), or fewer than ``VOUCHERIFY_REDIS_WAIT_REPLICAS`` replicas
        confirming the write in time; never a raw ``redis`` exception. With a spool configured
        the event is spooled to disk instead and the id returned (or ``SpoolFull`` raised when
        the spool is at its cap).

        ``event_id``: your own id for the event, which must be unique per event (an order id
        plus what happened to it, say). The delivery ledger delivers an id once: a second,
        different event enqueued with an id already delivered is skipped as a duplicate.
        Leave it out and a fresh UUID is used.
        """
        lane = check_lane(lane)
        event_id, envelope = self.prepare(payload, event_id, lane=lane)
        self._push([event_message(envelope, lane_queue(self.queue, lane))], lane)
        return event_id

    def enqueue_events(
        self,
        payloads: Iterable[Mapping[str, Any]],
        *,
        event_ids: Iterable[str | None] | None = None,
        batch_size: int = 0,
        lane: str = LIVE,
    ) -> list[str]:
        """Validate all, then enqueue all in one pipelined round trip; return the ids.

        Nothing is enqueued when any payload is invalid (the error names the index).
        ``batch_size > 1`` packs that many events per Celery message (for backfills).
        ``lane``: ``live`` (default) or ``bulk``; an unknown lane raises ``UnknownLane``.
        """
        lane = check_lane(lane)
        payloads = list(payloads)
        ids = list(event_ids) if event_ids is not None else [None] * len(payloads)
        if len(ids) != len(payloads):
            raise ValueError("event_ids must have one entry per payload")
        envelopes = []
        errors: dict[str, Any] = {}
        for index, (payload, event_id) in enumerate(zip(payloads, ids, strict=True)):
            try:
                envelopes.append(self.prepare(payload, event_id, lane=lane)[1])
            except InvalidEvent as exc:
                errors[str(index)] = exc.messages
        if errors:
            raise InvalidEvent(errors)
        self._push(self.messages_for(envelopes, batch_size, lane=lane), lane)
        return [e["id"] for e in envelopes]

    def messages_for(
        self, envelopes: list[dict[str, Any]], batch_size: int = 0, *, lane: str = LIVE
    ) -> list[str]:
        queue = lane_queue(self.queue, lane)
        if batch_size <= 1:
            return [event_message(e, queue) for e in envelopes]
        return [
            batch_message(envelopes[i : i + batch_size], queue)
            for i in range(0, len(envelopes), batch_size)
        ]

    def _push(self, messages: list[str], lane: str = LIVE) -> None:
        queue = lane_queue(self.queue, lane)
        # The spool replays onto the live list only: other lanes (backfills) never spool and
        # get BrokerUnavailable instead, like `enqueue --file`.
        spool = self.spool if lane == LIVE else None
        if spool is not None and spool.pending:
            # Redis failed a moment ago and the spool still holds events: keep their order and
            # do not pay the Redis timeout again; the spool's thread drains it once Redis answers.
            try:
                spool.append(messages)
                return
            except SpoolFull:
                pass  # Redis may be back already: try it before giving up
        try:
            if len(messages) == 1 and not self.settings.redis_wait_replicas:
                self._redis.lpush(queue, messages[0])
            elif messages:
                self._push_pipelined(queue, messages)
        except redis.RedisError as exc:  # down, slow, OOM, READONLY, LOADING, NOREPLICAS, WAIT
            self._store_elsewhere(messages, exc, spool)

    def _store_elsewhere(self, messages: list[str], exc: BaseException, spool) -> None:
        """Redis did not store (or confirm) the messages: spool them or raise our error."""
        if spool is not None:
            spool.append(messages)  # fsync'd, or SpoolFull: never a silent drop
            return
        raise broker_unavailable(self.settings.redis_url, exc) from None

    def _push_pipelined(self, queue: str, messages: list[str]) -> None:
        """Many LPUSHes in one round trip; with ``VOUCHERIFY_REDIS_WAIT_REPLICAS`` one WAIT
        after them (``ReplicasNotConfirmed`` when too few replicas have them in time)."""
        replicas = self.settings.redis_wait_replicas
        timeout_ms = self.settings.redis_wait_timeout_ms
        with self._redis.pipeline(transaction=False) as pipe:
            for start in range(0, len(messages), 1000):
                pipe.lpush(queue, *messages[start : start + 1000])
            if replicas > 0:
                pipe.wait(replicas, timeout_ms)
            replies = pipe.execute()
        if replicas > 0:
            check_replicas(replies[-1], replicas, timeout_ms)

    def queue_length(self, lane: str = LIVE) -> int:
        try:
            return int(self._redis.llen(self.lane_queue(lane)))
        except redis.RedisError as exc:
            raise broker_unavailable(self.settings.redis_url, exc) from None

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
        self._redis.close()


_default: Producer | None = None
_default_lock = threading.Lock()


def _reset_default_lock_in_child() -> None:
    # A fork while another thread held the lock would leave the child's copy locked forever.
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_default_lock_in_child)


def get_producer() -> Producer:
    """The process-wide producer, built on first use from the environment."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Producer()
    return _default


def set_producer(producer: Producer | None) -> None:
    """Install (or clear, with ``None``) the producer ``enqueue_event`` uses."""
    global _default
    with _default_lock:
        _default = producer


def enqueue_event(
    payload: Mapping[str, Any], *, event_id: str | None = None, lane: str = LIVE
) -> str:
    """Enqueue one Voucherify custom event for delivery on ``lane``; return its event id.

    ``event_id`` (optional) must be unique per event: an id already delivered is skipped as a
    duplicate. ``lane``: ``live`` (the default) or ``bulk``. Every Redis failure raises
    ``BrokerUnavailable`` (or spools a live event, when ``VOUCHERIFY_SPOOL_DIR`` is set)."""
    return get_producer().enqueue_event(payload, event_id=event_id, lane=lane)


def enqueue_events(payloads: Iterable[Mapping[str, Any]], **kwargs: Any) -> list[str]:
    """Enqueue many events in one round trip; return their ids."""
    return get_producer().enqueue_events(payloads, **kwargs)
