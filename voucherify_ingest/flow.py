"""The read side of the counters: one snapshot of how events flow, for `stats` and `metrics`.

Everything comes from Redis in a couple of round trips, so any machine that reaches Redis sees
the whole fleet (one worker or fifty): the queue (depth, age of the oldest event), kombu's
unacked hash (deliveries in flight), the counters written by
``voucherify_ingest.stats.StatsRecorder``
(totals, per-minute hashes, latency histogram), the dead-letter reason sets, the shared rate
limiter's keys and the workers' heartbeats.

The oldest queued event sits at the consuming (right) end of the list: producers ``LPUSH``,
workers ``BRPOP``. Its Celery message body is base64 JSON ``[args, kwargs, embed]`` whose first
argument is the envelope (or a list of envelopes for a batch) carrying ``enqueued_at``.
"""

from __future__ import annotations

import base64
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from voucherify_ingest.cycle import CycleQuota
from voucherify_ingest.cycle import usage as cycle_usage
from voucherify_ingest.deadletters import REASONS
from voucherify_ingest.indoubt import outcome_counts
from voucherify_ingest.keys import Keys, auth_pause_key
from voucherify_ingest.laneflow import LaneState, read_lanes
from voucherify_ingest.rates import limiter_key, parse_rate_limit
from voucherify_ingest.settings import Settings
from voucherify_ingest.stats import LATENCY_BUCKETS_MS, StatsRecorder
from voucherify_ingest.timefmt import iso_utc, parse_iso

ALIVE_WITHIN_S = 15.0
RATE_WINDOW_MIN = 5  # per-minute rates average the last five complete minutes
COUNTERS = ("delivered", "retried", "deferred", "duplicates_avoided", "http_429", "attempts",
            "auth_refused")


@dataclass
class LimiterState:
    """The shared rate limiter as Redis holds it (see ``worker/ratelimit.py``)."""

    configured: str  # "100/min", or "off"
    per_s: float | None
    current_wait_s: float = 0.0  # how long a delivery starting now would wait for its slot
    cooldown_until: str | None = None  # ISO time; set while every worker pauses after a 429
    cooldown_left_s: float = 0.0
    parked_line_s: float = 0.0  # how far ahead the last parked event was told to come back
    reserve: str = ""  # VOUCHERIFY_RATE_RESERVE as configured ("" = none)
    reserve_pause_left_s: float = 0.0  # pause because other clients spent into the reserve
    bulk_starved_s: float = 0.0  # how long bulk events have been refused slots (live first)
    cycle: dict | None = None  # VOUCHERIFY_CYCLE_QUOTA: voucherify_ingest.cycle.usage()
    auth_paused_since: str | None = None  # ISO time: the API refuses our credentials (401/403)


@dataclass
class FlowSnapshot:
    at: str
    queue: str
    queue_depth: int
    oldest_age_s: float | None
    in_flight: int
    delayed: int
    totals: dict[str, int]
    dead_lettered_total: dict[str, int]
    per_minute: dict[str, float]  # delivered, failed, ...: mean of the last complete minutes
    this_minute: dict[str, int]
    dead_letters: dict[str, int]  # entries in the store now, by reason
    dead_letters_total: int
    latency: dict[str, Any]
    limiter: LimiterState
    workers_alive: list[str] = field(default_factory=list)
    workers_stale: list[str] = field(default_factory=list)
    # In-doubt sends settled, by outcome (held, verified_delivered, verified_absent_resent,
    # lookup_failed, resent) and the lookups they took: voucherify_ingest.indoubt.
    in_doubt: dict[str, int] = field(default_factory=dict)
    lanes: list[LaneState] = field(default_factory=list)  # queue_depth/delayed: all lanes

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types only: an infinite bucket bound is written ``"+Inf"``."""
        return _json_safe(asdict(self))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "+Inf"
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def enqueued_at_of(raw_message: bytes | str | None) -> float | None:
    """Epoch seconds the event(s) in one queued Celery message were enqueued (oldest of a
    batch); None when the message is not one of ours or carries no time."""
    if raw_message is None:
        return None
    try:
        message = json.loads(raw_message)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    first = args[0] if isinstance(args, list) and args else None
    envelopes = first if isinstance(first, list) else [first]
    times = [
        t for t in (parse_iso(e.get("enqueued_at")) for e in envelopes if isinstance(e, dict))
        if t is not None
    ]
    return min(times) if times else None


def _ints(raw: dict) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        try:
            out[name] = int(float(value))
        except (TypeError, ValueError):
            continue
    return out


def failed(counts: dict[str, int]) -> int:
    """Attempts that did not deliver: retried, plus dead-lettered for any reason."""
    return counts.get("retried", 0) + sum(
        v for k, v in counts.items() if k.startswith("dead_lettered:")
    )


def latency_summary(raw: dict[str, int]) -> dict[str, Any]:
    """Cumulative buckets (Prometheus style), count, mean and rough p50/p95 (bucket bounds)."""
    count = raw.get("count", 0)
    cumulative: list[tuple[float, int]] = []
    running = 0
    for bound in LATENCY_BUCKETS_MS:
        running += raw.get(f"le_{bound}", 0)
        cumulative.append((float(bound), running))
    running += raw.get("le_inf", 0)
    cumulative.append((float("inf"), running))

    def quantile(q: float) -> float | None:
        if not running:
            return None
        need = q * running
        return next(bound for bound, n in cumulative if n >= need)

    sum_ms = float(raw.get("sum_ms", 0))
    return {
        "count": count,
        "sum_ms": round(sum_ms, 3),
        "mean_ms": round(sum_ms / count, 1) if count else None,
        "p50_le_ms": quantile(0.5),
        "p95_le_ms": quantile(0.95),
        "buckets_ms": cumulative,
    }


class FlowReader:
    """Reads a :class:`FlowSnapshot` for one deployment (Redis, queue and key prefix)."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.settings = settings
        self.keys = Keys.from_settings(settings)
        self.recorder = StatsRecorder(settings.key_prefix)

    def snapshot(self, now_s: float | None = None) -> FlowSnapshot:
        now = time.time() if now_s is None else now_s
        minute = int(now // 60)
        rec = self.recorder
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hlen(self.keys.unacked)
            pipe.hgetall(rec.counters_key)
            pipe.hgetall(rec.latency_key)
            for m in range(minute - RATE_WINDOW_MIN, minute + 1):
                pipe.hgetall(f"{rec.minute_prefix}{m}")
            pipe.zrange(rec.workers_key, 0, -1, withscores=True)
            pipe.zcard(self.keys.dlq_index)
            replies = pipe.execute()
        in_flight, counters, latency = replies[:3]
        minutes = [_ints(h) for h in replies[3:3 + RATE_WINDOW_MIN + 1]]
        workers, dlq_total = replies[3 + RATE_WINDOW_MIN + 1:]
        counters = _ints(counters)

        lanes = read_lanes(self.redis, self.keys, now, minutes, counters, enqueued_at_of)
        depth = sum(lane.queued_messages for lane in lanes)
        delayed = sum(lane.delayed for lane in lanes)
        ages = [lane.oldest_age_s for lane in lanes if lane.oldest_age_s is not None]
        oldest_age = max(ages) if ages else None

        complete = minutes[:-1]
        per_minute = {
            name: round(sum(m.get(name, 0) for m in complete) / RATE_WINDOW_MIN, 2)
            for name in ("delivered", "retried", "deferred", "http_429")
        }
        per_minute["failed"] = round(sum(failed(m) for m in complete) / RATE_WINDOW_MIN, 2)
        this_minute = {name: minutes[-1].get(name, 0) for name in ("delivered", "retried")}
        this_minute["failed"] = failed(minutes[-1])

        reasons = set(REASONS) | {
            k.split(":", 1)[1] for k in counters if k.startswith("dead_lettered:")
        }
        reasons_sorted = sorted(reasons)
        with self.redis.pipeline(transaction=False) as pipe:
            for reason in reasons_sorted:
                pipe.zcard(self.keys.dlq_reason(reason))
            sizes = pipe.execute()
        dead_letters = {r: int(n) for r, n in zip(reasons_sorted, sizes, strict=True)}

        alive, stale = [], []
        for node, beat in workers:
            name = node.decode() if isinstance(node, bytes) else str(node)
            (alive if now - float(beat) <= ALIVE_WITHIN_S else stale).append(name)

        return FlowSnapshot(
            at=iso_utc(now, timespec="seconds"),
            queue=self.keys.queue,
            queue_depth=int(depth),
            oldest_age_s=oldest_age,
            in_flight=int(in_flight),
            delayed=int(delayed),
            totals={name: counters.get(name, 0) for name in COUNTERS},
            dead_lettered_total={
                k.split(":", 1)[1]: v for k, v in sorted(counters.items())
                if k.startswith("dead_lettered:")
            },
            per_minute=per_minute,
            this_minute=this_minute,
            dead_letters=dead_letters,
            dead_letters_total=int(dlq_total),
            latency=latency_summary(_ints(latency) | {"sum_ms": _float(latency, "sum_ms")}),
            limiter=self.limiter_state(),
            workers_alive=sorted(alive),
            workers_stale=sorted(stale),
            in_doubt=outcome_counts(counters),
            lanes=lanes,
        )

    # -- the shared rate limiter --------------------------------------------------------------

    def _limiter_keys(self) -> list[str]:
        """This project's limiter key when the app id is known, else every one under the prefix."""
        if self.settings.app_id:
            return [limiter_key(self.settings.key_prefix, self.settings.app_id,
                                self.settings.api_base)]
        found = set()
        for key in self.redis.scan_iter(match=f"{self.settings.key_prefix}:rl:*", count=200):
            name = key.decode() if isinstance(key, bytes) else key
            found.add(name.split("}", 1)[0] + "}" if "}" in name else name)
        return sorted(found)

    def _auth_paused_since(self) -> str | None:
        """When the fleet-wide 401/403 pause began (``worker/authpause.py``), or None."""
        prefix = self.settings.key_prefix
        if self.settings.app_id:
            names = [auth_pause_key(prefix, self.settings.app_id, self.settings.api_base)]
        else:  # no app id here (a dashboard host): any project's pause under the prefix
            names = [k.decode() if isinstance(k, bytes) else k
                     for k in self.redis.scan_iter(match=f"{prefix}:authpause:*", count=200)]
            names = [k for k in names if not k.endswith(":probe")]
        began_ms = [_num(v) for v in (self.redis.mget(names) if names else []) if v]
        return iso_utc(min(began_ms) / 1000, timespec="seconds") if began_ms else None

    def limiter_state(self) -> LimiterState:
        """Configured rate, the wait a delivery starting now would get, and any cool-down.

        Read defensively: the limiter stores epoch microseconds (GCRA theoretical arrival
        time, cool-down end, place in line); a key that is missing or unreadable means idle.
        """
        configured, per_s, burst = self._configured()
        state = LimiterState(configured=configured, per_s=per_s,
                             reserve=self.settings.rate_reserve,
                             auth_paused_since=self._auth_paused_since())
        if per_s is None:
            return state
        keys = self._limiter_keys()
        if not keys:
            return state
        interval_us = 1e6 / per_s
        tau_us = interval_us * (burst - 1)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.time()
            for key in keys:
                for suffix in ("", ":cooldown", ":parked", ":reserve", ":starved"):
                    pipe.get(f"{key}{suffix}")
            replies = pipe.execute()
        seconds, micros = replies[0]
        now_us = int(seconds) * 1_000_000 + int(micros)
        for i in range(len(keys)):
            tat, cool, parked, held, starved = (
                _num(v) for v in replies[1 + 5 * i: 6 + 5 * i])
            if held > now_us:
                state.reserve_pause_left_s = max(state.reserve_pause_left_s,
                                                 round((held - now_us) / 1e6, 3))
            if starved:
                state.bulk_starved_s = max(state.bulk_starved_s,
                                           round((now_us - starved) / 1e6, 3))
            slot = max(now_us, tat - tau_us, cool, held)
            quota = CycleQuota.from_settings(self.settings)
            if quota is not None and state.cycle is None:
                state.cycle = cycle_usage(self.redis, keys[i], quota, now_us / 1e6)
            state.current_wait_s = max(state.current_wait_s, round((slot - now_us) / 1e6, 3))
            if cool > now_us:
                left = round((cool - now_us) / 1e6, 3)
                if left > state.cooldown_left_s:
                    state.cooldown_left_s = left
                    state.cooldown_until = iso_utc(cool / 1e6, timespec="seconds")
            if parked > now_us:
                state.parked_line_s = max(state.parked_line_s, round((parked - now_us) / 1e6, 3))
        return state

    def _configured(self) -> tuple[str, float | None, int]:
        try:
            limit = parse_rate_limit(self.settings.rate_limit)
        except Exception:  # an unparseable setting: show it, do not fail the whole snapshot
            return self.settings.rate_limit or "off", None, 1
        if limit is None:
            return "off", None, 1
        return str(limit), limit.per_s, int(limit.burst)


def _num(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def _float(raw: dict, name: str) -> float:
    value = raw.get(name.encode(), raw.get(name))
    return _num(value)
