"""Spool and web-app enqueue figures, each beside its baseline measured in the same run.

Shaped as a tests/bench module (``run(ctx) -> list[Row]``) but it starts its own private
redis-server, because it freezes (SIGSTOP) and kills it. Standalone::

    .venv/bin/python -m tests.bench --only spool [--quick]
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import anyio
import anyio.to_thread
import redis.asyncio as aioredis

from producers import BrokerUnavailable, Producer
from tests.bench import BenchContext, Row, percentile
from tests.support.redis_server import RedisServer
from voucherify_ingest.messages import event_message
from voucherify_ingest.settings import Settings

PAYLOAD = {
    "event": "order_paid",
    "customer": {"source_id": "user-42", "email": "ann@example.com", "name": "Ann Example"},
    "metadata": {"order_id": "o-1001", "total": 49.9, "items": 3, "coupon": "SPRING-10"},
}


def _lat(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _producer(url, spool_dir, **kw) -> Producer:
    return Producer(Settings.from_env({}, redis_url=url, queue="bench", spool_dir=spool_dir, **kw))


def _healthy(url, spool_dir, n) -> list[Row]:
    on, off = _producer(url, spool_dir), _producer(url, "")
    for p in (on, off):
        _lat(lambda p=p: p.enqueue_event(PAYLOAD), 300)
    a = _lat(lambda: on.enqueue_event(PAYLOAD), n)
    b = _lat(lambda: off.enqueue_event(PAYLOAD), n)
    on.close()
    off.close()
    return [
        Row("enqueue p50, Redis up, spool configured", percentile(a, 50), "ms",
            percentile(b, 50), "spool off"),
        Row("enqueue p99, Redis up, spool configured", percentile(a, 99), "ms",
            percentile(b, 99), "spool off"),
    ]


def _frozen(server, url, spool_dir, n) -> list[Row]:
    on = _producer(url, spool_dir, redis_timeout_s=1.0)
    off = _producer(url, "", redis_timeout_s=1.0)
    on.enqueue_event(PAYLOAD)
    off.enqueue_event(PAYLOAD)
    os.kill(server.pid, signal.SIGSTOP)
    try:
        t = time.perf_counter()
        on.enqueue_event(PAYLOAD)
        first = (time.perf_counter() - t) * 1e3
        later = _lat(lambda: on.enqueue_event(PAYLOAD), n)

        def refused():
            try:
                off.enqueue_event(PAYLOAD)
            except BrokerUnavailable:
                pass

        bare = _lat(refused, 3)
    finally:
        os.kill(server.pid, signal.SIGCONT)
    t = time.monotonic()
    while on.spool.pending and time.monotonic() - t < 30:
        time.sleep(0.01)
    on.close()
    off.close()
    return [
        Row("Redis frozen: 1st enqueue (pays the timeout, spools)", first, "ms",
            percentile(bare, 50), "spool off: BrokerUnavailable"),
        Row(f"Redis frozen: next {n} enqueues p50 (breaker -> spool)", percentile(later, 50),
            "ms", percentile(bare, 50), "spool off: every call"),
        Row(f"Redis frozen: next {n} enqueues p99 (breaker -> spool)", percentile(later, 99),
            "ms", percentile(bare, 99), "spool off: every call"),
    ]


def _killed_and_drain(server, url, spool_dir, n_events) -> list[Row]:
    on = _producer(url, spool_dir, redis_timeout_s=1.0)
    off = _producer(url, "", redis_timeout_s=1.0)
    on.enqueue_event(PAYLOAD)
    server.kill()

    def refused():
        try:
            off.enqueue_event(PAYLOAD)
        except BrokerUnavailable:
            pass

    spooled = _lat(lambda: on.enqueue_event(PAYLOAD), n_events)
    bare = _lat(refused, 500)
    size = sum(os.path.getsize(os.path.join(spool_dir, f)) for f in os.listdir(spool_dir)
               if f.endswith(".seg"))
    messages = [event_message(on.prepare(PAYLOAD)[1], "bare") for _ in range(n_events)]
    spool = on.spool
    spool._stop.set()
    spool._wake.set()
    if spool._thread is not None:
        spool._thread.join(10)
    server.start()
    client = server.client()
    client.delete("bench")
    # Our drain, timed on this thread: a spool filled while its own thread could not reach
    # Redis, that thread stopped, then drain() with a live client.
    t = time.perf_counter()
    pushed = spool.drain()
    drain_s = time.perf_counter() - t
    assert pushed == n_events, pushed
    t = time.perf_counter()
    with client.pipeline(transaction=False) as pipe:
        for i in range(0, len(messages), 1000):
            pipe.lpush("bare", *messages[i : i + 1000])
        pipe.execute()
    bare_s = time.perf_counter() - t
    client.delete("bench", "bare")
    on.close()
    off.close()
    client.close()
    return [
        Row("Redis down (refused): enqueue p50 -> spool (write+fsync)", percentile(spooled, 50),
            "ms", percentile(bare, 50), "spool off: BrokerUnavailable"),
        Row("Redis down (refused): enqueue p99 -> spool (write+fsync)", percentile(spooled, 99),
            "ms", percentile(bare, 99), "spool off: BrokerUnavailable"),
        Row(f"drain {n_events} spooled events ({size / n_events:.0f} B each on disk)",
            n_events / drain_s, "events/s", n_events / bare_s, "pipelined LPUSH same msgs"),
    ]


def _recovery(server, url, spool_dir, outage_s) -> list[Row]:
    p = _producer(url, spool_dir, redis_timeout_s=1.0)
    p.enqueue_event(PAYLOAD)
    server.kill()
    end = time.monotonic() + outage_s
    while time.monotonic() < end:
        p.enqueue_event(PAYLOAD)
        time.sleep(0.01)
    server.start()
    t = time.monotonic()
    while p.spool.pending and time.monotonic() - t < 30:
        time.sleep(0.005)
    took = time.monotonic() - t
    p.close()
    server.client().delete("bench")
    return [Row(f"Redis back after a {outage_s:.0f} s outage -> spool empty", took, "s",
                note="probe backoff 0.5 s doubling to 2 s")]


async def _async_rows(url, n) -> list[Row]:
    producer = _producer(url, "")
    ar = aioredis.from_url(url)
    loop = asyncio.get_running_loop()
    limiter = anyio.CapacityLimiter(16)
    pool = ThreadPoolExecutor(max_workers=16)
    call = functools.partial(producer.enqueue_event, PAYLOAD)

    async def inline():
        call()

    async def to_thread():
        await anyio.to_thread.run_sync(call, limiter=limiter)

    async def executor():
        await loop.run_in_executor(None, call)

    async def own_pool():
        await loop.run_in_executor(pool, call)

    async def aio():
        _, env = producer.prepare(PAYLOAD)
        await ar.lpush("bench", event_message(env, "bench"))

    results = {}
    for name, fn in (("inline", inline), ("own_pool", own_pool), ("to_thread", to_thread),
                     ("executor", executor), ("aio", aio)):
        for _ in range(200):
            await fn()
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await fn()
            lat.append((time.perf_counter() - t) * 1e3)
        results[name] = lat
    await ar.delete("bench")
    await ar.aclose()
    producer.close()
    base = results["inline"]
    rows = []
    pool.shutdown()
    for key, label in (("own_pool", "asyncio: run_in_executor(own 16-thread pool) [used]"),
                       ("to_thread", "asyncio: anyio.to_thread.run_sync(enqueue_event)"),
                       ("executor", "asyncio: run_in_executor(None = default pool)"),
                       ("aio", "asyncio: prepare() + redis.asyncio LPUSH (no spool)")):
        for pct in (50, 99):
            rows.append(Row(f"{label} p{pct}", percentile(results[key], pct), "ms",
                            percentile(base, pct), "inline sync call (blocks loop)"))
    return rows


def run(ctx: BenchContext) -> list[Row]:
    n = 300 if ctx.quick else 2000
    server = RedisServer(appendonly=False).start()
    try:
        url = server.url
        rows = []
        with tempfile.TemporaryDirectory() as d:
            rows += _healthy(url, d, n)
        with tempfile.TemporaryDirectory() as d:
            rows += _frozen(server, url, d, 200 if ctx.quick else 1000)
        with tempfile.TemporaryDirectory() as d:
            rows += _killed_and_drain(server, url, d, 2000 if ctx.quick else 20000)
        with tempfile.TemporaryDirectory() as d:
            rows += _recovery(server, url, d, 3.0)
        rows += anyio.run(_async_rows, url, n)
        return rows
    finally:
        server.stop()
