"""Lanes and the rate reserve: how long a live event waits behind a bulk backlog, how much of
the limit bulk still gets, and whether a foreign client of the same project keeps its room.

All at 20/s with 2 ``voucherify-ingest worker`` processes (threads, 8 each) against the stand-in
enforcing 20/s itself (10 ms latency):

- **live behind a backlog**: 10,000 bulk events queued (batches of 10), then one live event
  every 250 ms for 10 s (4 s with ``--quick``); live latency (enqueue -> the API) p50/p99/max.
  Baseline, same run: today's single FIFO line, the live events pushed onto the same list as a
  600-event backlog (300 with ``--quick``; a 10,000 one would take 500 s to reach them). The
  batches are of 10 so that most of that backlog waits in the list, as a big one does, instead
  of sitting in the workers' 16 threads (prefetch).
- **bulk achieved / limit**: alone (the seconds before the live events), and with live traffic
  (bulk + live over the live window; the fleet's whole use of the limit).
- **foreign client + reserve**: a second client on the same credentials spends ~30% in bursts
  (2 calls every 1/3 s) against a bucket of 12; with ``VOUCHERIFY_RATE_RESERVE=25%`` its 429s
  and the fleet's share of what it left, beside the same run without a reserve.

The 100/min variant is left out: one point of it needs minutes of backlog per row (a slot
every 0.6 s), which this short, shared-machine suite cannot afford; the latency bound is
stated in slot intervals, and ``tests/processes/test_e2e_lanes.py`` proves it at 20/s.

    python -m tests.bench --only lanes [--quick]
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time

import redis
import requests

from producers import Producer
from tests.bench import BenchContext, Row, percentile
from tests.support.procs import ManagedProcess
from voucherify_ingest.lanes import BULK, LIVE
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn

APP_ID, APP_TOKEN = "bench-app", "bench-token-value"
LIMIT_PER_S = 20
INTERVAL_S = 1 / LIMIT_PER_S
LIVE_GOAL_S = 2 * INTERVAL_S + 0.3
WORKERS, CONCURRENCY = 2, 8
READY_TIMEOUT_S = 60.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _event(n: int, kind: str = "order_paid") -> dict:
    return {"event": kind, "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


class Fleet:
    """A stand-in, a namespace and worker processes; ``with Fleet(...) as f: ...``."""

    def __init__(self, ctx: BenchContext, *, bucket: int = 4, **env: str):
        self.ctx = ctx
        self.ns = "bln" + secrets.token_hex(4)
        self.standin = StandIn(APP_ID, APP_TOKEN).start()
        self.standin.set_latency(0.01)
        self.standin.set_rate_limit(LIMIT_PER_S, burst=bucket)
        self.env = {
            "REDIS_URL": ctx.redis_url, "VOUCHERIFY_API_URL": self.standin.url,
            "VOUCHERIFY_APP_ID": APP_ID, "VOUCHERIFY_APP_TOKEN": APP_TOKEN,
            "VOUCHERIFY_QUEUE": f"{self.ns}-events", "VOUCHERIFY_KEY_PREFIX": self.ns,
            "VOUCHERIFY_RATE_LIMIT": f"{LIMIT_PER_S}/s,burst=2", "VOUCHERIFY_LOG_FORMAT": "json",
            **env,
        }
        self.producer = Producer(Settings.from_env(self.env))
        self.procs: list[ManagedProcess] = []

    def __enter__(self) -> Fleet:
        return self

    def start_workers(self) -> None:
        for i in range(WORKERS):
            self.procs.append(ManagedProcess(
                [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", str(CONCURRENCY),
                 "-P", "threads"], env=self.env, cwd=ROOT, name=f"lanes-{i}",
                log_dir=self.ctx.workdir,
            ).start())
        for proc in self.procs:
            proc.wait_for_output('"worker_ready"', timeout=READY_TIMEOUT_S)

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        self.producer.close()
        self.standin.stop()
        client = redis.Redis.from_url(self.ctx.redis_url)
        for key in client.scan_iter(match=f"{self.ns}*", count=1000):
            client.delete(key)
        client.close()

    def arrivals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.standin.delivered():
            if r.event_id is not None:
                out.setdefault(r.event_id, r.mono)
        return out

    def live_every(self, every_s: float, duration_s: float, lane: str) -> dict[str, float]:
        sent: dict[str, float] = {}
        started = time.monotonic()
        for n in range(int(duration_s / every_s)):
            time.sleep(max(0.0, started + n * every_s - time.monotonic()))
            sent[self.producer.enqueue_event(_event(100_000 + n, "signed_up"), lane=lane)] = \
                time.monotonic()
        return sent

    def wait_for(self, ids, timeout_s: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            arrivals = self.arrivals()
            if set(ids) <= set(arrivals):
                return arrivals
            time.sleep(0.05)
        raise RuntimeError(f"only {len(set(ids) & set(self.arrivals()))}/{len(ids)} arrived")


def _rate(records, start: float, end: float, keep=lambda r: True) -> float:
    return sum(1 for r in records if start <= r.mono <= end and keep(r)) / max(end - start, 1e-9)


def live_behind_backlog(ctx: BenchContext, backlog: int, live_s: float,
                        fifo: bool) -> tuple[list[float], float, float, int]:
    """Live latencies, bulk-alone rate, fleet rate over the live window, 429s."""
    with Fleet(ctx) as fleet:
        fleet.producer.enqueue_events([_event(i) for i in range(backlog)], batch_size=10,
                                      lane=BULK)
        fleet.start_workers()
        if not fleet.standin.wait_for_delivered(20, timeout=30):
            raise RuntimeError("the backlog never started")
        alone_from = time.monotonic()
        time.sleep(0.5 if fifo else 3.0)
        live_from = time.monotonic()
        sent = fleet.live_every(0.25, live_s, BULK if fifo else LIVE)
        arrivals = fleet.wait_for(sent, timeout_s=backlog / LIMIT_PER_S + 60)
        live_to = max(arrivals[i] for i in sent)
        received = fleet.standin.received()
        latencies = [arrivals[i] - sent[i] for i in sent]
        alone = _rate(received, alone_from, live_from, lambda r: r.status == 200)
        fleet_rate = _rate(received, live_from, live_to, lambda r: r.status == 200)
        return latencies, alone, fleet_rate, sum(1 for r in received if r.status == 429)


def _foreign(url: str, stop: threading.Event, statuses: list[int]) -> None:
    session = requests.Session()
    headers = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
    next_at = time.monotonic()
    while not stop.is_set():
        for _ in range(2):
            statuses.append(session.post(f"{url}/v1/events", json=_event(0, "checkout"),
                                         headers=headers, timeout=5).status_code)
        next_at += 1 / 3
        stop.wait(max(0.0, next_at - time.monotonic()))
    session.close()


def foreign_client(ctx: BenchContext, reserve: str, window_s: float) -> tuple[int, int, float,
                                                                              float]:
    """Foreign 429s, fleet 429s, fleet rate, and what the foreign client left (per second)."""
    with Fleet(ctx, bucket=12, VOUCHERIFY_RATE_LIMIT=f"{LIMIT_PER_S}/s",
               VOUCHERIFY_RATE_RESERVE=reserve) as fleet:
        fleet.producer.enqueue_events([_event(i) for i in range(int(window_s * 25) + 100)],
                                      batch_size=20, lane=BULK)
        fleet.start_workers()
        if not fleet.standin.wait_for_delivered(20, timeout=30):
            raise RuntimeError("the backlog never started")
        stop, statuses = threading.Event(), []
        thread = threading.Thread(target=_foreign, args=(fleet.standin.url, stop, statuses),
                                  daemon=True)
        started = time.monotonic()
        thread.start()
        time.sleep(window_s)
        stop.set()
        thread.join(timeout=10)
        ended = time.monotonic()
        window = [r for r in fleet.standin.received() if started <= r.mono <= ended]
        ours = [r for r in window if r.event_id is not None]
        foreign_rate = sum(1 for r in window if r.event_id is None) / (ended - started)
        ours_rate = sum(1 for r in ours if r.status == 200) / (ended - started)
        return (statuses.count(429), sum(1 for r in ours if r.status == 429), ours_rate,
                LIMIT_PER_S - foreign_rate)


def run(ctx: BenchContext) -> list[Row]:
    live_s = 4.0 if ctx.quick else 10.0
    backlog = 2_000 if ctx.quick else 10_000
    fifo_backlog = 300 if ctx.quick else 600
    lat, alone, fleet_rate, too_many = live_behind_backlog(ctx, backlog, live_s, fifo=False)
    fifo_lat, _, _, _ = live_behind_backlog(ctx, fifo_backlog, live_s, fifo=True)
    p50, p99, worst = (percentile(lat, p) for p in (50, 99, 100))
    f50, f99, fmax = (percentile(fifo_lat, p) for p in (50, 99, 100))
    cell = f"lanes {LIMIT_PER_S}/s x{WORKERS} workers"
    fifo_name = f"one FIFO lane, {fifo_backlog} ahead"
    rows = [
        Row(f"{cell}: live latency p50 behind {backlog:,} bulk", p50, "s", baseline=f50,
            baseline_name=fifo_name, goal="-", note=f"{len(lat)} live events, 1 per 250 ms"),
        Row(f"{cell}: live latency p99", p99, "s", baseline=f99, baseline_name=fifo_name,
            goal=f"<= {LIVE_GOAL_S:.2f} s (2 slots + 0.3 s)", met=p99 <= LIVE_GOAL_S),
        Row(f"{cell}: live latency max", worst, "s", baseline=fmax, baseline_name=fifo_name,
            goal=f"<= {LIVE_GOAL_S:.2f} s", met=worst <= LIVE_GOAL_S),
        Row(f"{cell}: bulk alone achieved / limit", alone / LIMIT_PER_S, "x", goal=">= 0.97",
            met=alone / LIMIT_PER_S >= 0.97, note="the seconds before the live events"),
        Row(f"{cell}: bulk + live achieved / limit", fleet_rate / LIMIT_PER_S, "x",
            goal=">= 0.95", met=fleet_rate / LIMIT_PER_S >= 0.95,
            note=f"{too_many} x 429 over the run"),
    ]
    window_s = 8.0 if ctx.quick else 15.0
    bare = foreign_client(ctx, "", window_s)
    with_reserve = foreign_client(ctx, "25%", window_s)
    rows += [
        Row("lanes reserve 25%: foreign client 429s (30% in bursts)", with_reserve[0], "",
            baseline=bare[0], baseline_name="no reserve", goal="0", met=with_reserve[0] == 0),
        Row("lanes reserve 25%: fleet 429s", with_reserve[1], "", baseline=bare[1],
            baseline_name="no reserve", goal="0", met=with_reserve[1] == 0),
        Row("lanes reserve 25%: fleet / what the foreign client left",
            with_reserve[2] / with_reserve[3], "x", baseline=bare[2] / bare[3],
            baseline_name="no reserve", goal=">= 0.80",
            met=with_reserve[2] / with_reserve[3] >= 0.8,
            note=f"{with_reserve[2]:.1f}/s of {with_reserve[3]:.1f}/s"),
    ]
    return rows
