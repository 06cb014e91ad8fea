"""Batch messages, end to end: a backfill's batches consumed by real workers.

First ``Deliverer.handle_batch`` on a real Redis and the loopback stand-in (no Celery), then
real ``voucherify-ingest worker`` subprocesses: every event of a batch is delivered, retried or
dead-lettered on its own; a worker SIGKILLed mid-batch loses nothing and the ledger stops the
re-sends. Assertions are on what the stand-in received and what is in Redis.
"""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest

from producers.bulk import BulkLoader, Record
from tests.support.pipeline import APP_ID, APP_TOKEN, wait_quiet
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import DELIVER_BATCH, make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, respond
from worker.delivery import Deliverer

pytestmark = pytest.mark.e2e


def event(n: int) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"},
            "metadata": {"n": n, "total": 19.99}}


def counters(redis_client, prefix: str) -> dict[str, int]:
    raw = redis_client.hgetall(f"{prefix}:stats:counters")
    return {k.decode(): int(v) for k, v in raw.items()}


def backfill(producer, records: list[dict], batch_size: int, **kwargs):
    loader = BulkLoader(producer, batch_size=batch_size, **kwargs)
    return loader.run(Record(n + 1, r) for n, r in enumerate(records))


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- Deliverer.handle_batch (no Celery) -------------------------------------------------------


@pytest.fixture
def api():
    server = StandIn(APP_ID, APP_TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def deliverer(redis_url, namespace, api, redis_client):
    settings = Settings.from_env({
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api.url, "VOUCHERIFY_APP_ID": APP_ID,
        "VOUCHERIFY_APP_TOKEN": APP_TOKEN, "VOUCHERIFY_MAX_RETRIES": "2",
        "VOUCHERIFY_BACKOFF_BASE_S": "0.05", "VOUCHERIFY_BACKOFF_MAX_S": "0.1",
    })
    d = Deliverer(settings, redis_client=redis_client, sleep=lambda s: None)
    yield d
    d.http.close()


def test_batch_events_each_get_their_own_outcome(deliverer, api, redis_client, namespace):
    redis_client.set(f"{namespace}:delivered:e-1", 1)  # delivered earlier
    redis_client.set(f"{namespace}:inflight:e-2", "other-worker", px=10_000)  # being sent
    api.plan(respond(400), respond(503))  # e-3 rejected, e-4 retried; e-5 fine
    envelopes = [make_envelope(event(n), f"e-{n}") for n in range(1, 6)]
    envelopes.append(make_envelope(event(5), "e-5"))  # the same event twice in one batch
    envelopes.append({"id": "bad id!", "payload": event(7)})
    outcomes = deliverer.handle_batch(envelopes)
    assert [(o.kind, o.event_id) for o in outcomes[:6]] == [
        ("duplicate", "e-1"), ("deferred", "e-2"), ("dead_lettered", "e-3"), ("retry", "e-4"),
        ("delivered", "e-5"), ("duplicate", "e-5")]
    assert outcomes[6].kind == "dead_lettered"
    assert [r.event_id for r in api.received()] == ["e-3", "e-4", "e-5"]
    assert api.delivered_ids() == {"e-5": 1}
    dlq = DeadLetterStore(redis_client, Keys(namespace, namespace))
    assert dlq.get("e-3")["reason"] == "rejected"
    assert redis_client.zcard(f"{namespace}:delayed") == 2  # e-2 deferred, e-4 retry
    assert redis_client.exists(f"{namespace}:delivered:e-5")
    assert not redis_client.exists(f"{namespace}:inflight:e-5")
    assert not redis_client.exists(f"{namespace}:inflight:e-3")
    assert redis_client.get(f"{namespace}:inflight:e-2") == b"other-worker"
    stats = counters(redis_client, namespace)
    assert stats["delivered"] == 1 and stats["duplicates_avoided"] == 2
    assert int(redis_client.hget(f"{namespace}:stats:latency", "count")) == 1


def test_a_batch_out_of_time_requeues_its_unstarted_events(
    deliverer, api, redis_client, namespace
):
    deliverer.batch_budget_s = 0.0  # every event after the first is "too late"
    envelopes = [make_envelope(event(n), f"r-{n}") for n in range(4)]
    outcomes = deliverer.handle_batch(envelopes)
    assert [o.kind for o in outcomes] == ["delivered", "deferred", "deferred", "deferred"]
    assert api.delivered_ids() == {"r-0": 1}
    (raw,) = redis_client.lrange(namespace, 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == DELIVER_BATCH
    args = json.loads(base64.b64decode(message["body"]))[0]
    assert [e["id"] for e in args[0]] == ["r-1", "r-2", "r-3"]
    for n in (1, 2, 3):  # their batch claims were released for whoever takes them next
        assert not redis_client.exists(f"{namespace}:inflight:r-{n}")


def test_a_stale_batch_claim_is_taken_again_before_sending(
    deliverer, api, redis_client, namespace
):
    deliverer.claim_fresh_s = 0.0  # every batch claim counts as possibly lapsed
    real_claim = deliverer.ledger.claim

    def steal_then_claim(event_id, owner):
        if event_id == "s-1":  # another worker took it after our batch claim lapsed
            redis_client.set(f"{namespace}:inflight:s-1", "other-worker", px=10_000)
        return real_claim(event_id, owner)

    deliverer.ledger.claim = steal_then_claim
    outcomes = deliverer.handle_batch([make_envelope(event(n), f"s-{n}") for n in range(3)])
    assert [o.kind for o in outcomes] == ["delivered", "deferred", "delivered"]
    assert sorted(api.delivered_ids()) == ["s-0", "s-2"]


# -- real workers -----------------------------------------------------------------------------


def test_worker_consumes_a_backfill_of_batch_messages_exactly_once(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    records = [event(n) for n in range(400)]
    summary = backfill(producer, records, batch_size=50)
    assert summary.enqueued == 400 and summary.messages == 8
    start_worker(concurrency=4)
    assert standin.wait_for_delivered(400, timeout=90), f"only {len(standin.delivered())}"
    wait_quiet(redis_client, pipeline_settings)
    counts = standin.delivered_ids()
    assert len(counts) == 400 and max(counts.values()) == 1
    assert all(r.schema_valid for r in standin.received())
    prefix = pipeline_settings.key_prefix
    assert wait_until(lambda: counters(redis_client, prefix).get("delivered") == 400, 10)
    assert wait_until(lambda: redis_client.llen(producer.queue) == 0
                      and redis_client.hlen(f"{prefix}:unacked") == 0, 10)

    # The same file again: the enqueue-side check skips every id the ledger has ...
    again = backfill(producer, records, batch_size=50)
    assert (again.enqueued, again.duplicates) == (0, 400)
    # ... and without it, the workers' ledger claim stops every re-send.
    forced = backfill(producer, records[:100], batch_size=50, check_ledger=False)
    assert forced.enqueued == 100
    assert wait_until(
        lambda: counters(redis_client, prefix).get("duplicates_avoided") == 100, 30)
    assert len(standin.received()) == 400


def test_one_bad_event_in_a_batch_is_retried_or_dead_lettered_alone(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    standin.plan(respond(503), respond(422))  # the first two POSTs fail, differently
    backfill(producer, [event(n) for n in range(20)], batch_size=20)
    start_worker(concurrency=1)
    assert standin.wait_for_delivered(19, timeout=60)
    first, second = standin.received()[:2]
    dlq = DeadLetterStore(redis_client, Keys.from_settings(pipeline_settings))
    assert wait_until(lambda: dlq.get(second.event_id) is not None, 10)
    assert dlq.get(second.event_id)["reason"] == "rejected"
    wait_quiet(redis_client, pipeline_settings)  # nothing left that could send twice
    counts = standin.delivered_ids()
    assert first.event_id in counts and second.event_id not in counts
    assert len(counts) == 19 and max(counts.values()) == 1
    assert wait_until(lambda: redis_client.hlen(f"{pipeline_settings.key_prefix}:unacked") == 0,
                      10)


def test_worker_killed_mid_batch_loses_nothing_and_the_ledger_stops_resends(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    standin.set_latency(0.1)  # a slow API: the kill lands mid-batch
    records = [event(n) for n in range(60)]
    backfill(producer, records, batch_size=20)
    first = start_worker(concurrency=1, name="worker-1")
    assert standin.wait_for_delivered(8, timeout=60)
    first.send_signal(signal.SIGKILL, group=True)
    first.wait(timeout=10)
    before = standin.delivered_ids()
    assert 8 <= len(before) < 20, "the kill did not land inside the first batch"
    # Its batch comes back after the visibility timeout (20 s here) to the next worker.
    start_worker(concurrency=1, name="worker-2")
    assert standin.wait_for_delivered(60, timeout=90), f"only {len(standin.delivered())}"
    wait_quiet(redis_client, pipeline_settings, timeout=40)
    counts = standin.delivered_ids()
    assert len(counts) == 60, "an event was lost"
    resent = [i for i, n in counts.items() if n > 1]
    # At most the one POST in flight at the kill (its answer never reached the worker) is
    # sent again; every event the worker had recorded as delivered is stopped by the ledger.
    assert len(resent) <= 1, f"re-sent: {resent}"
    stats = counters(redis_client, pipeline_settings.key_prefix)
    assert stats.get("duplicates_avoided", 0) >= len(before) - 1
