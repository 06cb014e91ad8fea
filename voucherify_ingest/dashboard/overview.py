"""The overview's numbers: one :class:`~voucherify_ingest.flow.FlowSnapshot` plus what a page
needs beside it (an hour of per-minute counts for the chart, heartbeat ages, lanes, ETA).

Lanes: when the snapshot carries ``lanes`` (one entry per lane with its name, depth and oldest
age), each is shown; otherwise the single queue is shown as one lane named ``default``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, is_dataclass
from typing import Any

import redis

from voucherify_ingest.flow import FlowReader, FlowSnapshot, failed
from voucherify_ingest.settings import Settings

HISTORY_MIN = 60
SINGLE_LANE = "default"


class OverviewReader:
    """Reads everything the overview shows in three pipelined round trips."""

    def __init__(self, client: redis.Redis, settings: Settings):
        self.redis = client
        self.flow = FlowReader(client, settings)

    def read(self, now_s: float | None = None) -> dict[str, Any]:
        now = time.time() if now_s is None else now_s
        snap = self.flow.snapshot(now)
        minute = int(now // 60)
        prefix = self.flow.recorder.minute_prefix
        with self.redis.pipeline(transaction=False) as pipe:
            for m in range(minute - HISTORY_MIN + 1, minute + 1):
                pipe.hgetall(f"{prefix}{m}")
            pipe.zrange(self.flow.recorder.workers_key, 0, -1, withscores=True)
            *minutes, beats = pipe.execute()
        history = []
        for offset, raw in enumerate(minutes):
            counts = _ints(raw)
            history.append({"minute": (minute - HISTORY_MIN + 1 + offset) * 60,
                            "delivered": counts.get("delivered", 0), "failed": failed(counts),
                            "http_429": counts.get("http_429", 0),
                            "attempts": counts.get("attempts", 0)})
        heartbeats = {
            (k.decode() if isinstance(k, bytes) else str(k)): round(max(0.0, now - float(v)), 1)
            for k, v in beats
        }
        data = snap.as_dict()
        data["lanes"] = lanes_of(snap)
        data["history"] = history
        data["heartbeat_age_s"] = heartbeats
        data["rate"] = rate_use(snap, history)
        return data


def lanes_of(snap: FlowSnapshot) -> list[dict[str, Any]]:
    """Per lane: name, queued, oldest age, ETA at the current delivery rate."""
    raw = getattr(snap, "lanes", None)
    rows: list[dict[str, Any]] = []
    if raw:
        items = raw.items() if isinstance(raw, dict) else ((None, lane) for lane in raw)
        for name, lane in items:
            lane = _plain(lane)
            rows.append({
                "name": str(name if name is not None else lane.get("name", lane.get("lane"))),
                # FlowSnapshot.lanes holds voucherify_ingest.laneflow.LaneState rows
                "queued": int(lane.get("queued_events", lane.get(
                    "queue_depth", lane.get("queued", 0))) or 0),
                "oldest_age_s": lane.get("oldest_age_s"),
                "eta_s": lane.get("drain_eta_s", lane.get("eta_s")),
                "per_minute": lane.get("delivered_per_min", lane.get("per_minute")),
            })
    else:
        rows.append({"name": SINGLE_LANE, "queued": snap.queue_depth,
                     "oldest_age_s": snap.oldest_age_s, "eta_s": None, "per_minute": None})
    total_rate = snap.per_minute.get("delivered", 0.0)
    for row in rows:
        if row["eta_s"] is None:
            rate = row["per_minute"] if isinstance(row["per_minute"], (int, float)) else total_rate
            row["eta_s"] = (0.0 if row["queued"] == 0
                            else round(row["queued"] / rate * 60, 1) if rate else None)
    return rows


def rate_use(snap: FlowSnapshot, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Attempts in the last complete minute against the configured limit (and any reserve)."""
    limiter = _plain(snap.limiter)
    per_min = limiter.get("per_s") * 60 if limiter.get("per_s") else None
    used = history[-2]["attempts"] if len(history) >= 2 else 0
    return {
        "used_per_min": used,
        "limit_per_min": round(per_min, 2) if per_min else None,
        "share": round(used / per_min, 3) if per_min else None,
        "reserve": limiter.get("reserve") or None,
    }


def _plain(value: Any) -> dict[str, Any]:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    if isinstance(value, dict):
        return value
    return dict(getattr(value, "__dict__", {}))


def _ints(raw: dict) -> dict[str, int]:
    out = {}
    for key, value in raw.items():
        try:
            out[key.decode() if isinstance(key, bytes) else str(key)] = int(float(value))
        except (TypeError, ValueError):
            continue
    return out
