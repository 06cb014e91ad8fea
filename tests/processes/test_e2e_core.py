"""End to end on real parts: producer -> real Redis -> real `voucherify-ingest worker`
subprocess -> the loopback stand-in API. Assertions are on what the stand-in received and on
what is in Redis."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.support.pipeline import APP_ID, APP_TOKEN, wait_quiet
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.errors import InvalidEvent
from voucherify_ingest.keys import Keys
from voucherify_ingest.standin import drop, respond, stall

pytestmark = pytest.mark.e2e


def _event(n: int) -> dict:
    return {
        "event": "order_paid",
        "customer": {
            "sourceId": f"user-{n}",
            "email": f"user{n}@example.com",
            "address": {"line1": "1 Main St", "postalCode": "00-001", "city": "Warsaw"},
        },
        "referral": {"code": "REF-1", "referrerId": "cust_abc"},
        "metadata": {"n": n, "total": 12.5},
    }


def _dlq(settings, redis_client) -> DeadLetterStore:
    return DeadLetterStore(redis_client, Keys.from_settings(settings))


def test_500_events_delivered_exactly_once_and_wire_valid(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    ids = producer.enqueue_events([_event(n) for n in range(250)])
    ids += [producer.enqueue_event(_event(n)) for n in range(250, 500)]
    start_worker(concurrency=8)
    assert standin.wait_for_delivered(500, timeout=90), f"only {len(standin.delivered())}"
    wait_quiet(redis_client, pipeline_settings)  # nothing left that could send a second copy
    received = standin.received()
    counts = standin.delivered_ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, "an event was delivered twice"
    assert len(received) == 500
    for record in received:
        assert record.schema_valid, record.schema_errors
        assert record.headers.get("X-App-Id") == APP_ID
        assert record.headers.get("X-App-Token") == APP_TOKEN
        assert record.headers.get("User-Agent", "").startswith("voucherify-ingest/")
        body = record.body
        assert body["customer"]["source_id"].startswith("user-")  # camelCase normalised
        assert body["customer"]["address"]["postal_code"] == "00-001"
        assert body["referral"]["referrer_id"] == "cust_abc"
        assert "sourceId" not in json.dumps(body)


def test_400_goes_to_dead_letters_at_once_without_retry(
    standin, producer, start_worker, pipeline_settings, redis_client
):
    standin.plan(respond(400, body={"code": 400, "key": "invalid_payload",
                                    "message": "Invalid payload", "request_id": "v-123"}))
    event_id = producer.enqueue_event(_event(1))
    start_worker()
    dlq = _dlq(pipeline_settings, redis_client)
    deadline = time.monotonic() + 20
    while dlq.get(event_id) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    entry = dlq.get(event_id)
    assert entry is not None, "the rejected event is not in the dead-letter store"
    assert entry["reason"] == "rejected"
    assert entry["status"] == 400
    assert entry["error"]["key"] == "invalid_payload"
    assert entry["error"]["request_id"] == "v-123"
    assert entry["attempts"] == 1
    assert entry["payload"]["customer"]["source_id"] == "user-1"
    time.sleep(1.5)  # a retry (backoff <= 1 s here) would have arrived by now
    assert [r.event_id for r in standin.received()] == [event_id]


def test_503_twice_then_200_is_delivered(standin, producer, start_worker):
    standin.plan(respond(503), respond(503))
    event_id = producer.enqueue_event(_event(2))
    start_worker()
    assert standin.wait_for_delivered(1, timeout=30)
    statuses = [(r.event_id, r.status) for r in standin.received()]
    assert statuses == [(event_id, 503), (event_id, 503), (event_id, 200)]


def test_429_retry_after_is_respected(standin, producer, start_worker):
    standin.plan(respond(429, headers={"Retry-After": "2"}))
    producer.enqueue_event(_event(3))
    start_worker()
    assert standin.wait_for_delivered(1, timeout=30)
    first, second = standin.received()
    assert first.status == 429 and second.status == 200
    assert second.mono - first.mono >= 2.0, f"retried after {second.mono - first.mono:.2f}s"


def test_stall_past_read_timeout_is_retried(standin, producer, start_worker):
    standin.plan(stall(3.5))  # the worker's read timeout is 2 s in these tests
    event_id = producer.enqueue_event(_event(4))
    # Policy resend: sent again blind (the default holds an in-doubt send: tests/processes/
    # test_indoubt.py).
    start_worker(VOUCHERIFY_IN_DOUBT="resend")
    # The stalled request is answered (too late for the client) and so is the retry: like the
    # real API, the stand-in cannot know the client gave up, so both arrive.
    assert standin.wait_for_received(2, timeout=40)
    first, second = sorted(standin.received(), key=lambda r: r.mono)[:2]
    assert first.event_id == second.event_id == event_id
    assert second.mono - first.mono >= 1.9, "the retry came before the read timeout"


def test_dropped_connection_is_retried(standin, producer, start_worker):
    standin.plan(drop())
    producer.enqueue_event(_event(5))
    start_worker(VOUCHERIFY_IN_DOUBT="resend")  # a drop after the body went out is in doubt
    assert standin.wait_for_delivered(1, timeout=30)
    assert len(standin.received()) == 2


def test_bad_payload_is_refused_at_the_door_and_nothing_is_enqueued(producer, redis_client):
    with pytest.raises(InvalidEvent) as info:
        producer.enqueue_event({"event": "x", "costumer": {"source_id": "u"}})
    assert "costumer" in info.value.messages
    assert "customer" in info.value.messages
    assert redis_client.llen(producer.queue) == 0


def test_sigterm_mid_run_loses_nothing(standin, producer, start_worker):
    standin.set_latency(0.05)
    ids = producer.enqueue_events([_event(n) for n in range(120)])
    first = start_worker(concurrency=4, name="worker-1")
    deadline = time.monotonic() + 30
    while len(standin.delivered()) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 0
    partial = len(standin.delivered())
    assert partial < 120, "the worker drained everything before SIGTERM: test proves nothing"
    start_worker(concurrency=4, name="worker-2")
    assert standin.wait_for_delivered(120, timeout=60)
    time.sleep(0.5)
    counts = standin.delivered_ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
