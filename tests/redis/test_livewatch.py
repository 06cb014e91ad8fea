"""``worker.livewatch``: bulk events asleep in the limiter's line wake when a live event is
queued (real Redis, real threads), and the watcher costs nothing while nobody sleeps."""

from __future__ import annotations

import threading
import time

from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import BULK, LIVE
from voucherify_ingest.rates import parse_rate_limit
from worker.livewatch import LiveWatch
from worker.ratelimit import RateLimiter, limiter_key


def _llen_calls(client) -> int:
    stats = client.info("commandstats").get("cmdstat_llen") or {}
    return int(stats.get("calls", 0))


def test_a_nap_ends_early_when_a_live_event_is_queued(redis_client, namespace):
    live_queue = Keys(namespace, namespace).lane_queue(LIVE)
    watch = LiveWatch(redis_client, live_queue, interval_s=0.02)
    started = time.monotonic()
    assert watch.nap(0.2) is False  # nothing queued: the whole nap
    assert time.monotonic() - started >= 0.19

    woke: list[tuple[bool, float]] = []
    sleeper = threading.Thread(target=lambda: woke.append((watch.nap(10.0), time.monotonic())))
    sleeper.start()
    pushed = time.monotonic()
    redis_client.lpush(live_queue, "a live message")
    sleeper.join(5)
    assert woke and woke[0][0] is True, woke
    assert woke[0][1] - pushed < 1.0, "the sleeper was not woken by the live event"


def test_the_watcher_looks_only_while_someone_sleeps(redis_client, namespace):
    watch = LiveWatch(redis_client, Keys(namespace, namespace).lane_queue(LIVE),
                      interval_s=0.01)
    watch.nap(0.1)
    before = _llen_calls(redis_client)
    time.sleep(0.3)  # nobody naps: the watcher must stay quiet for this whole stretch
    assert _llen_calls(redis_client) - before <= 1  # at most the look that was under way


def test_a_bulk_caller_woken_by_a_live_event_gives_way_at_once(redis_client, namespace):
    limiter = RateLimiter(redis_client, parse_rate_limit("1/s,burst=1"),
                          key=limiter_key(namespace, "app", "u"))
    # bulk takes the slot now and the one 1 s away (its reach): the next is out of reach
    assert limiter.reserve(5.0, BULK).granted and limiter.reserve(5.0, BULK).granted
    naps: list[float] = []

    def nap(seconds: float) -> bool:
        naps.append(seconds)
        return True  # a live event was queued meanwhile

    started = time.monotonic()
    assert limiter.wait_for_slot(5.0, lane=BULK, nap=nap) == 0.0  # park 0 s: thread freed
    assert naps and time.monotonic() - started < 0.5
