"""In-doubt sends end to end: a real worker process, real Redis, the stand-in recording the
event while stalling its answer past the worker's read timeout (2 s in these tests).

Each test asserts what the stand-in recorded (how many 200s per event id, how many lookups)
and what Redis holds (dead letters with their evidence, the ledger, the counters).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support.waiting import wait_for
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.indoubt import (
    HELD,
    LOOKUP_FAILED,
    LOOKUPS,
    RESENT,
    VERIFIED_ABSENT,
    VERIFIED_DELIVERED,
)
from voucherify_ingest.keys import Keys
from voucherify_ingest.standin import drop, stall
from voucherify_ingest.stats import StatsRecorder

pytestmark = pytest.mark.e2e

MARKER = "ingest_event_id"
STALL_S = 3.0  # past the 2 s read timeout of tests.support.pipeline.make_env
VERIFY = {"VOUCHERIFY_IN_DOUBT": "verify", "VOUCHERIFY_EVENT_ID_METADATA_KEY": MARKER,
          "VOUCHERIFY_IN_DOUBT_GRACE_S": "4", "VOUCHERIFY_IN_DOUBT_LOOKUP_RETRIES": "2"}


def _event(n: int, name: str = "order_paid") -> dict:
    return {"event": name, "customer": {"source_id": f"doubt-{n}"}, "metadata": {"n": n}}


def _counters(redis_client, settings) -> dict[str, int]:
    raw = redis_client.hgetall(StatsRecorder(settings.key_prefix).counters_key)
    return {k.decode(): int(v) for k, v in raw.items()}


def _dlq(redis_client, settings) -> DeadLetterStore:
    return DeadLetterStore(redis_client, Keys.from_settings(settings))


def _settled(redis_client, settings, event_id: str) -> bool:
    keys = Keys.from_settings(settings)
    return (redis_client.exists(keys.delivered(event_id))
            or redis_client.hexists(keys.dlq_entries, event_id)) and not redis_client.exists(
                keys.sent(event_id))


def test_hold_dead_letters_a_stalled_send_with_its_evidence_and_never_resends(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    standin.plan(stall(STALL_S))
    event_id = producer.enqueue_event(_event(1))
    start_worker()  # no marker key: the default policy is hold
    dlq = _dlq(redis_client, pipeline_settings)
    entry = wait_for(lambda: dlq.get(event_id), 30, "the in-doubt dead letter")
    assert entry["reason"] == "in_doubt"
    evidence = entry["in_doubt"]
    assert evidence["sent_by"] and evidence["sent_at"].endswith("Z")
    assert "timed out" in evidence["what"]
    wait_for(lambda: standin.delivered_ids().get(event_id) == 1, 10, "the stalled 200")
    assert len(standin.received()) == 1, "an in-doubt send was sent again"
    counters = _counters(redis_client, pipeline_settings)
    assert counters[HELD] == 1 and counters["dead_lettered:in_doubt"] == 1
    # the send record stays while the event is held: a copy of the message is not sent
    assert redis_client.exists(Keys.from_settings(pipeline_settings).sent(event_id))


def test_verify_finds_the_stalled_event_and_records_it_delivered_without_a_resend(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    standin.plan(stall(STALL_S))
    event_id = producer.enqueue_event(_event(2))
    start_worker(**VERIFY)
    wait_for(lambda: _settled(redis_client, pipeline_settings, event_id), 30, "settled")
    keys = Keys.from_settings(pipeline_settings)
    assert redis_client.exists(keys.delivered(event_id))
    # found before the stalled 200 was even answered (the API processed it on arrival)
    wait_for(lambda: standin.delivered_ids().get(event_id), 10, "the stalled 200")
    assert standin.delivered_ids() == {event_id: 1}
    (record,) = standin.received()
    assert record.body["metadata"] == {"n": 2, MARKER: event_id}  # the marker on the wire
    counters = _counters(redis_client, pipeline_settings)
    assert counters[VERIFIED_DELIVERED] == 1 and counters[LOOKUPS] >= 1
    assert standin.stats()["lookups"] == counters[LOOKUPS]
    assert _dlq(redis_client, pipeline_settings).get(event_id) is None


def test_verify_waits_out_an_activity_lag_longer_than_one_lookup(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    """The activity shows up 3 s after the event: the first lookup(s) see nothing, and the
    event is not resent while the grace (4 s) lasts; a later lookup finds it."""
    standin.set_activity(lag_s=3.0)
    standin.plan(stall(2.5))
    event_id = producer.enqueue_event(_event(3))
    start_worker(**{**VERIFY, "VOUCHERIFY_IN_DOUBT_GRACE_S": "8"})
    wait_for(lambda: _settled(redis_client, pipeline_settings, event_id), 40, "settled")
    wait_for(lambda: standin.delivered_ids().get(event_id), 10, "the stalled 200")
    assert standin.delivered_ids() == {event_id: 1}, "the late activity caused a resend"
    counters = _counters(redis_client, pipeline_settings)
    assert counters[VERIFIED_DELIVERED] == 1
    assert counters[LOOKUPS] >= 2, "the first lookup should have come before the lag ended"


def test_verify_resends_once_the_grace_shows_the_event_absent(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    """The connection drops after the body went out (the stand-in records nothing): in doubt;
    the lookups find nothing; after the grace the event is resent, once."""
    standin.plan(drop())
    event_id = producer.enqueue_event(_event(4))
    start_worker(**VERIFY)
    wait_for(lambda: standin.delivered_ids().get(event_id), 40, "the resend")
    wait_for(lambda: _settled(redis_client, pipeline_settings, event_id), 10, "settled")
    assert standin.delivered_ids() == {event_id: 1}
    first, second = sorted(standin.received(), key=lambda r: r.mono)
    assert second.mono - first.mono >= 4.0 - 0.2, "resent before the grace had passed"
    counters = _counters(redis_client, pipeline_settings)
    assert counters[VERIFIED_ABSENT] == 1 and counters[LOOKUPS] >= 1


@pytest.mark.parametrize("failure", [{"fail": 503}, {"stall_s": STALL_S}],
                         ids=["lookup-503", "lookup-timeout"])
def test_a_failing_lookup_is_retried_then_held_not_resent(
    standin, producer, start_worker, redis_client, pipeline_settings, failure
):
    standin.set_activity(**failure)
    standin.plan(stall(STALL_S))
    event_id = producer.enqueue_event(_event(5))
    start_worker(**VERIFY)
    dlq = _dlq(redis_client, pipeline_settings)
    entry = wait_for(lambda: dlq.get(event_id), 60, "the held event")
    assert entry["reason"] == "in_doubt" and entry["in_doubt"]["lookup_error"]
    wait_for(lambda: standin.delivered_ids().get(event_id), 10, "the stalled 200")
    assert len(standin.received()) == 1, "a failed lookup led to a blind resend"
    counters = _counters(redis_client, pipeline_settings)
    assert counters[LOOKUP_FAILED] == 1
    assert counters[LOOKUPS] == 3 == standin.stats()["lookups"]  # 1 + 2 retries


def test_resend_policy_sends_again_and_counts_it(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    standin.plan(stall(STALL_S))
    event_id = producer.enqueue_event(_event(6))
    start_worker(VOUCHERIFY_IN_DOUBT="hold", VOUCHERIFY_IN_DOUBT_EVENTS="order_paid=resend")
    wait_for(lambda: standin.delivered_ids().get(event_id) == 2, 30, "the blind resend")
    wait_for(lambda: _counters(redis_client, pipeline_settings).get(RESENT) == 1, 10, "counted")


def test_replay_of_held_events_sends_them(
    standin, producer, start_worker, redis_client, pipeline_settings, pipeline_env
):
    standin.plan(drop())  # nothing recorded: the operator checks, then replays
    event_id = producer.enqueue_event(_event(7))
    start_worker()
    dlq = _dlq(redis_client, pipeline_settings)
    wait_for(lambda: dlq.get(event_id), 30, "the held event")
    result = subprocess.run(
        [sys.executable, "-m", "voucherify_ingest.cli", "dlq", "replay", "--reason", "in_doubt"],
        env={**os.environ, **pipeline_env}, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "replayed 1 " in result.stdout
    wait_for(lambda: standin.delivered_ids().get(event_id) == 1, 30, "the replayed event")


def test_in_doubt_counts_show_in_stats_metrics_and_dlq_stats(
    standin, producer, start_worker, redis_client, pipeline_settings, pipeline_env
):
    from prometheus_client import generate_latest

    from voucherify_ingest.metrics import build_registry

    standin.plan(stall(STALL_S))
    event_id = producer.enqueue_event(_event(8))
    start_worker()
    wait_for(lambda: _dlq(redis_client, pipeline_settings).get(event_id), 30, "the held event")

    def cli(*args: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "voucherify_ingest.cli", *args, "--json"],
            env={**os.environ, **pipeline_env}, capture_output=True, text=True, timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    assert cli("stats")["in_doubt"]["held"] == 1
    dlq_stats = cli("dlq", "stats")
    assert dlq_stats["in_doubt"]["held"] == 1 and dlq_stats["by_reason"]["in_doubt"] == 1
    text = generate_latest(build_registry(redis_client, pipeline_settings)).decode()
    assert 'voucherify_ingest_in_doubt_total{outcome="held"} 1.0' in text
    assert "voucherify_ingest_in_doubt_lookups_total 0.0" in text
