"""The Celery tasks: thin, like web views. They decode arguments and hand them to
``worker.delivery.Deliverer``; the only policy here is what to do when an outcome could not be
stored (do not ack: requeue, and the ledger stops a second POST), and what to do when anything
else escapes (dead-letter the events as ``internal``: ``worker/internal_errors.py``)."""

from __future__ import annotations

import os
import threading
import time

import structlog
from celery import Celery
from celery.exceptions import Reject

from voucherify_ingest.messages import DELIVER_BATCH, DELIVER_EVENT
from voucherify_ingest.redis_conn import make_redis
from worker.client import VoucherifyClient
from worker.delivery import Deliverer, OutcomeNotStored
from worker.internal_errors import dead_letter_internal

log = structlog.get_logger("voucherify_ingest.tasks")
_lock = threading.Lock()
_deliverers: dict[tuple[int, int], Deliverer] = {}


def build_limiter(settings, client):
    """The shared rate limiter, or None when ``VOUCHERIFY_RATE_LIMIT`` is off."""
    try:
        from worker.ratelimit import RateLimiter
    except ImportError:  # pragma: no cover - the limiter module ships with the package
        return None
    return RateLimiter.from_settings(settings, client)


def build_http(settings, client, limiter) -> VoucherifyClient | None:
    """With ``VOUCHERIFY_AUTH=oauth``, a client sending the fleet's shared token; else None
    (the Deliverer builds its own, with the X-App-Id/X-App-Token pair)."""
    if settings.auth != "oauth":
        return None
    from worker.oauth import TokenSource

    tokens = TokenSource(settings, client, limiter)
    return VoucherifyClient(
        settings, pool_size=max(8, settings.worker_concurrency), tokens=tokens
    )


def get_deliverer(app: Celery) -> Deliverer:
    """One Deliverer (HTTP session, Redis pool, limiter) per process, rebuilt after fork."""
    key = (os.getpid(), id(app))
    deliverer = _deliverers.get(key)
    if deliverer is None:
        with _lock:
            deliverer = _deliverers.get(key)
            if deliverer is None:
                settings = app.voucherify_settings
                client = make_redis(settings, timeout_s=max(5.0, settings.redis_timeout_s))
                limiter = build_limiter(settings, client)
                deliverer = Deliverer(
                    settings,
                    redis_client=client,
                    limiter=limiter,
                    http=build_http(settings, client, limiter),
                )
                _deliverers[key] = deliverer
    return deliverer


def _requeue() -> Reject:
    # Redis refused our write: leave the message to come back rather than lose it.
    time.sleep(1.0)
    return Reject("outcome not stored in Redis; message requeued", requeue=True)


def _run(app: Celery, handler_name: str, value) -> None:
    deliverer = get_deliverer(app)
    try:
        getattr(deliverer, handler_name)(value)
    except OutcomeNotStored:
        raise _requeue() from None
    except Exception as exc:  # a bug: never ack it silently (Celery would, on failure)
        log.exception("delivery_internal_error", error=type(exc).__name__)
        try:
            dead_letter_internal(deliverer, value, exc)
        except OutcomeNotStored:
            raise _requeue() from None


def register_tasks(app: Celery) -> None:
    @app.task(name=DELIVER_EVENT, acks_late=True, reject_on_worker_lost=True, typing=False)
    def deliver_event(*args, **kwargs):
        """Deliver one event envelope (see ``voucherify_ingest.messages``)."""
        envelope = args[0] if len(args) == 1 and not kwargs else {"_args": args, "_kw": kwargs}
        _run(app, "handle", envelope)

    @app.task(name=DELIVER_BATCH, acks_late=True, reject_on_worker_lost=True, typing=False)
    def deliver_batch(*args, **kwargs):
        """Deliver several envelopes, each on its own; ack when every one has an outcome."""
        envelopes = args[0] if len(args) == 1 and not kwargs else {"_args": args, "_kw": kwargs}
        _run(app, "handle_batch", envelopes)
