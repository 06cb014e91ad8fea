"""Deliverer outcomes on a real Redis and the loopback stand-in (no Celery in the loop)."""

from __future__ import annotations

import base64
import json
import time

import pytest
import redis

from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, respond
from worker.delayed import DelayedQueue
from worker.delivery import Deliverer, OutcomeNotStored

EVENT = {"event": "signed_up", "customer": {"source_id": "u1"}}


@pytest.fixture
def api():
    server = StandIn("app", "tok-123456").start()
    yield server
    server.stop()


def _settings(redis_url, namespace, api_url, **extra):
    env = {
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api_url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "tok-123456", "VOUCHERIFY_MAX_RETRIES": "2",
        "VOUCHERIFY_BACKOFF_BASE_S": "0.05", "VOUCHERIFY_BACKOFF_MAX_S": "0.1",
    }
    env.update(extra)
    return Settings.from_env(env)


@pytest.fixture
def deliverer(redis_url, namespace, api, redis_client):
    d = Deliverer(_settings(redis_url, namespace, api.url), redis_client=redis_client,
                  sleep=lambda s: None)
    yield d
    d.http.close()


def _counters(redis_client, namespace):
    raw = redis_client.hgetall(f"{namespace}:stats:counters")
    return {k.decode(): int(v) for k, v in raw.items()}


def test_delivered_once_then_duplicate_avoided(deliverer, api, redis_client, namespace):
    envelope = make_envelope(EVENT, "evt-1")
    assert deliverer.handle(envelope).kind == "delivered"
    assert deliverer.handle(envelope).kind == "duplicate"
    assert api.delivered_ids() == {"evt-1": 1}
    assert redis_client.ttl(f"{namespace}:delivered:evt-1") > 6 * 24 * 3600
    assert not redis_client.exists(f"{namespace}:inflight:evt-1")
    counters = _counters(redis_client, namespace)
    assert counters["delivered"] == 1 and counters["duplicates_avoided"] == 1


def test_event_in_flight_elsewhere_is_deferred_not_sent(deliverer, api, redis_client, namespace):
    redis_client.set(f"{namespace}:inflight:evt-2", "another-worker", px=10_000)
    assert deliverer.handle(make_envelope(EVENT, "evt-2")).kind == "deferred"
    assert api.received() == []
    assert redis_client.zcard(f"{namespace}:delayed") == 1


def test_retry_parks_the_message_with_the_attempt_counted(
    deliverer, api, redis_client, namespace
):
    api.plan(respond(503))
    assert deliverer.handle(make_envelope(EVENT, "evt-3")).kind == "retry"
    delayed = DelayedQueue(redis_client, Keys(namespace, namespace))
    assert delayed.size() == 1
    time.sleep(0.15)
    assert delayed.move_due() == 1
    raw = json.loads(redis_client.rpop(namespace))
    args, _, _ = json.loads(base64.b64decode(raw["body"]))
    assert args[0]["id"] == "evt-3" and args[0]["attempt"] == 1


def test_retries_exhausted_goes_to_dead_letters(deliverer, api, redis_client, namespace):
    api.plan(respond(500))
    envelope = make_envelope(EVENT, "evt-4", attempt=2)  # max_retries is 2: this was the last
    assert deliverer.handle(envelope).kind == "dead_lettered"
    entry = DeadLetterStore(redis_client, Keys(namespace, namespace)).get("evt-4")
    assert entry["reason"] == "retries_exhausted"
    assert entry["attempts"] == 3
    assert entry["status"] == 500
    assert entry["first_enqueued_at"] == envelope["enqueued_at"]


@pytest.mark.parametrize(
    ("raw", "field"),
    [("not an envelope", "_schema"), ({"id": "bad id!", "payload": EVENT}, "id"),
     ({"id": "evt-5", "payload": {"event": "x", "costumer": {}}}, "costumer")],
)
def test_invalid_messages_are_dead_lettered(deliverer, api, redis_client, namespace, raw, field):
    outcome = deliverer.handle(raw)
    assert outcome.kind == "dead_lettered"
    entry = DeadLetterStore(redis_client, Keys(namespace, namespace)).get(outcome.event_id)
    assert entry["reason"] == "invalid"
    assert field in entry["error"]["details"]
    assert api.received() == []


def test_outcome_not_stored_when_redis_is_gone(private_redis, namespace, api):
    client = redis.Redis.from_url(private_redis.url, socket_timeout=1, socket_connect_timeout=1)
    d = Deliverer(_settings(private_redis.url, namespace, api.url), redis_client=client,
                  sleep=lambda s: None)
    try:
        private_redis.kill()
        with pytest.raises(OutcomeNotStored):
            d.handle(make_envelope(EVENT, "evt-6"))
        assert api.received() == []  # nothing sent without a ledger claim
    finally:
        d.http.close()
        client.close()


class _ReplyLostOnce:
    """A Redis client whose first transaction is applied and then loses its reply, as when
    Redis stops right after running it (a restart mid-run)."""

    def __init__(self, client):
        self._client = client
        self.lost = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def pipeline(self, *args, **kwargs):
        pipe = self._client.pipeline(*args, **kwargs)
        execute = pipe.execute

        def execute_then_lose_the_reply(*a, **kw):
            result = execute(*a, **kw)
            if not self.lost:
                self.lost += 1
                raise redis.ConnectionError("Connection closed by server.")
            return result

        pipe.execute = execute_then_lose_the_reply
        return pipe


def test_a_delivered_event_counts_once_when_the_outcome_reply_is_lost(
    redis_url, namespace, api, redis_client
):
    """The outcome write ran, its reply was lost, the write is retried: the retry finds the
    write's marker and does not count the delivery again (a Redis restart made a lanes test
    count 62 bulk deliveries for 60)."""
    flaky = _ReplyLostOnce(redis_client)
    d = Deliverer(_settings(redis_url, namespace, api.url), redis_client=flaky,
                  sleep=lambda s: None)
    try:
        assert d.handle(make_envelope(EVENT, "evt-lost-reply")).kind == "delivered"
    finally:
        d.http.close()
    assert flaky.lost == 1, "the reply was never lost: the test proves nothing"
    counters = _counters(redis_client, namespace)
    assert counters["delivered"] == 1 and counters["delivered:live"] == 1, counters
    assert api.delivered_ids() == {"evt-lost-reply": 1}
