"""The overview's lanes: one row per lane when the snapshot has lanes, else the one queue."""

from __future__ import annotations

from dataclasses import dataclass, replace

from voucherify_ingest.dashboard import pages
from voucherify_ingest.dashboard.overview import lanes_of, rate_use
from voucherify_ingest.flow import FlowSnapshot, LimiterState


def _snapshot(**changes) -> FlowSnapshot:
    snap = FlowSnapshot(
        at="2026-01-01T00:00:00Z", queue="q", queue_depth=120, oldest_age_s=30.0, in_flight=2,
        delayed=1, totals={"delivered": 5, "http_429": 0}, dead_lettered_total={},
        per_minute={"delivered": 60.0, "failed": 0.0}, this_minute={"delivered": 1, "failed": 0},
        dead_letters={"rejected": 3}, dead_letters_total=3, latency={},
        limiter=LimiterState(configured="100/min", per_s=100 / 60),
        workers_alive=["w1"], workers_stale=["w0"])
    return replace(snap, **changes)


@dataclass
class _Lane:
    name: str
    queue_depth: int
    oldest_age_s: float | None


def test_without_lanes_the_queue_is_the_default_lane_with_an_eta():
    (lane,) = lanes_of(_snapshot())
    assert lane == {"name": "default", "queued": 120, "oldest_age_s": 30.0, "eta_s": 120.0,
                    "per_minute": None}
    assert lanes_of(_snapshot(queue_depth=0))[0]["eta_s"] == 0.0
    assert lanes_of(_snapshot(per_minute={"delivered": 0.0}))[0]["eta_s"] is None


def test_lanes_from_the_snapshot_each_get_a_row_and_a_hook():
    snap = _snapshot()
    snap.lanes = [_Lane("live", 4, 0.5), {"name": "bulk", "queued": 9000, "oldest_age_s": 600,
                                          "eta_s": 300.0}]
    rows = lanes_of(snap)
    assert [(r["name"], r["queued"], r["eta_s"]) for r in rows] == [
        ("live", 4, 4.0), ("bulk", 9000, 300.0)]
    snap.lanes = {"live": {"queue_depth": 1, "oldest_age_s": None}}
    assert lanes_of(snap)[0]["name"] == "live"

    data = snap.as_dict() | {"lanes": rows, "history": [
        {"minute": 0, "delivered": 3, "failed": 1, "http_429": 0, "attempts": 4}] * 2,
        "heartbeat_age_s": {"w1": 1.0, "w0": 99.0}, "rate": rate_use(snap, [{"attempts": 50}] * 2)}
    html = pages.overview_fragment(data)
    assert 'data-testid="queued-live">4<' in html and 'data-testid="queued-bulk">9000<' in html
    assert 'data-testid="workers-alive">1<' in html and "silent" in html
    assert data["rate"] == {"used_per_min": 50, "limit_per_min": 100.0, "share": 0.5,
                            "reserve": None}
