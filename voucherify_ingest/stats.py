"""Counters shared by all workers, kept in Redis so one exporter sees fifty workers.

- ``{p}:stats:counters``      hash: lifetime totals (``delivered``, ``retried``, ``deferred``,
  ``duplicates_avoided``, ``http_429``, ``dead_lettered:{reason}``, ``attempts``)
- ``{p}:stats:m:{minute}``    hash: the same per UTC minute (epoch // 60), kept 3 hours
- ``{p}:stats:latency``       hash: delivery latency histogram: ``le_{ms}`` counts the deliveries
  in ``(previous bound, ms]`` (``le_inf`` the rest; readers accumulate for Prometheus),
  ``sum_ms`` and ``count``
- ``{p}:workers``             zset: worker node name -> last heartbeat epoch seconds
"""

from __future__ import annotations

import time

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
MINUTE_TTL_S = 3 * 3600


class StatsRecorder:
    def __init__(self, prefix: str):
        self.counters_key = f"{prefix}:stats:counters"
        self.minute_prefix = f"{prefix}:stats:m:"
        self.latency_key = f"{prefix}:stats:latency"
        self.workers_key = f"{prefix}:workers"

    def record(self, pipe, counts: dict[str, int], latency_ms: float | None = None) -> None:
        """Queue counter updates on ``pipe`` (sent with the delivery's other writes)."""
        minute_key = f"{self.minute_prefix}{int(time.time() // 60)}"
        for name, value in counts.items():
            pipe.hincrby(self.counters_key, name, value)
            pipe.hincrby(minute_key, name, value)
        pipe.expire(minute_key, MINUTE_TTL_S)
        if latency_ms is not None:
            bucket = next((f"le_{b}" for b in LATENCY_BUCKETS_MS if latency_ms <= b), "le_inf")
            pipe.hincrby(self.latency_key, bucket, 1)
            pipe.hincrby(self.latency_key, "count", 1)
            pipe.hincrbyfloat(self.latency_key, "sum_ms", round(latency_ms, 3))

    def record_latencies(self, pipe, latencies_ms: list[float]) -> None:
        """Queue many deliveries' latencies at once (a batch): one HINCRBY per bucket used."""
        if not latencies_ms:
            return
        buckets: dict[str, int] = {}
        for latency_ms in latencies_ms:
            bucket = next((f"le_{b}" for b in LATENCY_BUCKETS_MS if latency_ms <= b), "le_inf")
            buckets[bucket] = buckets.get(bucket, 0) + 1
        for bucket, count in buckets.items():
            pipe.hincrby(self.latency_key, bucket, count)
        pipe.hincrby(self.latency_key, "count", len(latencies_ms))
        pipe.hincrbyfloat(self.latency_key, "sum_ms", round(sum(latencies_ms), 3))

    def heartbeat(self, client, node: str) -> None:
        client.zadd(self.workers_key, {node: time.time()})

    def forget(self, client, node: str) -> None:
        client.zrem(self.workers_key, node)
