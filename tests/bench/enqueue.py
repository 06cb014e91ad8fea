"""Enqueue speed: a backfill's bulk load, and one event from a web app.

- Bulk: ``producers.bulk`` on an NDJSON file of realistic events (100,000; quick 10,000):
  read, validate, derive ids, check the ledger, pack batch messages, push. Validated events/s,
  beside a bare pipelined ``LPUSH`` of the same bytes (the file's lines, 1,000 per round trip).
- Single: ``producers.enqueue_event`` (validation included) 10,000 times, p50 and p99, beside a
  plain Celery app's ``send_task`` of the same payload to the same Redis (JSON serializer).

Medians of ``REPEATS`` runs, ours and the baseline alternating.
"""

from __future__ import annotations

import json
import os
import secrets
import time

import redis
from celery import Celery

from producers import Producer, enqueue_event, set_producer
from producers.bulk import DEFAULT_BATCH_SIZE, BulkLoader, open_input, read_records
from tests.bench import BenchContext, Row, median, percentile
from tests.bench.drain import event
from voucherify_ingest.settings import Settings

REPEATS = 3


def _settings(ctx: BenchContext, ns: str) -> Settings:
    return Settings.from_env({"REDIS_URL": ctx.redis_url, "VOUCHERIFY_QUEUE": f"{ns}-events",
                              "VOUCHERIFY_KEY_PREFIX": ns})


def write_file(path: str, n: int) -> int:
    size = 0
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            line = json.dumps(event(i)) + "\n"
            size += len(line)
            fh.write(line)
    return size


def bulk_ours(ctx: BenchContext, path: str) -> tuple[float, float]:
    """(events/s, CPU seconds per event) for one bulk load of ``path``."""
    ns = "be" + secrets.token_hex(4)
    producer = Producer(_settings(ctx, ns))
    source = open_input(path)
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        summary = BulkLoader(producer, batch_size=DEFAULT_BATCH_SIZE).run(read_records(source))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert summary.rejected == 0 and summary.enqueued == summary.read
        return summary.enqueued / wall, cpu / summary.enqueued
    finally:
        source.close()
        producer.redis.delete(producer.queue)
        producer.close()


def bulk_bare(ctx: BenchContext, path: str) -> float:
    """Events/s of pipelined LPUSHes of the file's lines, 1,000 per round trip."""
    queue = "bb" + secrets.token_hex(4)
    client = redis.Redis.from_url(ctx.redis_url)
    try:
        started = time.perf_counter()
        count = 0
        with open(path, "rb") as fh, client.pipeline(transaction=False) as pipe:
            chunk: list[bytes] = []
            for line in fh:
                chunk.append(line)
                if len(chunk) == 1000:
                    pipe.lpush(queue, *chunk)
                    pipe.execute()
                    count += len(chunk)
                    chunk = []
            if chunk:
                pipe.lpush(queue, *chunk)
                pipe.execute()
                count += len(chunk)
        return count / (time.perf_counter() - started)
    finally:
        client.delete(queue)
        client.close()


def single_ours(ctx: BenchContext, calls: int) -> list[float]:
    """Latencies (ms) of ``enqueue_event`` through the process-wide producer."""
    ns = "bs" + secrets.token_hex(4)
    producer = Producer(_settings(ctx, ns))
    set_producer(producer)
    payload = event(1)
    try:
        for _ in range(200):  # warm up: connection, code paths
            enqueue_event(payload)
        out = []
        clock = time.perf_counter_ns
        for _ in range(calls):
            started = clock()
            enqueue_event(payload)
            out.append((clock() - started) / 1e6)
        return out
    finally:
        set_producer(None)
        producer.redis.delete(producer.queue)
        producer.close()


def single_bare(ctx: BenchContext, calls: int) -> list[float]:
    """Latencies (ms) of a plain Celery app's ``send_task`` of the same payload."""
    queue = "bc" + secrets.token_hex(4)
    app = Celery("bench-bare", broker=ctx.redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    task_default_queue=queue)
    payload = event(1)
    try:
        for _ in range(200):
            app.send_task("bench.deliver", args=[payload], queue=queue)
        out = []
        clock = time.perf_counter_ns
        for _ in range(calls):
            started = clock()
            app.send_task("bench.deliver", args=[payload], queue=queue)
            out.append((clock() - started) / 1e6)
        return out
    finally:
        client = redis.Redis.from_url(ctx.redis_url)
        client.delete(queue)
        client.close()
        app.close()


def run(ctx: BenchContext) -> list[Row]:
    n = 10_000 if ctx.quick else 100_000
    calls = 10_000
    path = os.path.join(ctx.workdir, f"backfill-{n}.ndjson")
    size = write_file(path, n)
    ours, cpu, bare = [], [], []
    for _ in range(REPEATS):
        rate, cpu_per_event = bulk_ours(ctx, path)
        ours.append(rate)
        cpu.append(cpu_per_event)
        bare.append(bulk_bare(ctx, path))
    p50s, p99s, bare50s, bare99s = [], [], [], []
    for _ in range(REPEATS):
        mine, theirs = single_ours(ctx, calls), single_bare(ctx, calls)
        p50s.append(percentile(mine, 50))
        p99s.append(percentile(mine, 99))
        bare50s.append(percentile(theirs, 50))
        bare99s.append(percentile(theirs, 99))
    bulk_rate = median(ours)
    p50, p99, bare50, bare99 = median(p50s), median(p99s), median(bare50s), median(bare99s)
    return [
        Row("bulk enqueue (NDJSON, validated)", bulk_rate, "events/s", median(bare),
            "bare pipelined LPUSH of the same lines", goal=">= 10,000 events/s",
            met=bulk_rate >= 10_000,
            note=f"{n:,} records of {size // n} B, batch {DEFAULT_BATCH_SIZE}, "
                 f"{median(cpu) * 1e6:.0f} us CPU/event"),
        Row("bulk enqueue per CPU-second of the loader", 1 / median(cpu), "events/s",
            goal=">= 10,000 events/s on one core", met=1 / median(cpu) >= 10_000,
            note="1 / its CPU time per event: the rate one whole core would give"),
        Row("single enqueue p50 (validated)", p50, "ms", bare50, "Celery send_task",
            goal="<= 0.6x baseline", met=p50 <= 0.6 * bare50, note=f"{calls:,} calls"),
        Row("single enqueue p99 (validated)", p99, "ms", bare99, "Celery send_task",
            goal="<= 2 ms", met=p99 <= 2.0, note=f"{calls:,} calls"),
    ]
