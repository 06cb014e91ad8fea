"""Dead letters end to end: real Redis, real `voucherify-ingest worker` and `dlq` subprocesses,
the loopback stand-in API. Assertions are on what the stand-in received and what is in Redis."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from producers import Producer
from tests.support.pipeline import make_env
from voucherify_ingest.deadletters import DeadLetterQueue, make_entry
from voucherify_ingest.events import validate_event
from voucherify_ingest.keys import Keys
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import respond

pytestmark = pytest.mark.e2e

DLQ_ARGV = [sys.executable, "-m", "voucherify_ingest.cli", "dlq"]


def _event(n: int) -> dict:
    return {
        "event": "order_paid",
        "customer": {"source_id": f"user-{n}", "email": f"user{n}@example.com"},
        "metadata": {"n": n, "total": 12.5},
    }


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _dlq_cli(env: dict, *args: str, timeout: float = 120, input: str | None = None):
    """Run `voucherify-ingest dlq ARGS` to completion (killed if it overruns ``timeout``)."""
    return subprocess.run([*DLQ_ARGV, *args], env={**_base_env(), **env}, input=input,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _base_env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def _seed(dlq: DeadLetterQueue, ids: list[str], now: float | None = None) -> None:
    now = time.time() if now is None else now
    with dlq.redis.pipeline(transaction=False) as pipe:
        for n, event_id in enumerate(ids):
            dlq.add(make_entry(event_id=event_id, payload=validate_event(_event(n)),
                               reason="retries_exhausted", error={"status": 503}, attempts=9,
                               enqueued_at="2024-01-01T00:00:00.000Z", now_s=now - 100 + n * 0.01),
                    pipe)
        pipe.execute()


@pytest.fixture
def dlq(pipeline_settings, redis_client) -> DeadLetterQueue:
    return DeadLetterQueue(redis_client, Keys.from_settings(pipeline_settings))


def _duplicates_avoided(dlq: DeadLetterQueue) -> int:
    """What the ledger stopped: 0 means no event reached the queue twice in the first place."""
    return int(dlq.redis.hget(dlq.keys.stats("counters"), "duplicates_avoided") or 0)


def _dlq_empty(dlq: DeadLetterQueue) -> None:
    client, keys = dlq.redis, dlq.keys
    assert dlq.count() == 0
    assert client.hlen(keys.dlq_entries) == 0
    assert client.hlen(dlq.counts_key) == 0
    assert all(client.zcard(keys.dlq_reason(r)) == 0 for r in ("retries_exhausted", "rejected"))


def test_300_dead_letters_replayed_after_recovery_are_each_delivered_once(
    standin, producer, start_worker, pipeline_env, dlq
):
    standin.set_down(503)
    ids = producer.enqueue_events([_event(n) for n in range(300)])
    start_worker(concurrency=8, VOUCHERIFY_MAX_RETRIES=1)
    _wait(lambda: dlq.count() == 300, 120, f"300 dead letters (have {dlq.count()})")
    stats = dlq.stats()
    assert stats["by_reason"]["retries_exhausted"] == 300
    assert stats["by_status"] == {"503": 300}
    assert {e["attempts"] for e in dlq.iter_entries()} == {2}
    assert standin.delivered() == [] and len(standin.received()) == 600

    standin.set_up()
    result = _dlq_cli(pipeline_env, "replay", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replayed"] == 300
    assert standin.wait_for_delivered(300, timeout=90), f"only {len(standin.delivered())}"
    time.sleep(1.0)  # anything sent twice would show up now
    counts = standin.delivered_ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1, "an event was delivered twice"
    assert len(standin.delivered()) == 300
    assert _duplicates_avoided(dlq) == 0, "the replay itself put an event on the queue twice"
    _dlq_empty(dlq)


def test_replay_killed_halfway_loses_nothing_and_a_second_replay_sends_nothing_twice(
    standin, start_worker, pipeline_env, dlq, redis_client, make_process
):
    ids = [f"evt-{n:04d}" for n in range(400)]
    _seed(dlq, ids)
    start_worker(concurrency=8)
    replay = make_process([*DLQ_ARGV, "replay", "--chunk-size", "5", "--rate", "100"],
                          env=pipeline_env, name="replay-1")
    _wait(lambda: dlq.count() <= 200, 30, "the replay to get halfway")
    replay.kill()
    assert replay.returncode == -signal.SIGKILL
    stored = {k.decode() for k in redis_client.hkeys(dlq.keys.dlq_entries)}
    assert 0 < len(stored) < 400, f"{len(stored)} left: not killed mid-way"

    keys = dlq.keys
    _wait(lambda: len(standin.delivered()) >= 400 - len(stored)
          and redis_client.llen(keys.queue) == 0
          and redis_client.hlen(f"{keys.prefix}:unacked") == 0, 60, "the worker to drain")
    time.sleep(1.0)
    delivered = standin.delivered_ids()
    assert stored.isdisjoint(delivered), "an entry is both stored and delivered"
    assert stored | set(delivered) == set(ids), "an entry was lost"
    assert max(delivered.values()) == 1

    result = _dlq_cli(pipeline_env, "replay", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["replayed"] == len(stored)
    assert standin.wait_for_delivered(400, timeout=60)
    time.sleep(1.0)
    counts = standin.delivered_ids()
    assert set(counts) == set(ids) and max(counts.values()) == 1
    assert len(standin.delivered()) == 400
    assert _duplicates_avoided(dlq) == 0, "a replay put an event on the queue twice"
    _dlq_empty(dlq)


def test_two_replays_at_once_enqueue_each_entry_once(pipeline_env, dlq, redis_client,
                                                    make_process):
    ids = [f"evt-{n:04d}" for n in range(1000)]
    _seed(dlq, ids)
    argv = [*DLQ_ARGV, "replay", "--chunk-size", "5", "--rate", "250"]
    procs = [make_process(argv, env=pipeline_env, name=f"replay-{i}") for i in (1, 2)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0, proc.tail()
    queued = []
    assert redis_client.llen(dlq.keys.queue) == 0  # `dlq replay` defaults to the bulk lane
    for raw in redis_client.lrange(dlq.keys.lane_queue("bulk"), 0, -1):
        queued.append(json.loads(raw)["headers"]["id"])  # the task id is the event id
    assert len(queued) == 1000 and set(queued) == set(ids)
    moved = []
    for proc in procs:
        lines = [json.loads(line) for line in proc.output().splitlines()
                 if line.startswith("{") and '"dlq_replayed"' in line]
        moved.append(lines[0]["replayed"])
    assert sum(moved) == 1000
    assert min(moved) > 0, f"the replays did not overlap ({moved}): the test proved nothing"
    _dlq_empty(dlq)


def test_worker_killed_after_the_post_before_the_ack_does_not_send_again(
    standin, make_redis_server, namespace, start_worker
):
    """Hit the window exactly: while the stand-in holds the POST, the Redis user loses ZREM and
    HDEL, which kombu's ack needs and the delivery ledger does not. The 200 lands in the ledger,
    the ack is refused, the worker is SIGKILLed, and the message comes back after the visibility
    timeout to a second worker."""
    server = make_redis_server(appendonly=False)  # ACL changes must not touch other tests
    client = server.client()
    fast = {"VOUCHERIFY_VISIBILITY_TIMEOUT_S": "11", "VOUCHERIFY_CONNECT_TIMEOUT_S": "0.5",
            "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S": "0.5"}
    settings = Settings.from_env(make_env(server.url, namespace, standin.url, **fast))
    keys = Keys.from_settings(settings)
    unacked = f"{keys.prefix}:unacked"
    producer = Producer(settings)
    try:
        standin.set_latency(1.5)
        event_id = producer.enqueue_event(_event(1))
        first = start_worker(concurrency=1, name="worker-1", REDIS_URL=server.url, **fast)
        _wait(lambda: client.exists(keys.inflight(event_id)), 20, "the POST to start")
        client.execute_command("ACL", "SETUSER", "default", "-zrem", "-hdel")
        try:
            assert standin.wait_for_delivered(1, timeout=10)
            _wait(lambda: client.exists(keys.delivered(event_id)), 10, "the ledger entry")
            first.wait_for_output('"delivered"', timeout=10)
            time.sleep(0.5)  # the ack is attempted now, and refused
            assert client.hlen(unacked) == 1, "the message was acked: the window was missed"
            first.kill()
        finally:
            client.execute_command("ACL", "SETUSER", "default", "+@all")
        standin.set_latency(0)
        second = start_worker(concurrency=1, name="worker-2", REDIS_URL=server.url, **fast)
        second.wait_for_output("duplicate_avoided", timeout=45)
        _wait(lambda: client.hlen(unacked) == 0, 10, "the redelivered message to be acked")
        time.sleep(0.5)
        assert [r.event_id for r in standin.received()] == [event_id], "sent again"
        assert client.llen(keys.queue) == 0
        assert int(client.hget(keys.stats("counters"), "duplicates_avoided")) == 1
    finally:
        producer.close()
        client.close()


def test_ledger_stops_a_redelivery_and_a_replay_of_a_delivered_event(
    standin, producer, start_worker, pipeline_env, dlq, redis_client
):
    event_id = producer.enqueue_event(_event(1))
    worker = start_worker(VOUCHERIFY_LEDGER_TTL_S=3600)
    assert standin.wait_for_delivered(1, timeout=20)
    _wait(lambda: redis_client.exists(dlq.keys.delivered(event_id)), 5, "the ledger entry")
    assert 3500 < redis_client.ttl(dlq.keys.delivered(event_id)) <= 3600
    assert Settings().ledger_ttl_s == 7 * 24 * 3600

    producer.enqueue_event(_event(1), event_id=event_id)  # a redelivered message
    dlq.add(make_entry(event_id=event_id, payload=validate_event(_event(1)),
                       reason="retries_exhausted", error={"status": 503}, attempts=9))
    result = _dlq_cli(pipeline_env, "replay", "--json")
    assert json.loads(result.stdout)["replayed"] == 1

    _wait(lambda: _duplicates_avoided(dlq) == 2, 20, "two duplicates avoided")
    time.sleep(0.5)
    assert len(standin.received()) == 1
    assert worker.output().count('"duplicate_avoided"') == 2
    _dlq_empty(dlq)


def _reject_three(standin, producer, dlq) -> list[str]:
    body = {"code": 422, "key": "missing_metadata", "message": "metadata.plan is required",
            "request_id": "v-1"}
    standin.plan(*[respond(422, body=body) for _ in range(3)])
    ids = producer.enqueue_events([_event(n) for n in range(3)])
    _wait(lambda: dlq.count() == 3, 30, "three rejected events in the dead-letter queue")
    return ids


def _edit(path) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        record["payload"]["metadata"]["plan"] = "gold"  # the operator's fix
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _assert_fixed_once(standin, ids) -> None:
    assert standin.wait_for_delivered(3, timeout=30)
    time.sleep(0.5)
    delivered = standin.delivered()
    assert sorted(r.event_id for r in delivered) == sorted(ids), "the original ids are kept"
    assert all(r.body["metadata"]["plan"] == "gold" for r in delivered)
    assert len(standin.received()) == 6  # 3 rejected, 3 delivered after the fix


def test_export_edit_enqueue_round_trip_through_the_producer_api(
    standin, producer, start_worker, pipeline_env, dlq, tmp_path
):
    start_worker()
    ids = _reject_three(standin, producer, dlq)
    target = tmp_path / "rejected.ndjson"
    result = _dlq_cli(pipeline_env, "export", str(target), "--reason", "rejected")
    assert result.returncode == 0, result.stderr
    _edit(target)
    for line in target.read_text().splitlines():
        record = json.loads(line)
        assert record["dead_letter"]["error"]["key"] == "missing_metadata"
        producer.enqueue_event(record["payload"], event_id=record["event_id"])
    _assert_fixed_once(standin, ids)
    purge = _dlq_cli(pipeline_env, "purge", "--yes", "--json",
                     *[arg for i in ids for arg in ("--id", i)])
    assert json.loads(purge.stdout)["purged"] == 3
    _dlq_empty(dlq)


def _enqueue_has_file_option() -> bool:
    help_text = subprocess.run([sys.executable, "-m", "voucherify_ingest.cli", "enqueue", "--help"],
                               capture_output=True, text=True, timeout=60, check=False).stdout
    return "--file" in help_text


def test_export_edit_enqueue_file_round_trip_through_the_cli(
    standin, producer, start_worker, pipeline_env, dlq, tmp_path
):
    # The product's own command: a crash of `enqueue --help` must fail here, not skip.
    assert _enqueue_has_file_option(), "`voucherify-ingest enqueue --file` is missing"
    start_worker()
    ids = _reject_three(standin, producer, dlq)
    target = tmp_path / "rejected.ndjson"
    assert _dlq_cli(pipeline_env, "export", str(target)).returncode == 0
    _edit(target)
    loaded = subprocess.run([sys.executable, "-m", "voucherify_ingest.cli", "enqueue", "--file",
    str(target)],
                            env={**_base_env(), **pipeline_env}, capture_output=True, text=True,
                            timeout=60, check=False)
    assert loaded.returncode == 0, loaded.stderr + loaded.stdout
    _assert_fixed_once(standin, ids)


def test_worker_applies_retention_and_logs_how_many_it_dropped(start_worker, dlq):
    now = time.time()
    with dlq.redis.pipeline(transaction=False) as pipe:
        for n in range(60):
            at = now - 7200 - n if n < 10 else now - 100 + n
            dlq.add(make_entry(event_id=f"old-{n:03d}", payload=_event(n), reason="rejected",
                               error={"status": 400}, now_s=at), pipe)
        pipe.execute()
    worker = start_worker(VOUCHERIFY_DLQ_MAX_AGE_S=3600, VOUCHERIFY_DLQ_MAX_LEN=25)
    line = worker.wait_for_output(re.compile(r'\{[^\n]*"dlq_trimmed"[^\n]*\}'), timeout=20)
    record = json.loads(line)
    assert (record["dropped"], record["by_age"], record["by_len"]) == (35, 10, 25)
    assert dlq.count() == 25
    assert [e["id"] for e in dlq.list(limit=25).entries] == [
        f"old-{n:03d}" for n in range(59, 34, -1)]
