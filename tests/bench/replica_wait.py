"""What ``VOUCHERIFY_REDIS_WAIT_REPLICAS=1`` costs a web app: ``enqueue_event`` latency through
Sentinel (a master, two replicas, three sentinels on loopback, ``tests.support.sentinel_cluster``)
with ``WAIT 1`` after each LPUSH, beside the same calls without it (the baseline).

2,000 calls each (quick: 300), alternating blocks; p50 and p99.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

from producers import Producer
from tests.bench import BenchContext, Row, percentile
from tests.bench.drain import event
from tests.support.sentinel_cluster import MASTER_NAME, SentinelCluster
from voucherify_ingest.settings import Settings


def _producer(url: str, ns: str, replicas: int) -> Producer:
    return Producer(Settings.from_env({
        "REDIS_URL": url, "VOUCHERIFY_REDIS_SENTINEL_MASTER": MASTER_NAME,
        "VOUCHERIFY_QUEUE": f"{ns}-events", "VOUCHERIFY_KEY_PREFIX": ns,
        "VOUCHERIFY_REDIS_WAIT_REPLICAS": str(replicas),
        "VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS": "1000",
    }))


def run(ctx: BenchContext) -> list[Row]:
    n = 300 if ctx.quick else 2000
    block = 100
    cluster = SentinelCluster(Path(ctx.workdir) / f"sentinel-{secrets.token_hex(3)}").start()
    try:
        ns = "b" + secrets.token_hex(4)
        producers = {r: _producer(cluster.url, ns, r) for r in (0, 1)}
        timings: dict[int, list[float]] = {0: [], 1: []}
        try:
            for r in (0, 1):  # warm up: connections, sentinel lookups
                producers[r].enqueue_event(event(0))
            for start in range(0, n, block):
                for r in (0, 1):
                    for i in range(start, start + block):
                        t0 = time.perf_counter()
                        producers[r].enqueue_event(event(i))
                        timings[r].append((time.perf_counter() - t0) * 1000)
        finally:
            for producer in producers.values():
                producer.close()
    finally:
        cluster.stop()
    rows = []
    for pct in (50, 99):
        ours, base = percentile(timings[1], pct), percentile(timings[0], pct)
        rows.append(Row(f"enqueue_event via Sentinel, WAIT 1, p{pct}", ours, "ms",
                        baseline=base, baseline_name="same without WAIT",
                        note=f"{n} calls each; 2 replicas on loopback"))
    return rows
