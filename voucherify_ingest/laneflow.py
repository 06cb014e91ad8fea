"""Per-lane flow for ``stats`` and the metrics: queued, oldest age, delivered per minute, and the
ETA to drain at the current pace ("bulk: 9,412 queued, drains in ~1 h 34 min at 100/min").

The pace is what the lane actually delivered recently (the ``delivered:{lane}`` counters of
``voucherify_ingest.stats``), not the configured limit: live events, other clients (the reserve)
and 429 cool-downs all take their share, and the ETA says what the fleet is really doing.
A batch message (a backfill's) holds many events, so the events queued are estimated as the
lane's messages times the events in its oldest message (exact when every message is one event).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import LANES

PACE_WINDOW_MIN = 5  # the pace is the mean over up to this many minutes, from the first active


@dataclass
class LaneState:
    lane: str
    queue: str
    queued_messages: int
    queued_events: int  # estimated: messages x events in the oldest message
    oldest_age_s: float | None
    delayed: int  # messages of this lane waiting in its delayed set (retries, parked)
    delivered_per_min: float  # the current pace (see the module docstring)
    delivered_total: int
    drain_eta_s: float | None  # None: nothing queued (0) or no pace to drain at (unknown)

    def line(self) -> str:
        """``bulk: 9,412 queued, drains in ~1 h 34 min at 100/min``."""
        text = f"{self.lane}: {self.queued_events:,} queued"
        if not self.queued_events:
            return f"{text}, at {self.delivered_per_min:g}/min"
        if self.drain_eta_s is None:
            return f"{text}, no deliveries yet to estimate a drain time"
        return (f"{text}, drains in ~{human_duration(self.drain_eta_s)} at "
                f"{self.delivered_per_min:g}/min")


def human_duration(seconds: float) -> str:
    """``5 s``, ``12 min``, ``1 h 34 min``, ``3 d 4 h``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(round(seconds / 60))
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def events_in(raw_message: bytes | str | None) -> int:
    """Events in one queued Celery message: a batch's length, else 1 (0 for nothing)."""
    if raw_message is None:
        return 0
    try:
        message = json.loads(raw_message)
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        first = json.loads(body)[0][0]
    except (ValueError, KeyError, TypeError, IndexError):
        return 1
    return len(first) if isinstance(first, list) and first else 1


def pace_per_min(minutes: list[dict[str, int]], name: str, seconds_into_minute: float) -> float:
    """Mean per minute of counter ``name`` over ``minutes`` (oldest first, the last one the
    current, partial minute), counted from the first minute that has any."""
    first = next((i for i, m in enumerate(minutes) if m.get(name)), None)
    if first is None:
        return 0.0
    total = sum(m.get(name, 0) for m in minutes[first:])
    span_min = (len(minutes) - 1 - first) + max(seconds_into_minute, 1.0) / 60
    return round(total / span_min, 2)


def read_lanes(client, keys: Keys, now: float, minutes: list[dict[str, int]],
               counters: dict[str, int], enqueued_at_of) -> list[LaneState]:
    """One :class:`LaneState` per lane (two round trips' worth of commands, pipelined)."""
    with client.pipeline(transaction=False) as pipe:
        for lane in LANES:
            pipe.llen(keys.lane_queue(lane))
            pipe.lindex(keys.lane_queue(lane), -1)
            pipe.zcard(keys.lane_delayed(lane))
        replies = pipe.execute()
    states = []
    into_minute = now % 60
    for i, lane in enumerate(LANES):
        depth, oldest_raw, delayed = replies[3 * i: 3 * i + 3]
        enqueued = enqueued_at_of(oldest_raw)
        events = int(depth) * events_in(oldest_raw) if depth else 0
        pace = pace_per_min(minutes, f"delivered:{lane}", into_minute)
        eta = None
        if events and pace > 0:
            eta = round(events / pace * 60, 1)
        states.append(LaneState(
            lane=lane, queue=keys.lane_queue(lane), queued_messages=int(depth),
            queued_events=events,
            oldest_age_s=round(max(0.0, now - enqueued), 3) if enqueued is not None else None,
            delayed=int(delayed), delivered_per_min=pace,
            delivered_total=counters.get(f"delivered:{lane}", 0), drain_eta_s=eta,
        ))
    return states
