"""Lanes and the rate reserve, end to end: real ``voucherify-ingest worker`` processes, the real
Redis, and the loopback stand-in enforcing the rate limit itself. Live events must overtake a
bulk backlog at the rate-limit slot, bulk must still use the limit, and a reserve must leave a
foreign client of the same project room (no 429 for anyone). Times are the stand-in's arrival
times (``time.monotonic`` in this process) against the enqueue time taken here."""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from producers import Producer
from tests.support.pipeline import (
    APP_ID,
    APP_TOKEN,
    WORKER_READY_TIMEOUT_S,
    make_env,
    wait_quiet,
    worker_argv,
)
from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import BULK, LIVE
from voucherify_ingest.settings import Settings

pytestmark = pytest.mark.e2e

LIMIT_PER_S = 20
INTERVAL_S = 1 / LIMIT_PER_S
LIVE_BOUND_S = 2 * INTERVAL_S + 0.3  # the promise: two slot intervals + 0.3 s
STANDIN_BURST = 4  # two slots deeper than ours: arrival jitter on a shared machine


def _event(n: int, kind: str = "order_paid") -> dict:
    return {"event": kind, "customer": {"source_id": f"user-{n}"}, "metadata": {"n": n}}


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _wait(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def _arrivals(standin) -> dict[str, float]:
    """event id -> first 200 arrival (monotonic)."""
    out: dict[str, float] = {}
    for r in standin.delivered():
        if r.event_id is not None and r.event_id not in out:
            out[r.event_id] = r.mono
    return out


def test_live_events_overtake_a_bulk_backlog_at_the_slot(standin, producer, start_worker):
    standin.set_rate_limit(LIMIT_PER_S, burst=STANDIN_BURST)
    standin.set_latency(0.01)
    bulk_ids = producer.enqueue_events([_event(i) for i in range(3000)], batch_size=50,
                                       lane=BULK)
    for i in range(2):
        start_worker(concurrency=8, name=f"worker-{i}",
                     VOUCHERIFY_RATE_LIMIT=f"{LIMIT_PER_S}/s,burst=2")
    assert standin.wait_for_delivered(60, timeout=30), "the bulk backlog never started"

    sent: dict[str, float] = {}
    started = time.monotonic()
    for n in range(40):  # one live event every 250 ms for 10 s
        due = started + n * 0.25
        time.sleep(max(0.0, due - time.monotonic()))
        event_id = producer.enqueue_event(_event(10_000 + n, "signed_up"))
        sent[event_id] = time.monotonic()
    assert _wait(lambda: set(sent) <= set(_arrivals(standin)), timeout=10), "live events lost"
    ended = max(_arrivals(standin)[i] for i in sent)

    arrivals = _arrivals(standin)
    latencies = [arrivals[i] - sent[i] for i in sent]
    p50, p99, worst = (_quantile(latencies, q) for q in (0.5, 0.99, 1.0))
    window = [r for r in standin.delivered() if started <= r.mono <= ended]
    bulk_in_window = [r for r in window if r.event_id not in sent]
    span = ended - started
    achieved = len(window) / span
    bulk_rate = len(bulk_in_window) / span
    print(f"live latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
          f"{worst * 1000:.0f} ms (bound {LIVE_BOUND_S * 1000:.0f} ms); fleet {achieved:.2f}/s, "
          f"bulk {bulk_rate:.2f}/s of {LIMIT_PER_S}/s over {span:.1f} s")
    assert worst <= LIVE_BOUND_S, f"a live event took {worst:.3f}s: {sorted(latencies)[-5:]}"
    assert achieved >= 0.95 * LIMIT_PER_S, f"the fleet used {achieved:.2f}/s of {LIMIT_PER_S}/s"
    assert bulk_rate >= 0.95 * (LIMIT_PER_S - 4), f"bulk got {bulk_rate:.2f}/s"
    assert standin.too_many_count() == 0
    counts = standin.delivered_ids()
    assert max(counts.values()) == 1, "an event was delivered twice"
    assert set(counts) <= set(bulk_ids) | set(sent)


SLOW_LIMIT_PER_MIN = 100
SLOW_INTERVAL_S = 60 / SLOW_LIMIT_PER_MIN  # one slot per 0.6 s
SLOW_LIVE_BOUND_S = 2 * SLOW_INTERVAL_S + 0.3  # 1.5 s


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_live_events_overtake_a_bulk_backlog_at_100_per_min(standin, producer, start_worker):
    """Issue 12's long scenario: 100/min, a bulk backlog that outlasts the run, 2 workers, one
    live event every 3 s for 60 s (about 70 s in all). Before a live event could take a slot a
    sleeping bulk event held, one clean-clone run had a live event at 1.69 s (then in the long
    suite only); with it, the worst of 20 was 0.79 s.

    The stand-in plays the Business plan as Voucherify counts it: 100 calls a minute, a window
    of 100 (``X-Rate-Limit-Limit: 100``). A smaller bucket would be announced in that header as
    the plan's calls per minute and the workers would rightly slow down to it (``observe``);
    the fleet's own 0.6 s spacing is checked from the arrivals instead."""
    standin.set_rate_limit(SLOW_LIMIT_PER_MIN / 60, burst=SLOW_LIMIT_PER_MIN)
    standin.set_latency(0.01)
    bulk_ids = producer.enqueue_events([_event(i) for i in range(300)], batch_size=20,
                                       lane=BULK)  # ~180 s of work at 100/min
    for i in range(2):
        start_worker(concurrency=8, name=f"worker-{i}",
                     VOUCHERIFY_RATE_LIMIT=f"{SLOW_LIMIT_PER_MIN}/min,burst=2")
    # Measured once the fleet is at pace (as the 20/s test waits for 60 deliveries): at the
    # start every thread takes a bulk batch at once. Before bulk gave its thread way to a live
    # event (wait_for_slot's give_way), a live event waited up to a slot more for a thread
    # (1.62 s then, at the start and later too).
    assert standin.wait_for_delivered(10, timeout=40), "the bulk backlog never got going"

    sent: dict[str, float] = {}
    started = time.monotonic()
    for n in range(20):  # one live event every 3.1 s for 60 s (a fifth of the limit); not a
        due = started + n * 3.1  # multiple of the 0.6 s slot, so arrivals sample every phase
        time.sleep(max(0.0, due - time.monotonic()))  # the producer's pace, not a settle wait
        event_id = producer.enqueue_event(_event(10_000 + n, "signed_up"))
        sent[event_id] = time.monotonic()
    arrived = _wait(lambda: set(sent) <= set(_arrivals(standin)), timeout=15)
    arrivals = _arrivals(standin)
    took = [round(arrivals[i] - sent[i], 2) for i in sent if i in arrivals]
    assert arrived, (f"{len(set(sent) - set(arrivals))} of {len(sent)} live events never "
                     f"arrived; the others took {took} s")
    ended = max(arrivals[i] for i in sent)

    latencies = [arrivals[i] - sent[i] for i in sent]
    p50, p99, worst = (_quantile(latencies, q) for q in (0.5, 0.99, 1.0))
    window = [r for r in standin.delivered() if started <= r.mono <= ended]
    span = ended - started
    achieved_per_min = len(window) / span * 60
    bulk_per_min = sum(1 for r in window if r.event_id not in sent) / span * 60
    print(f"100/min: live latency p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max "
          f"{worst * 1000:.0f} ms (bound {SLOW_LIVE_BOUND_S * 1000:.0f} ms, {len(sent)} live); "
          f"fleet {achieved_per_min:.1f}/min, bulk {bulk_per_min:.1f}/min of "
          f"{SLOW_LIMIT_PER_MIN}/min over {span:.1f} s")
    assert worst <= SLOW_LIVE_BOUND_S, f"a live event took {worst:.3f}s: {sorted(latencies)}"
    # 0.9, not the 20/s test's 0.95: over ~60 s the window holds only ~100 slots, so the window
    # edges alone are worth 1-2%, and each slot a thread wakes too late for on this shared
    # 2-core machine is left unused (the limiter's late tolerance is 0.6 s at burst 2, but a
    # missed slot costs a whole 1% here). 0.9 still fails if live priority wasted slots (20
    # live events x one lost slot each = 20%) or bulk stalled behind live.
    assert achieved_per_min >= 0.9 * SLOW_LIMIT_PER_MIN, (
        f"the fleet used {achieved_per_min:.1f}/min of {SLOW_LIMIT_PER_MIN}/min")
    # ... and never above it: the limit's slots in the window, plus the burst of 2, plus one
    assert len(window) <= span / SLOW_INTERVAL_S + 3, f"{len(window)} calls in {span:.1f} s"
    assert standin.too_many_count() == 0
    counts = standin.delivered_ids()
    assert max(counts.values()) == 1, "an event was delivered twice"
    assert set(counts) <= set(bulk_ids) | set(sent)
    assert len(set(counts) & set(bulk_ids)) < len(bulk_ids), "the backlog did not outlast the run"


def _foreign_client(url: str, stop: threading.Event, statuses: list[int], *, burst: int,
                    every_s: float) -> None:
    """Another user of the same project (the app's checkout): ``burst`` calls back to back
    every ``every_s`` seconds, with the same credentials, straight to the API."""
    session = requests.Session()
    headers = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
    body = _event(0, "checkout_validation")
    next_at = time.monotonic()
    while not stop.is_set():
        for _ in range(burst):
            statuses.append(session.post(f"{url}/v1/events", json=body, headers=headers,
                                         timeout=5).status_code)
        next_at += every_s
        stop.wait(max(0.0, next_at - time.monotonic()))
    session.close()


def test_the_reserve_leaves_a_foreign_client_room_and_uses_the_rest(
    standin, producer, start_worker
):
    # The API: 20 calls/s from a bucket of 12 (X-Rate-Limit-Limit: 12). The foreign client
    # spends ~30% (2 calls every 1/3 s); the reserve keeps 25% for it, so the fleet paces
    # itself at 15/s and, as the two together want 21/s, must also pause when
    # X-Rate-Limit-Remaining falls below 25% of 12 (the guard is exercised, not just the pace).
    standin.set_rate_limit(LIMIT_PER_S, burst=12)
    standin.set_latency(0.01)
    producer.enqueue_events([_event(i) for i in range(600)], batch_size=20, lane=BULK)
    workers = [start_worker(concurrency=8, name=f"worker-{i}",
                            VOUCHERIFY_RATE_LIMIT=f"{LIMIT_PER_S}/s",
                            VOUCHERIFY_RATE_RESERVE="25%") for i in range(2)]
    assert standin.wait_for_delivered(20, timeout=30)

    stop, statuses = threading.Event(), []
    foreign = threading.Thread(target=_foreign_client, args=(standin.url, stop, statuses),
                               kwargs={"burst": 2, "every_s": 1 / 3}, daemon=True)
    started = time.monotonic()
    foreign.start()
    time.sleep(15)  # the measured window: the foreign client's bursts against the backlog
    stop.set()
    foreign.join(timeout=10)
    ended = time.monotonic()

    window = [r for r in standin.received() if started <= r.mono <= ended]
    ours = [r for r in window if r.event_id is not None]
    theirs = [r for r in window if r.event_id is None]
    span = ended - started
    foreign_rate = len(theirs) / span
    left = LIMIT_PER_S - foreign_rate
    ours_rate = sum(1 for r in ours if r.status == 200) / span
    pauses = sum(1 for w in workers for line in w.output().splitlines()
                 if '"rate_reserve_pause"' in line)
    print(f"foreign {foreign_rate:.2f}/s ({statuses.count(429)} x 429 of {len(statuses)}), "
          f"workers {ours_rate:.2f}/s of {left:.2f}/s left ({ours_rate / left:.0%}), "
          f"{pauses} reserve pauses")
    assert statuses and statuses.count(429) == 0, f"the foreign client got 429s: {statuses}"
    assert [r.status for r in ours if r.status != 200] == [], "a worker got a 429"
    assert ours_rate >= 0.8 * left, f"the workers used {ours_rate:.2f}/s of {left:.2f}/s"
    assert pauses >= 1, "the foreign client never pushed the API below the reserve"


def test_lanes_survive_sigkill_redelivery_and_replay(
    standin, producer, start_worker, redis_client, pipeline_settings
):
    """A worker SIGKILLed with live and bulk events in hand: each comes back to its own lane,
    is delivered once, and a bulk-lane replay of dead letters keeps ids and the bulk lane."""
    keys = Keys.from_settings(pipeline_settings)
    bulk_ids = producer.enqueue_events([_event(i) for i in range(40)], lane=BULK)
    live_ids = producer.enqueue_events([_event(100 + i) for i in range(10)])
    # A slow shared limit: the victim's threads hold messages (unacked) waiting for slots.
    victim = start_worker(concurrency=8, name="victim", VOUCHERIFY_RATE_LIMIT="4/s")
    assert _wait(lambda: redis_client.hlen(keys.unacked) >= 8, timeout=20)
    standin.set_down(503)  # from now nothing is answered 200: no send is lost in the kill
    time.sleep(0.2)  # a 200 answered just before has its ledger entry written by now
    held = [json.loads(v)[0]["properties"]["delivery_info"]["routing_key"]
            for v in redis_client.hvals(keys.unacked)]
    victim.kill()  # SIGKILL: the unacked messages come back after the visibility timeout
    assert held and set(held) <= {keys.lane_queue(LIVE), keys.lane_queue(BULK)}
    standin.set_up()
    start_worker(concurrency=4, name="survivor", VOUCHERIFY_VISIBILITY_TIMEOUT_S="20")
    assert standin.wait_for_delivered(50, timeout=60), f"{len(standin.delivered())} of 50"
    assert _wait(lambda: redis_client.hlen(keys.unacked) == 0, timeout=10)
    counts = standin.delivered_ids()
    assert set(counts) == set(bulk_ids) | set(live_ids)
    # an event in flight when the kill came may have reached the API: the ledger stops the
    # second POST, so every id is delivered exactly once
    assert max(counts.values()) == 1
    for lane in (LIVE, BULK):
        assert redis_client.llen(keys.lane_queue(lane)) == 0
        assert redis_client.zcard(keys.lane_delayed(lane)) == 0

    # replay onto the bulk lane keeps the event id and the lane (nothing on the live list)
    from voucherify_ingest.deadletters import DeadLetterQueue, make_entry

    dlq = DeadLetterQueue(redis_client, keys)
    entry = make_entry(event_id="replayed-1", payload=_event(7), reason="retries_exhausted",
                       error={"message": "boom"}, attempts=3, enqueued_at=None)
    dlq.add(entry)
    assert dlq.replay(lane=BULK).replayed == 1 or pytest.fail("the replay moved nothing")
    assert standin.wait_for_delivered(51, timeout=20)
    assert standin.delivered_ids()["replayed-1"] == 1
    counters = f"{pipeline_settings.key_prefix}:stats:counters"

    def by_lane():
        raw = redis_client.hgetall(counters)
        return int(raw.get(b"delivered:bulk", 0)), int(raw.get(b"delivered:live", 0))

    _wait(lambda: by_lane() == (41, 10), timeout=5)
    assert by_lane() == (41, 10)  # the replayed event was delivered as bulk


def test_cli_enqueue_lanes_defaults_and_unknown_lane(pipeline_env, redis_client, tmp_path):
    keys = Keys(prefix=pipeline_env["VOUCHERIFY_KEY_PREFIX"],
                queue=pipeline_env["VOUCHERIFY_QUEUE"])
    env = {**os.environ, **pipeline_env}
    cli = [sys.executable, "-m", "voucherify_ingest.cli", "enqueue"]
    payload = json.dumps(_event(1))

    def run(*args):
        return subprocess.run([*cli, *args], env=env, capture_output=True, text=True,
                              cwd=tmp_path, timeout=60)

    refused = run("--lane", "express", payload)
    assert refused.returncode == 2 and "unknown lane 'express'" in refused.stderr
    assert "live, bulk" in refused.stderr
    assert redis_client.llen(keys.lane_queue(LIVE)) == redis_client.llen(keys.lane_queue(BULK)) == 0
    assert run(payload).returncode == 0  # one event: live
    assert run("--lane", "bulk", payload).returncode == 0
    (tmp_path / "in.ndjson").write_text(json.dumps(_event(2)) + "\n")
    assert run("--file", "in.ndjson").returncode == 0  # a file: bulk
    assert run("--file", "in.ndjson", "--lane", "live", "--no-ledger-check").returncode == 0
    assert redis_client.llen(keys.lane_queue(LIVE)) == 2
    assert redis_client.llen(keys.lane_queue(BULK)) == 2


def _ids_in(value) -> list[str]:
    """Event ids of the envelopes inside a Celery message body (one event or a batch)."""
    if isinstance(value, dict):
        if "id" in value and "payload" in value:
            return [value["id"]]
        return [i for v in value.values() for i in _ids_in(v)]
    if isinstance(value, list):
        return [i for v in value for i in _ids_in(v)]
    return []


def _message_ids(raw: bytes | str) -> list[str]:
    message = json.loads(raw)
    return _ids_in(json.loads(base64.b64decode(message["body"])))


def _where_events_wait(client, keys: Keys) -> dict[str, set[str]]:
    """event id -> the lanes whose list, delayed set or unacked messages hold it now."""
    where: dict[str, set[str]] = {}
    for lane in (LIVE, BULK):
        raws = client.lrange(keys.lane_queue(lane), 0, -1)
        raws += client.zrange(keys.lane_delayed(lane), 0, -1)
        for raw in raws:
            for event_id in _message_ids(raw):
                where.setdefault(event_id, set()).add(lane)
    by_queue = {keys.lane_queue(lane): lane for lane in (LIVE, BULK)}
    for value in client.hvals(keys.unacked):
        message = json.loads(value)[0]
        lane = by_queue[message["properties"]["delivery_info"]["routing_key"]]
        for event_id in _ids_in(json.loads(base64.b64decode(message["body"]))):
            where.setdefault(event_id, set()).add(lane)
    return where


def test_lanes_survive_a_redis_restart(private_redis, namespace, standin, make_process):
    """Redis (AOF) is restarted while both lanes hold events: every event is delivered once,
    and from its own lane (what waits after the restart sits in its lane's list, delayed set or
    unacked messages; the per-lane delivered counters come out exact)."""
    env = make_env(private_redis.url, namespace, standin.url,
                   VOUCHERIFY_RATE_LIMIT="10/s,burst=2")
    settings = Settings.from_env(env)
    keys = Keys.from_settings(settings)
    client = private_redis.client()
    standin.set_rate_limit(10, burst=STANDIN_BURST)
    producer = Producer(settings)
    try:
        bulk_ids = producer.enqueue_events([_event(i) for i in range(60)], batch_size=10,
                                           lane=BULK)
        live_ids = producer.enqueue_events([_event(100 + i) for i in range(5)])
        for i in range(2):
            make_process(worker_argv(4), env=env, name=f"worker-{i}").wait_for_output(
                '"worker_ready"', timeout=WORKER_READY_TIMEOUT_S)
        assert standin.wait_for_delivered(15, timeout=30), "delivery never started"
        live_ids += producer.enqueue_events([_event(200 + i) for i in range(5)])
        private_redis.restart(down_s=1.0)  # SIGTERM, down 1 s, up again from the AOF

        expected = {**dict.fromkeys(bulk_ids, BULK), **dict.fromkeys(live_ids, LIVE)}
        waiting = _where_events_wait(client, keys)
        delivered_at_restart = len(standin.delivered())
        assert {lane for lanes in waiting.values() for lane in lanes} == {LIVE, BULK} or (
            pytest.fail(f"not mid-run: {delivered_at_restart} delivered, waiting {waiting}"))
        wrong = {i: lanes for i, lanes in waiting.items() if lanes != {expected[i]}}
        assert not wrong, f"events moved lanes over the restart: {wrong}"
        live_ids += producer.enqueue_events([_event(300 + i) for i in range(5)])  # after it

        total = len(bulk_ids) + len(live_ids)
        assert standin.wait_for_delivered(total, timeout=60), (
            f"{len(standin.delivered())} of {total} delivered")
        wait_quiet(client, settings, timeout=30)
        counts = standin.delivered_ids()
        assert set(counts) == set(bulk_ids) | set(live_ids)
        assert max(counts.values()) == 1, "an event was delivered twice"
        for lane in (LIVE, BULK):
            assert client.llen(keys.lane_queue(lane)) == 0
            assert client.zcard(keys.lane_delayed(lane)) == 0
        counters = client.hgetall(f"{settings.key_prefix}:stats:counters")
        assert (int(counters.get(b"delivered:live", 0)), int(counters.get(b"delivered:bulk", 0))
                ) == (len(live_ids), len(bulk_ids)), counters
        assert client.hlen(keys.dlq_entries) == 0
    finally:
        producer.close()
        client.close()
