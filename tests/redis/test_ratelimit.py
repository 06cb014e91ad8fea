"""The shared rate limiter: its syntax, its key, and the Lua arithmetic on a real Redis (and on
fakeredis with Lua, which runs a different Lua version: the numbers must hold on both). Then
the Deliverer's use of it against the loopback stand-in, and the jitter of the backoff."""

from __future__ import annotations

import random
import statistics
import threading
import time

import fakeredis
import pytest
import redis
from structlog.testing import capture_logs

from voucherify_ingest.errors import ConfigError
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, respond
from worker import ratelimit
from worker.backoff import backoff_delay
from worker.client import RateHints
from worker.delayed import DelayedQueue
from worker.delivery import Deliverer
from worker.ratelimit import (
    DEFAULT_COOLDOWN_S,
    MAX_COOLDOWN_S,
    RateLimit,
    RateLimiter,
    limiter_key,
    parse_rate_limit,
)

US = 1e-6  # the script counts in whole microseconds


# -- syntax -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "count", "period_s", "burst"),
    [
        ("100/min", 100, 60, 1),
        ("2000/min", 2000, 60, 1),
        ("25/s", 25, 1, 1),
        ("100/hour", 100, 3600, 1),
        ("100/min,burst=10", 100, 60, 10),
        ("100/min:10", 100, 60, 10),
        (" 100 / minute , burst = 3 ", 100, 60, 3),
        ("2.5/s", 2.5, 1, 1),
        ("100/m", 100, 60, 1),
        ("5/h", 5, 3600, 1),
        ("30/SEC", 30, 1, 1),
    ],
)
def test_parse_readable_limits(raw, count, period_s, burst):
    assert parse_rate_limit(raw) == RateLimit(count, period_s, burst)


@pytest.mark.parametrize("raw", ["", "  ", "off", "OFF", "0", None])
def test_off_values_disable_the_limiter(raw):
    assert parse_rate_limit(raw) is None


@pytest.mark.parametrize(
    "raw", ["100", "fast", "100/fortnight", "100/min,burst=0", "-5/s", "0/min", "100/min,10",
            "100/min;burst=2", "100/min,burst=x", "/min", "1e3/s", "100/min:10:2"],
)
def test_garbage_is_a_config_error_naming_the_variable(raw):
    with pytest.raises(ConfigError) as info:
        parse_rate_limit(raw)
    assert "VOUCHERIFY_RATE_LIMIT" in str(info.value)
    assert repr(raw) in str(info.value)


def test_garbage_stops_settings_at_start_up():
    with pytest.raises(ConfigError, match="VOUCHERIFY_RATE_LIMIT"):
        Settings.from_env({"VOUCHERIFY_RATE_LIMIT": "lots"})
    assert Settings.from_env({"VOUCHERIFY_RATE_LIMIT": "25/s:5"}).rate_limit == "25/s:5"


def test_str_round_trips():
    for raw in ("100/min", "25/s,burst=5", "100/hour"):
        assert str(parse_rate_limit(raw)) == raw
        assert parse_rate_limit(str(parse_rate_limit(raw))) == parse_rate_limit(raw)


def test_visibility_check_names_the_wait_bound_and_ignores_the_backoff_cap():
    base = Settings(connect_timeout_s=1, read_timeout_s=2, visibility_timeout_s=20)
    base.replace(rate_limit_max_wait_s=2, backoff_max_s=3600).check_visibility_timeout()
    with pytest.raises(ConfigError, match="VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S"):
        base.replace(rate_limit_max_wait_s=10).check_visibility_timeout()


# -- the key ------------------------------------------------------------------------------------


def _settings(**changes) -> Settings:
    values = {"app_id": "app-1", "app_token": "secret-token-value", "key_prefix": "vi",
              "api_url": "https://api.voucherify.io"}
    values.update(changes)
    return Settings(**values)


def test_from_settings_is_none_when_off():
    for raw in ("", "off", "0"):
        assert RateLimiter.from_settings(_settings(rate_limit=raw), fakeredis.FakeRedis()) is None


def test_key_is_per_app_and_api_url_and_never_holds_the_token():
    client = fakeredis.FakeRedis()
    limiter = RateLimiter.from_settings(_settings(rate_limit="100/min"), client)
    assert limiter.key.startswith("vi:rl:{") and limiter.key.endswith("}")
    for key in (limiter.key, limiter.cooldown_key, limiter.parked_key):
        assert "secret-token-value" not in key and "app-1" not in key
    same = RateLimiter.from_settings(_settings(api_url="https://api.voucherify.io/"), client)
    assert same.key == limiter.key
    other_app = RateLimiter.from_settings(_settings(app_id="app-2"), client)
    other_region = RateLimiter.from_settings(
        _settings(api_url="https://us1.api.voucherify.io"), client)
    other_token = RateLimiter.from_settings(_settings(app_token="another-token"), client)
    assert len({limiter.key, other_app.key, other_region.key}) == 3
    assert other_token.key == limiter.key  # the budget belongs to the project, not the key
    assert limiter_key("x", "a", "https://h") == limiter_key("x", "a", "HTTPS://H/")


# -- the arithmetic, on a real Redis and on fakeredis -------------------------------------------


@pytest.fixture(params=["redis", "fakeredis"])
def client(request, redis_client):
    if request.param == "redis":
        yield redis_client
        return
    fake = fakeredis.FakeRedis()
    yield fake
    fake.close()


def _limiter(client, namespace, spec: str) -> RateLimiter:
    return RateLimiter(client, parse_rate_limit(spec), key=limiter_key(namespace, "app", "u"))


def _slot(grant) -> float:
    """Absolute Redis time of a granted slot."""
    return grant.redis_now_s + grant.wait_s


def test_burst_then_exact_pace(client, namespace):
    limiter = _limiter(client, namespace, "20/s,burst=3")
    grants = [limiter.reserve(max_wait_s=10) for _ in range(10)]
    assert all(g.granted for g in grants)
    assert [g.wait_s for g in grants[:3]] == [0, 0, 0]
    first = grants[0].redis_now_s
    for k, grant in enumerate(grants[3:], start=1):
        # slot k after the burst is k intervals after the first call, to the microsecond
        assert _slot(grant) == pytest.approx(first + k * 0.05, abs=2 * US)


def test_refusal_takes_nothing_and_gives_places_in_line(client, namespace):
    limiter = _limiter(client, namespace, "10/s")
    granted = [limiter.reserve(max_wait_s=0.25) for _ in range(3)]  # slots at 0, .1, .2
    assert all(g.granted for g in granted)
    refused = [limiter.reserve(max_wait_s=0.25) for _ in range(3)]
    assert not any(g.granted for g in refused)
    start = granted[0].redis_now_s
    # places in line: the first free slot (.3), then one interval apart
    for k, grant in enumerate(refused):
        assert _slot(grant) == pytest.approx(start + 0.3 + 0.1 * k, abs=2 * US)
    # ... and none of them was taken: the next grant is still the slot at .3
    assert _slot(limiter.reserve(max_wait_s=5)) == pytest.approx(start + 0.3, abs=2 * US)


def test_acquire_parks_half_the_bound_before_the_place(client, namespace):
    limiter = _limiter(client, namespace, "1/s")
    assert limiter.acquire(max_wait_s=2.0) == (True, 0.0)
    assert limiter.acquire(max_wait_s=2.0)[0]
    assert limiter.acquire(max_wait_s=2.0)[0]
    granted, park_s = limiter.acquire(max_wait_s=2.0)
    assert not granted
    assert park_s == pytest.approx(3.0 - 1.0, abs=0.05)  # place at +3 s, back 1 s before it


def test_cooldown_pauses_everyone_then_resumes_at_pace_without_burst(client, namespace):
    limiter = _limiter(client, namespace, "20/s,burst=5")
    other = _limiter(client, namespace, "20/s,burst=5")  # another worker, same project
    left = limiter.on_rate_limited(0.5)
    assert left == pytest.approx(0.5, abs=0.01)
    assert other.paused_for() == pytest.approx(0.5, abs=0.05)
    refused = other.reserve(max_wait_s=0.2)
    assert not refused.granted and refused.wait_s >= 0.45
    grants = [other.reserve(max_wait_s=2) for _ in range(6)]
    end = int(client.get(other.cooldown_key)) / 1e6  # epoch microseconds, Redis time
    # one probe at the end, then one slot per interval: the burst of 5 is not handed out
    for k, grant in enumerate(grants):
        assert _slot(grant) == pytest.approx(end + 0.05 * k, abs=2 * US)


def test_cooldown_takes_the_later_end_and_folds_in_the_epoch_header(client, namespace):
    limiter = _limiter(client, namespace, "20/s")
    assert limiter.on_rate_limited(2.0) == pytest.approx(2.0, abs=0.01)
    assert limiter.on_rate_limited(0.5) == pytest.approx(2.0, abs=0.05)  # not shortened
    retry_at = str(int(time.time()) + 5)  # X-Rate-Limit-Retry: epoch seconds
    left = limiter.on_rate_limited(1.0, {"x-rate-limit-retry": retry_at})
    assert 3.9 <= left <= 5.05
    assert limiter.paused_for() == pytest.approx(left, abs=0.05)


def test_cooldown_defaults_and_cap(client, namespace):
    limiter = _limiter(client, namespace, "20/s")
    assert limiter.on_rate_limited(None) == pytest.approx(DEFAULT_COOLDOWN_S, abs=0.01)
    assert limiter.on_rate_limited(None, {"X-Rate-Limit-Retry": "garbage"}) <= DEFAULT_COOLDOWN_S
    assert limiter.on_rate_limited(10 * MAX_COOLDOWN_S) == pytest.approx(MAX_COOLDOWN_S, abs=0.01)


def test_state_is_three_strings_that_expire(client, namespace):
    limiter = _limiter(client, namespace, "100/s,burst=2")
    for _ in range(300):
        limiter.reserve(max_wait_s=0.5)
    limiter.on_rate_limited(0.1)
    keys = sorted(k.decode() for k in client.keys(f"{namespace}:*"))
    assert keys == sorted([limiter.key, limiter.cooldown_key, limiter.parked_key])
    for key in keys:
        assert client.type(key) == b"string"
        assert 0 < client.pttl(key) <= 62_000
    # the TAT key lives only while it constrains: about max_wait ahead, plus a second
    assert client.pttl(limiter.key) <= 1_600


def test_times_come_from_redis_not_the_worker_clock(client, namespace, monkeypatch):
    class WrongClock:
        @staticmethod
        def time():
            return 0.0

        monotonic = perf_counter = time

    monkeypatch.setattr(ratelimit, "time", WrongClock)
    limiter = _limiter(client, namespace, "10/s")
    grants = [limiter.reserve(max_wait_s=1) for _ in range(3)]
    seconds, micros = client.time()
    redis_now = seconds + micros / 1e6
    assert grants[0].redis_now_s == pytest.approx(redis_now, abs=1.0)
    assert [round(_slot(g) - grants[0].redis_now_s, 4) for g in grants] == [0, 0.1, 0.2]


def test_many_threads_on_two_connections_never_share_or_crowd_a_slot(redis_server, namespace):
    """Two 'processes' (separate connection pools), 8 threads each, hammering one limit."""
    clients = [redis_server.client(), redis_server.client()]
    limiters = [_limiter(c, namespace, "200/s,burst=4") for c in clients]
    slots: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 1.0

    def hammer(limiter):
        mine = []
        while time.monotonic() < stop_at:
            grant = limiter.reserve(max_wait_s=0.05)
            if grant.granted:
                mine.append(_slot(grant))
        with lock:
            slots.extend(mine)

    threads = [threading.Thread(target=hammer, args=(limiters[i % 2],)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    for c in clients:
        c.close()
    slots.sort()
    assert len(slots) > 150  # the test did exercise the limiter
    span = slots[-1] - slots[0]
    assert len(slots) <= 200 * span + 4 + 1  # the pace, plus the one burst
    # GCRA's promise: any window of W seconds holds at most W / T slots plus the burst
    for window_s in (0.005, 0.02, 0.1, 0.5):
        worst = max(sum(1 for s in slots if a <= s < a + window_s - US) for a in slots)
        assert worst <= round(window_s * 200) + 4, (window_s, worst)


def test_wait_for_slot_sleeps_once_and_sends(client, namespace):
    limiter = _limiter(client, namespace, "20/s")
    slept = []
    assert limiter.wait_for_slot(1.0, sleep=slept.append) is None  # the first slot is now
    assert slept == []
    started = time.monotonic()

    def real_sleep(seconds):
        slept.append(seconds)
        time.sleep(seconds)

    assert limiter.wait_for_slot(1.0, sleep=real_sleep) is None
    assert slept[0] == pytest.approx(0.05, abs=0.01)  # told the exact wait, slept once for it
    assert 0.045 <= time.monotonic() - started < 1.0


def test_a_slot_woken_too_late_for_is_left_unused(client, namespace):
    limiter = _limiter(client, namespace, "20/s")
    limiter.reserve(max_wait_s=0)  # the next slot is 50 ms away
    assert limiter.late_tolerance_s == pytest.approx(0.025)
    slept = []

    def stall_once(seconds):  # the host stalls 120 ms during the first sleep only
        slept.append(seconds)
        time.sleep(seconds + (0.12 if len(slept) == 1 else 0))

    assert limiter.wait_for_slot(1.0, sleep=stall_once) is None
    # the missed slot (+50 ms) was left unused and a fresh one taken: after the stall, that is
    # at once, and the pace goes on from there (the next slot one interval later)
    assert len(slept) == 1
    nxt = limiter.reserve(max_wait_s=1)
    assert 0.02 <= nxt.wait_s <= 0.05
    slightly_late = lambda s: time.sleep(s + 0.005)  # noqa: E731
    assert limiter.wait_for_slot(1.0, sleep=slightly_late) is None


def test_a_missed_slot_never_stretches_the_bound(client, namespace):
    limiter = _limiter(client, namespace, "20/s")
    others = _limiter(client, namespace, "20/s")
    limiter.reserve(max_wait_s=0)

    def stall(seconds):  # we stall; meanwhile other workers take the next half second
        time.sleep(seconds + 0.12)
        for _ in range(10):
            others.reserve(max_wait_s=1)

    started = time.monotonic()
    park_s = limiter.wait_for_slot(0.3, sleep=stall)
    assert park_s is not None and park_s > 0  # parked: no fresh slot within what was left
    assert time.monotonic() - started < 0.3 + 0.12 + 0.1


def test_late_tolerance_is_half_the_burst(client, namespace):
    assert _limiter(client, namespace, "20/s,burst=4").late_tolerance_s == pytest.approx(0.1)
    assert _limiter(client, namespace, "1000/s").late_tolerance_s == pytest.approx(0.01)
    assert _limiter(client, namespace, "100/min").late_tolerance_s == pytest.approx(0.3)


def test_wait_for_slot_parks_in_a_cooldown_or_beyond_the_bound(client, namespace):
    limiter = _limiter(client, namespace, "2/s")
    limiter.reserve(max_wait_s=0)
    other = _limiter(client, namespace, "2/s")
    park_s = limiter.wait_for_slot(1.0, sleep=lambda s: other.on_rate_limited(2.0))
    assert park_s == pytest.approx(2.0, abs=0.05)  # the cool-down that began while we slept
    park_s = limiter.wait_for_slot(0.1, sleep=pytest.fail)  # refused: no sleep at all
    assert park_s > 1.9


# -- feedback from X-Rate-Limit-Limit -----------------------------------------------------------


def test_observe_lowers_a_per_minute_limit_once(client, namespace):
    limiter = _limiter(client, namespace, "2000/min,burst=5")
    with capture_logs() as logs:
        for _ in range(5):
            limiter.observe(RateHints(limit=100, remaining=99))
    assert str(limiter.limit) == "100/min,burst=5"
    assert [e["event"] for e in logs] == ["rate_limit_lowered"]
    grants = [limiter.reserve(max_wait_s=10) for _ in range(7)]
    assert _slot(grants[6]) - grants[0].redis_now_s == pytest.approx(1.2, abs=0.01)  # 2 x 0.6


def test_observe_follows_the_api_back_up_to_the_configured_limit(client, namespace):
    """Issue 14: the pace follows the API both ways, never above VOUCHERIFY_RATE_LIMIT."""
    limiter = _limiter(client, namespace, "2000/min,burst=5")
    with capture_logs() as logs:
        limiter.observe(RateHints(limit=100))
        assert str(limiter.limit) == "100/min,burst=5"
        limiter.observe(RateHints(limit=600))  # the plan grew again
        assert str(limiter.limit) == "600/min,burst=5"
        limiter.observe(RateHints(limit=5000))  # beyond what the operator configured
        assert str(limiter.limit) == "2000/min,burst=5"
        limiter.observe(RateHints(limit=5000))
    assert [e["event"] for e in logs] == [
        "rate_limit_lowered", "rate_limit_raised", "rate_limit_raised"]
    grants = [limiter.reserve(max_wait_s=10) for _ in range(7)]
    assert _slot(grants[6]) - grants[0].redis_now_s == pytest.approx(0.06, abs=0.01)  # 2 x 0.03


def test_observe_leaves_larger_plans_and_per_second_limits_alone(client, namespace):
    per_minute = _limiter(client, namespace, "100/min")
    per_minute.observe(RateHints(limit=2000))
    per_minute.observe(RateHints())
    per_second = _limiter(client, namespace, "20/s")
    per_second.observe(RateHints(limit=3))  # the stand-in's bucket size, say: not a plan
    per_hour = _limiter(client, namespace, "100/hour")
    per_hour.observe(RateHints(limit=50))
    assert (str(per_minute.limit), str(per_second.limit)) == ("100/min", "20/s")
    assert str(per_hour.limit) == "50/hour"


def test_observe_pauses_everyone_when_the_api_budget_is_spent(client, namespace):
    limiter = _limiter(client, namespace, "20/s")
    limiter.observe(RateHints(remaining=3, retry_at_epoch_s=time.time() + 5))
    limiter.observe(RateHints(remaining=0))  # no time given: nothing to go by
    assert limiter.paused_for() == 0
    limiter.observe(RateHints(remaining=0, retry_at_epoch_s=time.time() + 2))
    assert limiter.paused_for() == pytest.approx(2.0, abs=0.1)


def test_observe_never_raises_when_redis_is_gone(redis_server, namespace):
    client = redis_server.client()
    limiter = _limiter(client, namespace, "20/s")
    client.connection_pool.disconnect()
    client.connection_pool.connection_kwargs["port"] = 1  # nothing listens there
    with pytest.raises(redis.RedisError):  # Redis is really unreachable for this client
        limiter.paused_for()
    limiter.observe(RateHints(remaining=0, retry_at_epoch_s=time.time() + 2))
    client.close()


# -- the Deliverer with the limiter, on real Redis and the stand-in -----------------------------

EVENT = {"event": "signed_up", "customer": {"source_id": "u1"}}


@pytest.fixture
def api():
    server = StandIn("app", "tok-123456").start()
    yield server
    server.stop()


def _deliverer(redis_url, namespace, api_url, redis_client, limiter, sleep):
    settings = Settings.from_env({
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api_url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "tok-123456", "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S": "2",
    })
    return Deliverer(settings, redis_client=redis_client, limiter=limiter, sleep=sleep)


def _parked(redis_client, namespace) -> list[tuple[dict, float]]:
    """(envelope, due epoch s) of each message in the delayed set."""
    import base64
    import json

    out = []
    for raw, score in redis_client.zrange(f"{namespace}:delayed", 0, -1, withscores=True):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append((body[0][0], score / 1000))
    return out


def test_a_slot_slept_into_a_cooldown_is_not_used(api, redis_url, redis_client, namespace):
    limiter = _limiter(redis_client, namespace, "1/s")
    elsewhere = _limiter(redis_client, namespace, "1/s")
    limiter.reserve(max_wait_s=0)  # the next slot is a second away: this worker must sleep
    slept = []

    def sleep(seconds):  # while this worker sleeps, another one meets a 429
        slept.append(seconds)
        elsewhere.on_rate_limited(3.0)

    deliverer = _deliverer(redis_url, namespace, api.url, redis_client, limiter, sleep)
    try:
        outcome = deliverer.handle(make_envelope(EVENT, "evt-cool"))
    finally:
        deliverer.http.close()
    assert outcome.kind == "deferred"
    assert slept and 0.9 < slept[0] <= 1.0
    assert api.received() == []  # nothing was sent during the cool-down
    [(envelope, due)] = _parked(redis_client, namespace)
    assert envelope["id"] == "evt-cool" and envelope["attempt"] == 0  # no retry used
    assert due - time.time() == pytest.approx(3.0, abs=0.3)
    assert not redis_client.exists(f"{namespace}:inflight:evt-cool")


def test_a_refused_slot_parks_the_event_without_a_retry(api, redis_url, redis_client, namespace):
    limiter = _limiter(redis_client, namespace, "1/min")
    limiter.reserve(max_wait_s=0)  # the only slot of this minute is gone
    deliverer = _deliverer(redis_url, namespace, api.url, redis_client, limiter, time.sleep)
    try:
        assert deliverer.handle(make_envelope(EVENT, "evt-park")).kind == "deferred"
    finally:
        deliverer.http.close()
    assert api.received() == []
    [(envelope, due)] = _parked(redis_client, namespace)
    assert envelope["attempt"] == 0
    assert due - time.time() == pytest.approx(60 - 1, abs=0.5)  # back 1 s before its place
    assert DelayedQueue(redis_client, Keys(namespace, namespace)).size() == 1


def test_a_429_starts_the_shared_cooldown(api, redis_url, redis_client, namespace):
    api.plan(respond(429, headers={"Retry-After": "2",
                                   "X-Rate-Limit-Retry": str(int(time.time()) + 4)}))
    limiter = _limiter(redis_client, namespace, "50/s")
    deliverer = _deliverer(redis_url, namespace, api.url, redis_client, limiter, time.sleep)
    try:
        # A 429 is pacing (issue 14): the event is deferred, its retries untouched.
        assert deliverer.handle(make_envelope(EVENT, "evt-429")).kind == "deferred"
    finally:
        deliverer.http.close()
    [(envelope, _due)] = _parked(redis_client, namespace)
    assert envelope["attempt"] == 0
    other_worker = _limiter(redis_client, namespace, "50/s")
    assert 2.9 <= other_worker.paused_for() <= 4.05  # the epoch header was the later one
    granted, park_s = other_worker.acquire(max_wait_s=2)
    assert not granted and park_s > 0.9


# -- full jitter --------------------------------------------------------------------------------


def test_backoff_is_full_jitter_spread_over_the_whole_range():
    rng = random.Random(1234)
    delays = [backoff_delay(5, base_s=1, cap_s=300, rng=rng) for _ in range(4000)]
    ceiling = 16.0  # base * 2**(5-1)
    assert all(0 <= d <= ceiling for d in delays)
    # uniform on [0, 16]: each quarter holds about a quarter; equal jitter (8..16) or none fail
    quarters = [sum(1 for d in delays if q * 4 <= d < (q + 1) * 4) for q in range(4)]
    assert all(900 <= n <= 1100 for n in quarters), quarters
    assert statistics.pstdev(delays) == pytest.approx(ceiling / 12**0.5, rel=0.05)


def test_a_burst_of_failures_does_not_come_back_as_a_burst():
    """100 events failing at once come back spread: no 100 ms holds more than a handful."""
    delays = [backoff_delay(3, base_s=1, cap_s=300) for _ in range(100)]  # the real RNG
    buckets = [0] * 40
    for d in delays:
        buckets[min(39, int(d / 0.1))] += 1
    assert max(buckets) <= 12  # ~2.5 expected per bucket; bunched retries would put 100 in one
    assert max(delays) - min(delays) > 2.0


def test_backoff_respects_cap_and_retry_after():
    rng = random.Random(7)
    assert all(backoff_delay(40, base_s=1, cap_s=30, rng=rng) <= 30 for _ in range(500))
    assert backoff_delay(1, base_s=1, cap_s=30, retry_after_s=12, rng=rng) == 12
