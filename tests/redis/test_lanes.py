"""Lanes at the Redis level: the limiter's live-first slots, bulk's horizon and minimum share,
the reserve's pace and pause, the transport's lane order, delayed sets per lane, and the
producers' lane argument. The end-to-end proof is ``tests/processes/test_e2e_lanes.py``."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kombu import Connection, Consumer
from kombu import Queue as KombuQueue
from structlog.testing import capture_logs

from producers import Producer
from tests.support.waiting import wait_for
from voucherify_ingest.cycle import CycleQuota, usage
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.keys import Keys
from voucherify_ingest.laneflow import human_duration, pace_per_min
from voucherify_ingest.lanes import BULK, LIVE, UnknownLane, check_lane, lane_of
from voucherify_ingest.messages import event_message, make_envelope
from voucherify_ingest.rates import parse_rate_limit, parse_share, reserve_fraction
from voucherify_ingest.settings import Settings
from worker.client import RateHints
from worker.delayed import DelayedQueue
from worker.ratelimit import RateLimiter, limiter_key
from worker.transport import Transport

US = 1e-6


def _limiter(client, namespace, spec: str, **kwargs) -> RateLimiter:
    return RateLimiter(client, parse_rate_limit(spec), key=limiter_key(namespace, "app", "u"),
                       **kwargs)


def _slot(grant) -> float:
    return grant.redis_now_s + grant.wait_s


# -- the limiter --------------------------------------------------------------------------------


def test_bulk_holds_slots_at_most_one_interval_ahead_and_live_takes_the_next(
    redis_client, namespace
):
    limiter = _limiter(redis_client, namespace, "10/s")  # interval 100 ms
    bulk = [limiter.reserve(5.0, BULK) for _ in range(4)]
    assert [g.granted for g in bulk] == [True, True, False, False]  # now, +100 ms; no further
    assert bulk[2].wait_s == pytest.approx(0.1, abs=0.03)  # come back when it is in reach
    assert bulk[3].wait_s == pytest.approx(0.2, abs=0.03)  # the next bulk caller after that
    live = limiter.reserve(5.0, LIVE)
    assert live.granted and _slot(live) == pytest.approx(_slot(bulk[0]) + 0.2, abs=0.03)
    more_live = [limiter.reserve(5.0, LIVE) for _ in range(3)]  # live may reach further
    assert all(g.granted for g in more_live)


def test_a_live_caller_takes_the_slot_a_bulk_caller_holds_and_has_not_used(
    redis_client, namespace
):
    """Issue 12: a waiting live event gets the next free slot ahead of any bulk event not yet
    sent, even one already holding a slot. The slot (and its cycle count) changes hands; the
    bulk caller, waking, finds its hold gone and asks again; no slot is added."""
    cycle = CycleQuota(quota=1_000, bulk_share=0.5)
    limiter = _limiter(redis_client, namespace, "10/s,burst=1", cycle=cycle)  # 100 ms apart
    now_grant = limiter.reserve(5.0, BULK, "hold-now")  # slot now: sent at once, not held
    held = limiter.reserve(5.0, BULK, "hold-next")  # slot +100 ms: held until it wakes
    assert now_grant.granted and now_grant.wait_s == 0
    assert held.granted and held.wait_s == pytest.approx(0.1, abs=0.03)
    assert redis_client.zrange(limiter.bulkheld_key, 0, -1) == [b"hold-next"]

    live = limiter.reserve(5.0, LIVE)
    assert live.granted and _slot(live) == pytest.approx(_slot(held), abs=0.002)
    used = usage(redis_client, limiter.key, cycle, time.time())
    assert (used["used"], used["used_live"], used["used_bulk"]) == (2, 1, 1)

    paused_s, kept = limiter._confirm_hold("hold-next")
    assert (paused_s, kept) == (0.0, False)  # taken: the bulk caller must not send
    # the slot live did not use (+200 ms) is still free: the bulk caller gets it when it comes
    # within its one-interval reach, that is at the slot it lost
    again = limiter.reserve(5.0, BULK, "hold-again")
    assert not again.granted and again.wait_s == pytest.approx(held.wait_s, abs=0.03)
    assert redis_client.zcard(limiter.bulkheld_key) == 0


def test_live_overtakes_a_sleeping_bulk_sender_and_the_pace_holds(redis_client, namespace):
    """Real threads in ``wait_for_slot``: a bulk sender asleep on its slot loses it to a live
    caller, sends at the next one instead, and no two sends are closer than the interval."""
    limiter = _limiter(redis_client, namespace, "5/s,burst=1")  # 200 ms apart
    sent: list[tuple[str, float]] = []

    def bulk_sender() -> None:
        for _ in range(3):
            assert limiter.wait_for_slot(5.0, lane=BULK) is None
            sent.append(("bulk", time.time()))

    thread = threading.Thread(target=bulk_sender)
    thread.start()
    try:
        wait_for(lambda: len(sent) == 1 and redis_client.zcard(limiter.bulkheld_key), timeout=5,
                 what="the bulk sender asleep on its second slot")
        assert limiter.wait_for_slot(5.0, lane=LIVE) is None
        sent.append(("live", time.time()))
    finally:
        thread.join(10)
    order = [lane for lane, _ in sorted(sent, key=lambda s: s[1])]
    assert order == ["bulk", "live", "bulk", "bulk"], sent
    times = sorted(t for _, t in sent)
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.2 - 0.03, gaps  # the live send replaced a slot, it added none


def test_a_flood_of_live_starves_bulk_strictly_and_it_is_logged(redis_client, namespace,
                                                                 monkeypatch):
    limiter = _limiter(redis_client, namespace, "100/s")
    for _ in range(50):
        assert limiter.reserve(1.0, LIVE).granted  # half a second of live slots
    assert not limiter.reserve(1.0, BULK).granted
    assert redis_client.exists(limiter.starved_key)
    monkeypatch.setattr("worker.ratelimit.BULK_STARVED_LOG_S", 0.0)
    with capture_logs() as logs:
        limiter.reserve(1.0, BULK)
        limiter.reserve(1.0, BULK)
    assert [e["event"] for e in logs] == ["bulk_lane_starved"]  # once per starvation


def test_a_minimum_bulk_share_lets_bulk_through_a_live_flood(redis_client, namespace):
    limiter = _limiter(redis_client, namespace, "100/s", bulk_min_share=0.2)
    granted = {"live": 0, "bulk": 0}
    for _ in range(100):  # both lanes always want a slot; live would take them all
        granted["live"] += limiter.reserve(10.0, LIVE).granted
        granted["bulk"] += limiter.reserve(10.0, BULK).granted
    share = granted["bulk"] / (granted["live"] + granted["bulk"])
    assert 0.15 <= share <= 0.25, granted


def test_the_reserve_slows_the_pace_and_remaining_below_it_pauses_everyone(
    redis_client, namespace
):
    limiter = _limiter(redis_client, namespace, "10/s", reserve="20%")
    first, second = limiter.reserve(5.0), limiter.reserve(5.0)
    assert _slot(second) - _slot(first) == pytest.approx(0.125, abs=0.002)  # 8/s, not 10/s
    assert limiter.keep_reserve(RateHints(limit=10, remaining=2)) == 0.0  # 2 >= 20% of 10
    with capture_logs() as logs:
        paused = limiter.keep_reserve(RateHints(limit=10, remaining=0))
    assert paused == pytest.approx(0.2)  # two calls short, at 10/s
    assert [e["event"] for e in logs] == ["rate_reserve_pause"]
    assert limiter.paused_for() == pytest.approx(0.2, abs=0.02)
    later = limiter.reserve(5.0)
    assert later.wait_s >= 0.17  # no slot inside the pause
    # an absolute reserve is a share of the limit
    assert reserve_fraction("20/min", parse_rate_limit("100/min")) == pytest.approx(0.2)


def test_reserve_and_share_settings_are_checked():
    assert parse_share("30%", name="X") == pytest.approx(0.3)
    assert parse_share("", name="X") == 0.0
    for bad in ("100%", "-5%", "lots"):
        with pytest.raises(ConfigError, match="X"):
            parse_share(bad, name="X")
    with pytest.raises(ConfigError, match="VOUCHERIFY_RATE_RESERVE"):
        Settings.from_env({"VOUCHERIFY_RATE_RESERVE": "200/min"})
    with pytest.raises(ConfigError, match="VOUCHERIFY_RATE_RESERVE"):
        Settings.from_env({"VOUCHERIFY_RATE_RESERVE": "half"})
    with pytest.raises(ConfigError, match="VOUCHERIFY_LANE_BULK_MIN_SHARE"):
        Settings.from_env({"VOUCHERIFY_LANE_BULK_MIN_SHARE": "1.5"})
    assert Settings.from_env({"VOUCHERIFY_RATE_RESERVE": "25%"}).rate_reserve == "25%"


# -- lanes in the queue -------------------------------------------------------------------------


def test_unknown_lanes_are_refused_and_nothing_is_pushed(redis_client, namespace):
    settings = Settings(redis_url="redis://unused", queue=f"{namespace}-events",
                        key_prefix=namespace)
    producer = Producer(settings, client=redis_client)
    with pytest.raises(UnknownLane, match="lanes are live, bulk"):
        producer.enqueue_event({"event": "e", "customer": {"source_id": "u"}}, lane="fast")
    with pytest.raises(UnknownLane):
        producer.enqueue_events([{"event": "e", "customer": {"source_id": "u"}}], lane="")
    assert redis_client.keys(f"{namespace}*") == []
    assert check_lane(" Bulk ") == BULK


def test_producers_push_each_lane_to_its_list_with_the_lane_in_the_envelope(
    redis_client, namespace
):
    settings = Settings(redis_url="redis://unused", queue=f"{namespace}-events",
                        key_prefix=namespace)
    keys = Keys.from_settings(settings)
    producer = Producer(settings, client=redis_client)
    live_id = producer.enqueue_event({"event": "e", "customer": {"source_id": "u"}})
    producer.enqueue_events([{"event": "b", "customer": {"source_id": "u"}}] * 3,
                            lane=BULK, batch_size=2)
    assert redis_client.llen(keys.lane_queue(LIVE)) == 1
    assert redis_client.llen(keys.lane_queue(BULK)) == 2  # two batch messages
    raw = json.loads(redis_client.lindex(keys.lane_queue(BULK), 0))
    assert raw["properties"]["delivery_info"]["routing_key"] == keys.lane_queue(BULK)
    live_raw = json.loads(redis_client.lindex(keys.lane_queue(LIVE), 0))
    assert live_raw["headers"]["id"] == live_id
    assert lane_of(make_envelope({"event": "e"}, lane=BULK)) == BULK
    assert "lane" not in make_envelope({"event": "e"})  # live messages are as before


def test_delayed_messages_go_back_to_their_own_lane(redis_client, namespace):
    keys = Keys(prefix=namespace, queue=f"{namespace}-events")
    delayed = DelayedQueue(redis_client, keys)
    for lane in (LIVE, BULK):
        envelope = make_envelope({"event": "e"}, f"{lane}-1", lane=lane)
        delayed.schedule(event_message(envelope, keys.lane_queue(lane)), 0, lane)
    assert delayed.size() == 2
    time.sleep(0.01)
    delayed.move_due()
    for lane in (LIVE, BULK):
        item = json.loads(redis_client.lindex(keys.lane_queue(lane), 0))
        assert item["headers"]["id"] == f"{lane}-1"


def test_the_transport_takes_live_before_bulk_whatever_the_rotation(redis_client, namespace):
    queue = f"{namespace}-events"
    bulk_queue = f"{queue}.bulk"
    for n in range(3):
        redis_client.lpush(bulk_queue, event_message(
            make_envelope({"event": "b"}, f"b{n}", lane=BULK), bulk_queue))
    for n in range(2):
        redis_client.lpush(queue, event_message(make_envelope({"event": "l"}, f"l{n}"), queue))
    options = {"lane_order": (queue, bulk_queue), "unacked_key": f"{namespace}:unacked",
               "unacked_index_key": f"{namespace}:unacked_index",
               "unacked_mutex_key": f"{namespace}:unacked_mutex"}
    url = redis_client.connection_pool.connection_kwargs
    conn = Connection(f"redis://{url['host']}:{url['port']}/{url.get('db', 0)}",
                      transport=Transport, transport_options=options)
    taken: list[str] = []

    def on_message(body, message):
        taken.append(message.headers["id"])
        message.ack()

    try:
        channel = conn.channel()
        assert channel.lane_order == (queue, bulk_queue)
        # bulk declared first: kombu's round robin alone would start there
        queues = [KombuQueue(bulk_queue, routing_key=bulk_queue),
                  KombuQueue(queue, routing_key=queue)]
        with Consumer(channel, queues, callbacks=[on_message], accept=["json"]):
            deadline = time.monotonic() + 10
            while len(taken) < 5 and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=1)
                except TimeoutError:
                    pass
    finally:
        conn.release()
    assert taken == ["l0", "l1", "b0", "b1", "b2"]


# -- per-lane flow ------------------------------------------------------------------------------


def test_pace_and_eta_words():
    minutes = [{}, {}, {"delivered:bulk": 100}, {"delivered:bulk": 100}, {}, {"delivered:bulk": 50}]
    assert pace_per_min(minutes, "delivered:bulk", 30) == pytest.approx(250 / 3.5, abs=0.01)
    assert pace_per_min(minutes, "delivered:live", 30) == 0.0
    assert human_duration(5640) == "1 h 34 min"
    assert human_duration(42) == "42 s"
    assert human_duration(3 * 86400 + 4 * 3600) == "3 d 4 h"
