"""Seeing the flow: the snapshot read from Redis (voucherify_ingest/flow.py), `voucherify-ingest
stats`, and
the Prometheus exporter scraped over HTTP with its numbers checked against what the stand-in
received.

Message decoding and histogram arithmetic are pure logic; everything else runs on a real Redis,
real worker and exporter processes and the loopback stand-in.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producers import Producer
from tests.support.pipeline import make_env, worker_argv
from voucherify_ingest.deadletters import DeadLetterQueue, make_entry
from voucherify_ingest.flow import FlowReader, enqueued_at_of, latency_summary
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import batch_message, event_message, make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import respond
from voucherify_ingest.stats import StatsRecorder
from worker.ratelimit import RateLimiter

CLI = [sys.executable, "-m", "voucherify_ingest.cli"]


def _event(n: int) -> dict:
    return {"event": "order_paid", "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


# -- pure logic ------------------------------------------------------------------------------


def test_enqueued_at_is_read_from_event_and_batch_messages():
    one = make_envelope(_event(1), "ev-1", enqueued_at="2026-01-02T03:04:05.500Z")
    two = make_envelope(_event(2), "ev-2", enqueued_at="2026-01-02T03:04:01.000Z")
    assert enqueued_at_of(event_message(one, "q")) == 1767323045.5
    assert enqueued_at_of(batch_message([one, two], "q").encode()) == 1767323041.0  # oldest
    assert enqueued_at_of(None) is None
    assert enqueued_at_of(b"not json") is None
    assert enqueued_at_of(json.dumps({"body": "!!", "properties": {}})) is None
    no_time = {**one, "enqueued_at": None}
    assert enqueued_at_of(event_message(no_time, "q")) is None


def test_latency_summary_accumulates_buckets():
    summary = latency_summary({"le_5": 2, "le_50": 1, "le_inf": 1, "count": 4, "sum_ms": 20040})
    buckets = dict(summary["buckets_ms"])
    assert buckets[5.0] == 2 and buckets[25.0] == 2 and buckets[50.0] == 3
    assert buckets[float("inf")] == 4
    assert summary["mean_ms"] == 5010.0
    assert summary["p50_le_ms"] == 5.0 and summary["p95_le_ms"] == float("inf")
    assert latency_summary({})["mean_ms"] is None


# -- the snapshot on a real Redis ------------------------------------------------------------


@pytest.fixture
def settings(redis_url, namespace) -> Settings:
    return Settings.from_env(make_env(redis_url, namespace, "http://127.0.0.1:9",
                                      VOUCHERIFY_RATE_LIMIT="60/min"))


def test_snapshot_reads_queue_counters_dead_letters_limiter_and_workers(settings, redis_client):
    keys = Keys.from_settings(settings)
    producer = Producer(settings, client=redis_client)
    first = producer.enqueue_event(_event(0))
    time.sleep(1.1)
    producer.enqueue_events([_event(n) for n in range(1, 5)])
    redis_client.hset(keys.unacked, mapping={"tag-1": "[]", "tag-2": "[]"})
    redis_client.zadd(keys.delayed, {"m1": 1, "m2": 2, "m3": 3})

    recorder = StatsRecorder(settings.key_prefix)
    with redis_client.pipeline() as pipe:
        for latency_ms in (3, 40, 40, 700):
            recorder.record(pipe, {"delivered": 1, "attempts": 1}, latency_ms)
        recorder.record(pipe, {"retried": 2, "http_429": 1, "attempts": 2})
        recorder.record(pipe, {"dead_lettered:rejected": 1, "attempts": 1})
        pipe.execute()
    dlq = DeadLetterQueue(redis_client, keys)
    for n, reason in enumerate(("rejected", "rejected", "auth")):
        dlq.add(make_entry(event_id=f"dead-{n}", payload=_event(n), reason=reason))
    recorder.heartbeat(redis_client, "voucherify-1@host-a")
    redis_client.zadd(recorder.workers_key, {"voucherify-2@host-b": time.time() - 60})
    limiter = RateLimiter.from_settings(settings, redis_client)
    for _ in range(3):
        assert limiter.acquire(max_wait_s=10)[0]
    limiter.on_rate_limited(30.0)

    reader = FlowReader(redis_client, settings)
    snap = reader.snapshot()
    assert snap.queue_depth == 5
    assert 1.0 <= snap.oldest_age_s < 30, "the oldest event is the first enqueued"
    assert json.loads(redis_client.lindex(keys.queue, -1))["headers"]["id"] == first
    assert snap.in_flight == 2
    assert snap.delayed == 3
    assert snap.totals["delivered"] == 4 and snap.totals["retried"] == 2
    assert snap.totals["http_429"] == 1 and snap.totals["attempts"] == 7
    assert snap.dead_lettered_total == {"rejected": 1}
    assert snap.this_minute == {"delivered": 4, "retried": 2, "failed": 3}
    assert snap.dead_letters["rejected"] == 2 and snap.dead_letters["auth"] == 1
    assert snap.dead_letters["invalid"] == 0 and snap.dead_letters_total == 3
    assert snap.latency["count"] == 4 and snap.latency["p50_le_ms"] == 50.0
    assert snap.workers_alive == ["voucherify-1@host-a"]
    assert snap.workers_stale == ["voucherify-2@host-b"]
    lim = snap.limiter
    assert lim.configured == "60/min" and lim.per_s == 1.0
    assert 25 < lim.cooldown_left_s <= 30 and lim.cooldown_until.endswith("Z")
    assert lim.current_wait_s >= lim.cooldown_left_s - 0.1, "no slot before the cool-down ends"

    # A minute later this minute is a complete one: per-minute rates average five of them.
    later = reader.snapshot(now_s=time.time() + 60)
    assert later.per_minute["delivered"] == round(4 / 5, 2)
    assert later.per_minute["failed"] == round(3 / 5, 2)
    assert later.this_minute["delivered"] == 0


def test_snapshot_of_an_idle_deployment(settings, redis_client):
    snap = FlowReader(redis_client, settings.replace(rate_limit="off")).snapshot()
    assert snap.queue_depth == 0 and snap.oldest_age_s is None and snap.in_flight == 0
    assert snap.per_minute["delivered"] == 0 and snap.workers_alive == []
    assert snap.limiter.configured == "off" and snap.limiter.current_wait_s == 0
    assert json.dumps(snap.as_dict())  # JSON-ready as is


# -- the stats command -----------------------------------------------------------------------


def _run(args, env, timeout=60):
    return subprocess.run(CLI + args, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_stats_command_human_json_and_watch(redis_url, namespace, redis_client):
    env = make_env(redis_url, namespace, "http://127.0.0.1:9")
    settings = Settings.from_env(env)
    Producer(settings, client=redis_client).enqueue_events([_event(n) for n in range(3)])
    dlq = DeadLetterQueue(redis_client, Keys.from_settings(settings))
    dlq.add(make_entry(event_id="dead-1", payload=_event(1), reason="retries_exhausted"))
    with redis_client.pipeline() as pipe:
        StatsRecorder(settings.key_prefix).record(pipe, {"delivered": 1}, 12_000.0)
        pipe.execute()

    human = _run(["stats"], env)
    assert human.returncode == 0, human.stderr
    assert re.search(r"queued\s+3\s+oldest waiting \d", human.stdout)
    assert re.search(r"dead letters\s+1\s+retries_exhausted 1", human.stdout)
    assert "rate limit      off" in human.stdout
    assert re.search(r"workers alive\s+0", human.stdout)
    assert "p95 > 10000 ms   (1 deliveries)" in human.stdout

    as_json = _run(["stats", "--json"], env)
    doc = _strict_json(as_json.stdout)
    assert doc["queue_depth"] == 3 and doc["dead_letters"]["retries_exhausted"] == 1
    assert doc["queue"] == f"{namespace}-events"
    assert doc["latency"]["p95_le_ms"] == "+Inf" and doc["latency"]["buckets_ms"][-1] == ["+Inf", 1]

    watch = _run(["stats", "--json", "--watch", "--count", "2", "-i", "0.2"], env)
    lines = watch.stdout.splitlines()
    assert len(lines) == 2 and all(_strict_json(line)["queue_depth"] == 3 for line in lines)


def _strict_json(text: str):
    """JSON as jq reads it: no NaN or Infinity."""
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def test_stats_fails_clearly_without_redis_and_hides_the_password(make_redis_server, namespace):
    password = "stats-secret-pw"  # noqa: S105 - a throwaway test server's password
    server = make_redis_server(password=password)
    env = make_env(server.url, namespace, "http://127.0.0.1:9")
    server.kill()
    result = _run(["stats"], env)
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    assert password not in result.stdout + result.stderr


# -- the exporter, scraped over HTTP, against the stand-in --------------------------------------


def _scrape(url: str) -> dict[str, float]:
    """Sample name{labels} -> value."""
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback only
        text = answer.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def _start_exporter(make_process, env) -> str:
    proc = make_process(CLI + ["metrics", "--port", "0", "--addr", "127.0.0.1"], env=env,
                        name="exporter")
    line = proc.wait_for_output(re.compile(r'"url": "(http://127\.0\.0\.1:\d+/metrics)"'),
                                timeout=20)
    return re.search(r"http://127\.0\.0\.1:\d+/metrics", line).group(0)


@pytest.mark.e2e
def test_exporter_numbers_match_what_the_stand_in_received(
    private_redis, namespace, standin, make_process
):
    env = make_env(private_redis.url, namespace, standin.url)
    settings = Settings.from_env(env)
    # Two workers: the counters are shared, the exporter sees both.
    workers = [make_process(worker_argv(2), env=env, name=f"worker-{i}") for i in (1, 2)]
    for proc in workers:
        proc.wait_for_output('"worker_ready"', timeout=30)
    url = _start_exporter(make_process, env)
    before = _scrape(url)
    assert before["voucherify_ingest_redis_up"] == 1
    assert before["voucherify_ingest_delivered_total"] == 0

    standin.plan(respond(503), respond(400), respond(429, headers={"Retry-After": "1"}))
    producer = Producer(settings)
    ids = producer.enqueue_events([_event(n) for n in range(30)])
    producer.close()
    assert standin.wait_for_delivered(29, timeout=60)  # one was rejected for good (400)

    def settled(s):
        return (s["voucherify_ingest_delivered_total"] == 29
                and s["voucherify_ingest_queue_depth"] == 0
                and s["voucherify_ingest_in_flight"] == 0
                and s["voucherify_ingest_delayed"] == 0)

    deadline = time.monotonic() + 20
    after = _scrape(url)
    while not settled(after) and time.monotonic() < deadline:
        time.sleep(0.2)
        after = _scrape(url)
    received = standin.received()
    statuses = [r.status for r in received]
    assert statuses.count(200) == 29 and len(standin.delivered_ids()) == 29
    assert after["voucherify_ingest_delivered_total"] == statuses.count(200)
    assert after["voucherify_ingest_attempts_total"] == len(received) == 32
    assert after["voucherify_ingest_retried_total"] == 1  # the 503
    assert after["voucherify_ingest_deferred_total"] == 1  # the 429: pacing, no retry used
    assert after["voucherify_ingest_http_429_total"] == statuses.count(429) == 1
    assert after['voucherify_ingest_dead_lettered_total{reason="rejected"}'] == 1
    assert after['voucherify_ingest_dead_letters{reason="rejected"}'] == 1
    assert after["voucherify_ingest_delivery_latency_seconds_count"] == 29
    assert after['voucherify_ingest_delivery_latency_seconds_bucket{le="+Inf"}'] == 29
    assert after["voucherify_ingest_delivery_latency_seconds_sum"] > 0
    assert after["voucherify_ingest_workers_alive"] == 2
    assert after["voucherify_ingest_queue_depth"] == 0
    assert after["voucherify_ingest_oldest_queued_age_seconds"] == 0
    assert after["voucherify_ingest_rate_limit_per_second"] == 0  # off in these tests
    assert set(standin.delivered_ids()) | {r.event_id for r in received if r.status == 400} == set(
        ids
    )

    # Redis gone: the exporter still answers, and says so.
    private_redis.kill()
    down = _scrape(url)
    assert down["voucherify_ingest_redis_up"] == 0
    assert "voucherify_ingest_delivered_total" not in down
    private_redis.start()
    assert _scrape(url)["voucherify_ingest_delivered_total"] == 29, "counters survive (AOF)"
