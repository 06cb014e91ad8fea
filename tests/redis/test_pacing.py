"""A 429 is pacing, not a failure (issue 14): it uses up no retry, and its Retry-After is
trusted only up to VOUCHERIFY_RETRY_AFTER_MAX_S. Real Redis, the loopback stand-in."""

from __future__ import annotations

import base64
import json
import time

import pytest

from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, respond
from worker.delivery import Deliverer
from worker.pacing import pause_after_429

EVENT = {"event": "signed_up", "customer": {"source_id": "u1"}}


@pytest.fixture
def api():
    server = StandIn("app", "tok-123456").start()
    yield server
    server.stop()


def _deliverer(redis_url, namespace, api_url, redis_client, **extra):
    env = {
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api_url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "tok-123456", "VOUCHERIFY_MAX_RETRIES": "1",
        "VOUCHERIFY_RATE_LIMIT": "off", **extra,
    }
    return Deliverer(Settings.from_env(env), redis_client=redis_client, sleep=lambda s: None)


def _take_parked(redis_client, namespace) -> tuple[dict, float]:
    """Pop the one message of the delayed set: (envelope, seconds until due)."""
    [(raw, score)] = redis_client.zrange(f"{namespace}:delayed", 0, -1, withscores=True)
    redis_client.zrem(f"{namespace}:delayed", raw)
    body = json.loads(base64.b64decode(json.loads(raw)["body"]))
    return body[0][0], score / 1000 - time.time()


def test_429s_use_up_no_retries(api, redis_url, redis_client, namespace):
    """Five 429s in a row with VOUCHERIFY_MAX_RETRIES=1: the event is paced, never dead-lettered,
    and the 200 that follows delivers it."""
    deliverer = _deliverer(redis_url, namespace, api.url, redis_client)
    api.plan(*[respond(429, headers={"Retry-After": "1"}) for _ in range(5)])
    envelope = make_envelope(EVENT, "evt-paced")
    try:
        for _ in range(5):
            assert deliverer.handle(envelope).kind == "deferred"
            envelope, due_in_s = _take_parked(redis_client, namespace)
            assert envelope["attempt"] == 0, "a 429 used up a retry"
            assert 0.9 <= due_in_s <= 2.2
        assert deliverer.handle(envelope).kind == "delivered"
    finally:
        deliverer.http.close()
    assert api.delivered_ids() == {"evt-paced": 1}
    assert DeadLetterStore(redis_client, Keys(namespace, namespace)).count() == 0


def test_retry_after_is_capped(api, redis_url, redis_client, namespace):
    deliverer = _deliverer(redis_url, namespace, api.url, redis_client,
                           VOUCHERIFY_RETRY_AFTER_MAX_S="7")
    api.plan(respond(429, headers={"Retry-After": "86400",
                                   "X-Rate-Limit-Retry": str(int(time.time()) + 90000)}))
    try:
        assert deliverer.handle(make_envelope(EVENT, "evt-day")).kind == "deferred"
    finally:
        deliverer.http.close()
    _envelope, due_in_s = _take_parked(redis_client, namespace)
    assert 6 <= due_in_s <= 8.2, due_in_s


def test_pause_after_429_takes_the_later_hint_within_the_cap():
    now = 1_000_000.0
    assert pause_after_429(2, {"X-Rate-Limit-Retry": str(now + 4)}, 60, now) == 4
    assert pause_after_429(9, {"x-rate-limit-retry": str(now + 4)}, 60, now) == 9
    assert pause_after_429(None, {}, 60, now) == 5.0
    assert pause_after_429(10**6, {}, 60, now) == 60
