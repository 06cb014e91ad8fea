"""A Prometheus collector over the counters every worker keeps in Redis.

Workers do not serve metrics themselves: with fifty workers on ten machines, Prometheus would
have to find and scrape fifty processes, and a restarted worker would reset its counters. The
counters already live in Redis (``voucherify_ingest/stats.py``), so one exporter anywhere reads
them at
each scrape (a custom collector: no state in the exporter, a handful of Redis commands per
scrape) and the numbers are the same whichever exporter answers.

Counters are monotonic totals shared by all workers (``rate()`` works on them); gauges are the
state at scrape time. When Redis does not answer, the scrape still succeeds with
``voucherify_ingest_redis_up 0`` and nothing else, so an alert can tell "Redis down" from
"exporter down".
"""

from __future__ import annotations

import math
import time

import redis
import structlog
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import CollectorRegistry

from voucherify_ingest.flow import FlowReader
from voucherify_ingest.settings import Settings

NS = "voucherify_ingest"

_COUNTERS = {
    "delivered": "Events the API accepted (200).",
    "retried": "Attempts that failed and were scheduled for a retry.",
    "deferred": "Deliveries parked without using a retry: no rate-limit slot soon enough, "
    "a 429, or the auth pause.",
    "duplicates_avoided": "Redelivered events the ledger recognised as already delivered.",
    "http_429": "429 Too Many Requests answers from the API.",
    "attempts": "POST /v1/events attempts.",
    "auth_refused": "401/403 answers: the API refused the credentials (the fleet pauses).",
}


class FlowCollector:
    """Reads one :class:`voucherify_ingest.flow.FlowSnapshot` per scrape and turns it into
    metrics."""

    def __init__(self, reader: FlowReader):
        self.reader = reader
        self.log = structlog.get_logger("voucherify_ingest.metrics")
        self._failing = False

    def describe(self):
        return []  # metrics depend on Redis contents: do not read Redis at registration

    def collect(self):
        started = time.perf_counter()
        up = GaugeMetricFamily(f"{NS}_redis_up", "1 if Redis answered this scrape, else 0.")
        try:
            snap = self.reader.snapshot()
        except redis.RedisError as exc:
            if not self._failing:
                self.log.warning("metrics_redis_error", error=type(exc).__name__)
                self._failing = True
            up.add_metric([], 0)
            yield up
            return
        if self._failing:
            self.log.info("metrics_redis_reachable_again")
            self._failing = False
        up.add_metric([], 1)
        yield up
        yield from self._counters(snap)
        yield from self._gauges(snap)
        yield self._latency(snap)
        took = GaugeMetricFamily(f"{NS}_scrape_duration_seconds",
                                 "Time this exporter spent reading Redis for the scrape.")
        took.add_metric([], time.perf_counter() - started)
        yield took

    @staticmethod
    def _counters(snap):
        for name, doc in _COUNTERS.items():
            family = CounterMetricFamily(f"{NS}_{name}", doc)
            family.add_metric([], snap.totals.get(name, 0))
            yield family
        dead = CounterMetricFamily(
            f"{NS}_dead_lettered", "Events moved to the dead-letter store, by reason.",
            labels=["reason"],
        )
        for reason in sorted(set(snap.dead_letters) | set(snap.dead_lettered_total)):
            dead.add_metric([reason], snap.dead_lettered_total.get(reason, 0))
        yield dead
        doubt = CounterMetricFamily(
            f"{NS}_in_doubt",
            "In-doubt sends settled (the request may have reached the API, no outcome was "
            "recorded), by outcome: held, verified_delivered, verified_absent_resent, "
            "lookup_failed, resent.",
            labels=["outcome"],
        )
        for outcome, value in sorted(snap.in_doubt.items()):
            if outcome != "lookups":
                doubt.add_metric([outcome], value)
        yield doubt
        lookups = CounterMetricFamily(
            f"{NS}_in_doubt_lookups",
            "List Customer Activity calls made to settle in-doubt sends (each one is an API call "
            "from the shared rate budget).",
        )
        lookups.add_metric([], snap.in_doubt.get("lookups", 0))
        yield lookups

    @staticmethod
    def _gauges(snap):
        def gauge(name, doc, value):
            family = GaugeMetricFamily(f"{NS}_{name}", doc)
            family.add_metric([], value)
            return family

        yield gauge("queue_depth", "Events waiting in the ingest queue.", snap.queue_depth)
        yield gauge(
            "oldest_queued_age_seconds", "Age of the oldest event waiting in the queue (0 when "
            "the queue is empty).", snap.oldest_age_s or 0.0,
        )
        yield gauge("in_flight", "Messages handed to a worker and not yet acknowledged.",
                    snap.in_flight)
        yield gauge("delayed", "Messages waiting for a retry or a rate-limit slot.", snap.delayed)
        yield gauge("workers_alive", "Workers whose heartbeat is fresh.", len(snap.workers_alive))
        held = GaugeMetricFamily(f"{NS}_dead_letters", "Entries in the dead-letter store now, "
                                 "by reason.", labels=["reason"])
        for reason, count in sorted(snap.dead_letters.items()):
            held.add_metric([reason], count)
        yield held
        lim = snap.limiter
        yield gauge("rate_limit_per_second", "Configured shared rate limit (0 when off).",
                    lim.per_s or 0.0)
        yield gauge("rate_limit_wait_seconds", "Wait a delivery starting now would get for its "
                    "rate-limit slot.", lim.current_wait_s)
        yield gauge("rate_limit_cooldown_seconds", "Shared cool-down after a 429 still to run.",
                    lim.cooldown_left_s)
        yield gauge("rate_reserve_pause_seconds", "Shared pause still to run because other "
                    "clients spent into VOUCHERIFY_RATE_RESERVE.", lim.reserve_pause_left_s)
        yield gauge("bulk_starved_seconds", "How long bulk events have been refused rate-limit "
                    "slots because live events took them all (0 when not).", lim.bulk_starved_s)
        yield from _lane_gauges(snap)
        if lim.cycle:
            c = lim.cycle
            yield gauge("cycle_calls_used", "API calls counted this billing cycle "
                        "(VOUCHERIFY_CYCLE_QUOTA).", c["used"])
            left = GaugeMetricFamily(f"{NS}_cycle_calls_left", "Calls each lane may still "
                                     "make this billing cycle.", labels=["lane"])
            paused = GaugeMetricFamily(f"{NS}_cycle_paused", "1 while the lane waits for the "
                                       "cycle to reset (its allowance spent).", labels=["lane"])
            for lane in ("live", "bulk"):
                left.add_metric([lane], c[f"left_{lane}"])
                paused.add_metric([lane], 1 if c[f"{lane}_paused"] or c["api_blocked_s"] else 0)
            yield left
            yield paused

    @staticmethod
    def _latency(snap):
        lat = snap.latency
        buckets = [
            ("+Inf" if math.isinf(bound) else f"{bound / 1000:g}", float(count))
            for bound, count in lat["buckets_ms"]
        ]
        family = HistogramMetricFamily(
            f"{NS}_delivery_latency_seconds", "Latency of delivered POST /v1/events calls.",
            buckets=buckets, sum_value=lat["sum_ms"] / 1000,
        )
        return family


def _lane_gauges(snap):
    """Per lane (label ``lane``): queued, oldest age, pace and the ETA to drain."""
    specs = (
        ("lane_queued_events", "Events waiting in the lane (batch messages estimated).",
         lambda ln: ln.queued_events),
        ("lane_queued_messages", "Messages waiting in the lane's list.",
         lambda ln: ln.queued_messages),
        ("lane_oldest_queued_age_seconds", "Age of the lane's oldest waiting event.",
         lambda ln: ln.oldest_age_s or 0.0),
        ("lane_delayed", "The lane's messages waiting for a retry or a slot.",
         lambda ln: ln.delayed),
        ("lane_delivered_per_minute", "Events of the lane delivered per minute, recently.",
         lambda ln: ln.delivered_per_min),
        ("lane_drain_eta_seconds", "Time to drain the lane at its current pace (0: empty; "
         "-1: queued but nothing delivered lately).",
         lambda ln: ln.drain_eta_s if ln.drain_eta_s is not None
         else (-1.0 if ln.queued_events else 0.0)),
    )
    for name, doc, value in specs:
        family = GaugeMetricFamily(f"{NS}_{name}", doc, labels=["lane"])
        for lane in snap.lanes:
            family.add_metric([lane.lane], value(lane))
        yield family
    delivered = CounterMetricFamily(f"{NS}_lane_delivered", "Events delivered, by lane.",
                                    labels=["lane"])
    for lane in snap.lanes:
        delivered.add_metric([lane.lane], lane.delivered_total)
    yield delivered


def build_registry(client: redis.Redis, settings: Settings) -> CollectorRegistry:
    """A registry holding only our collector (no process/platform metrics of the exporter)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FlowCollector(FlowReader(client, settings)))
    return registry
