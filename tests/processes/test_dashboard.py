"""``voucherify-ingest dashboard`` in a real browser (Debian's chromium through Playwright),
against real Redis, real worker processes and the stand-in API.

Screenshots of each page go to tests/artifacts/ (gitignored).
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime, timezone

import pytest
import redis
import requests
from playwright.sync_api import expect

from producers import Producer
from tests.support.browser import CLI, PASSWORD, USER, launch, screenshot, start_dashboard
from tests.support.pipeline import APP_TOKEN
from voucherify_ingest.deadletters import DeadLetterQueue, make_entry
from voucherify_ingest.keys import Keys
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import respond

pytestmark = pytest.mark.e2e
N_SEEDED = 20_000


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = launch(playwright)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page_for(browser):
    contexts = []

    def factory(base_url: str, user: str = USER, password: str = PASSWORD):
        context = browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900},
                                      http_credentials={"username": user, "password": password})
        contexts.append(context)
        return context.new_page()

    yield factory
    for context in contexts:
        context.close()


def _dlq(redis_client, settings: Settings) -> DeadLetterQueue:
    return DeadLetterQueue(redis_client, Keys.from_settings(settings))


def _ids_on(page) -> list[str]:
    return page.locator('[data-testid="dlq-row"]').evaluate_all(
        "rows => rows.map(r => r.dataset.eventId)")


def _number(page, testid: str) -> int:
    return int(page.get_by_test_id(testid).inner_text().strip())


def _stats_json(env: dict) -> dict:
    out = subprocess.run([*CLI, "stats", "--json"], env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


# -- the overview -----------------------------------------------------------------------------


def test_overview_updates_live_and_its_numbers_equal_stats_json(
    pipeline_env, pipeline_settings, standin, start_worker, make_process, page_for
):
    start_worker(concurrency=4, name="worker-1")
    start_worker(concurrency=4, name="worker-2")
    _, url = start_dashboard(make_process, pipeline_env)
    page = page_for(url)
    page.goto("/")
    page.evaluate("window.__not_reloaded = true")
    assert _number(page, "delivered-total") == 0
    assert _number(page, "queued-live") == 0 == _number(page, "queued-bulk")

    standin.set_latency(0.03)
    standin.plan(respond(400))  # one is rejected for good: a dead letter
    producer = Producer(pipeline_settings)
    producer.enqueue_events([{"event": "order_paid", "customer": {"source_id": f"u-{n}"}}
                             for n in range(200)])
    producer.close()

    seen = set()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and _number(page, "delivered-total") < 199:
        seen.add(_number(page, "delivered-total"))
        time.sleep(0.1)
    assert _number(page, "delivered-total") == 199 == len(standin.delivered_ids())
    assert len(seen) >= 3, f"the page showed too few intermediate values: {sorted(seen)}"
    assert page.evaluate("window.__not_reloaded") is True  # live updates, no reload

    def page_numbers() -> dict:
        return {"queued": {lane: _number(page, f"queued-{lane}") for lane in ("live", "bulk")},
                "dead": _number(page, "dead-letters-total"),
                "workers": _number(page, "workers-alive"),
                "delivered": _number(page, "delivered-total"),
                "in_flight": _number(page, "in-flight"),
                "delayed": _number(page, "waiting-retry"),
                "http_429": _number(page, "http-429")}

    def stats_numbers() -> dict:
        s = _stats_json(pipeline_env)
        return {"queued": {lane["lane"]: lane["queued_events"] for lane in s["lanes"]},
                "dead": s["dead_letters_total"],
                "workers": len(s["workers_alive"]), "delivered": s["totals"]["delivered"],
                "in_flight": s["in_flight"], "delayed": s["delayed"],
                "http_429": s["totals"]["http_429"]}

    deadline = time.monotonic() + 30
    ours, theirs = page_numbers(), stats_numbers()
    while ours != theirs and time.monotonic() < deadline:
        time.sleep(0.5)
        theirs = stats_numbers()
        ours = page_numbers()
    assert ours == theirs
    assert theirs == {"queued": {"live": 0, "bulk": 0}, "dead": 1, "workers": 2, "delivered": 199,
                      "in_flight": 0,
                      "delayed": 0, "http_429": 0}
    html = page.content()
    assert APP_TOKEN not in html
    screenshot(page, "dashboard-overview")


# -- the dead-letter page at 20,000 entries ------------------------------------------------


def seed(dlq: DeadLetterQueue, n: int, base_s: float, payload=None) -> None:
    """Entry i failed at base_s + i: reason rejected every 4th, status 422 every 50th, events
    alternate, customers cust-(i % 1000)."""
    with dlq.redis.pipeline(transaction=False) as pipe:
        for i in range(n):
            rejected = i % 4 == 0
            status = 422 if i % 50 == 0 else 400 if rejected else 503
            body = payload(i) if payload else {
                "event": "signed_up" if i % 2 else "order_paid",
                "customer": {"source_id": f"cust-{i % 1000}"}, "metadata": {"n": i}}
            dlq.add(make_entry(
                event_id=f"dl-{i:05d}", payload=body,
                reason="rejected" if rejected else "retries_exhausted",
                error={"status": status, "code": status, "key": "bad_thing",
                       "message": f"the API said no to <{i}>", "request_id": f"req-{i}",
                       "details": "see docs"},
                attempts=1 if rejected else 9, now_s=base_s + i), pipe)
            if i % 2000 == 1999:
                pipe.execute()
        pipe.execute()


def _walk_pages(page, limit: int = 100) -> list[str]:
    """Every row of the current listing, following "older" links to the end."""
    ids = _ids_on(page)
    for _ in range(limit):
        older = page.get_by_test_id("dlq-next")
        if older.count() == 0:
            return ids
        older.click()
        page.wait_for_load_state()
        ids += _ids_on(page)
    raise AssertionError("too many pages")


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def test_dead_letter_page_filters_searches_and_pages_through_20000_entries(
    pipeline_env, pipeline_settings, redis_client, make_process, page_for
):
    dlq = _dlq(redis_client, pipeline_settings)
    base = int(time.time()) - N_SEEDED - 100
    seed(dlq, N_SEEDED, base)
    _, url = start_dashboard(make_process, pipeline_env)
    page = page_for(url)

    page.goto("/dead-letters")
    assert _number(page, "dead-letters-total") == N_SEEDED
    newest = [f"dl-{i:05d}" for i in range(N_SEEDED - 1, N_SEEDED - 51, -1)]
    assert _ids_on(page) == newest
    screenshot(page, "dashboard-dead-letters")

    # The form: reason rejected (every 4th), newest first; the count is exact (a ZCOUNT).
    page.get_by_test_id("filter-reason").select_option("rejected")
    page.get_by_test_id("apply-filters").click()
    page.wait_for_load_state()
    assert _number(page, "dlq-matching") == N_SEEDED // 4
    assert _ids_on(page) == [f"dl-{i:05d}" for i in range(N_SEEDED - 4, 0, -4)][:50]
    page.get_by_test_id("dlq-next").click()  # the second page goes on where the first stopped
    page.wait_for_load_state()
    assert _ids_on(page) == [f"dl-{i:05d}" for i in range(N_SEEDED - 4, 0, -4)][50:100]

    # Status and event name together (read from the entries): 400 entries, 8 pages, in order.
    page.goto("/dead-letters?status=422&event=order_paid")
    expected = [f"dl-{i:05d}" for i in range(N_SEEDED - 1, -1, -1) if i % 50 == 0]
    assert _walk_pages(page) == expected

    # A time range (inclusive), as ISO times.
    page.goto(f"/dead-letters?since={_iso(base + 10_000)}&until={_iso(base + 10_099)}")
    assert _number(page, "dlq-matching") == 100
    assert _walk_pages(page) == [f"dl-{i:05d}" for i in range(10_099, 9_999, -1)]

    # Search by customer source_id (a bounded walk per request, continued by the cursor) ...
    page.goto("/dead-letters")
    page.get_by_test_id("search").fill("cust-7")
    page.get_by_test_id("apply-filters").click()
    page.wait_for_load_state()
    assert _walk_pages(page) == [f"dl-{i:05d}" for i in range(N_SEEDED - 1, -1, -1)
                                 if i % 1000 == 7]
    # ... and by event id.
    page.goto("/dead-letters?q=dl-01234")
    assert _ids_on(page) == ["dl-01234"]

    # The entry page: payload and what the API said (escaped, not interpreted).
    page.locator('[data-event-id="dl-01234"] a').click()
    page.wait_for_load_state()
    assert page.get_by_test_id("entry-id").inner_text() == "dl-01234"
    said = page.get_by_test_id("api-said").inner_text()
    assert "the API said no to <1234>" in said and "req-1234" in said and "bad_thing" in said
    assert json.loads(page.get_by_test_id("payload").inner_text())["metadata"] == {"n": 1234}
    screenshot(page, "dashboard-dead-letter-entry")

    # Export of the filtered set: the NDJSON `enqueue --file` reads back.
    response = page.request.get("/dead-letters/export.ndjson?status=422&event=order_paid")
    assert response.ok
    lines = [json.loads(line) for line in response.text().splitlines()]
    assert sorted(r["event_id"] for r in lines) == sorted(expected)
    assert all(r["payload"]["event"] == "order_paid" and r["dead_letter"]["status"] == 422
               for r in lines)

    # A bad filter is a clear message, not a crash.
    page.goto("/dead-letters?since=yesterday-ish")
    assert "since" in page.get_by_test_id("filter-error").inner_text()


# -- actions --------------------------------------------------------------------------------


def test_filtered_replay_from_the_page_delivers_each_event_once(
    pipeline_env, pipeline_settings, redis_client, standin, start_worker, make_process, page_for
):
    dlq = _dlq(redis_client, pipeline_settings)
    seed(dlq, 60, time.time() - 600, payload=lambda i: {
        "event": "order_paid" if i % 3 else "signed_up", "customer": {"source_id": f"c-{i}"}})
    wanted = sorted(f"dl-{i:05d}" for i in range(60) if i % 3)  # 40 order_paid
    start_worker(concurrency=4)
    proc, url = start_dashboard(make_process, pipeline_env)
    page = page_for(url)
    page.goto("/dead-letters?event=order_paid")

    page.get_by_test_id("dlq-replay-filtered").click()
    page.locator("#modal:not([hidden])").wait_for()
    dialog = page.locator("#modal-text")
    assert "Replay 40 matching entries" in dialog.inner_text()
    screenshot(page, "dashboard-replay-confirm")
    page.get_by_test_id("confirm").click()
    expect(page.locator("#flash")).to_contain_text("Replayed 40")

    assert standin.wait_for_delivered(40, timeout=60)
    keys = Keys.from_settings(pipeline_settings)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (redis_client.llen(keys.queue)
                                           or redis_client.llen(keys.lane_queue("bulk"))
                                           or redis_client.hlen(keys.unacked)):
        time.sleep(0.1)
    assert redis_client.llen(keys.queue) == 0 and redis_client.hlen(keys.unacked) == 0
    delivered = standin.delivered_ids()
    assert sorted(delivered) == wanted
    assert set(delivered.values()) == {1}  # each event once
    remaining = {e["id"] for e in dlq.list(limit=100).entries}
    assert remaining == {f"dl-{i:05d}" for i in range(60) if i % 3 == 0}
    proc.wait_for_output('"dashboard_action"', timeout=10)
    logged = next(json.loads(line) for line in proc.output().splitlines()
                  if '"dashboard_action"' in line)
    assert (logged["user"], logged["action"], logged["count"]) == (USER, "replay", 40)
    # replayed as `dlq replay` does: on the bulk lane, behind any live event
    lanes = {lane["lane"]: lane for lane in _stats_json(pipeline_env)["lanes"]}
    assert (lanes["bulk"]["delivered_total"], lanes["live"]["delivered_total"]) == (40, 0)


def test_purge_needs_the_confirmation(pipeline_env, pipeline_settings, redis_client,
                                      make_process, page_for):
    dlq = _dlq(redis_client, pipeline_settings)
    seed(dlq, 10, time.time() - 600)
    _, url = start_dashboard(make_process, pipeline_env)
    page = page_for(url)
    page.goto("/dead-letters")
    boxes = page.get_by_test_id("dlq-select")
    chosen = []
    for k in (0, 2, 4):
        boxes.nth(k).check()
        chosen.append(boxes.nth(k).get_attribute("value"))

    page.get_by_test_id("dlq-purge-selected").click()
    assert "Purge (delete for good) 3 selected entries" in page.locator("#modal-text").inner_text()
    screenshot(page, "dashboard-purge-confirm")
    page.locator("#modal-cancel").click()
    expect(page.locator("#flash")).to_contain_text("Cancelled")
    assert dlq.count() == 10  # cancelled: nothing happened

    page.get_by_test_id("dlq-purge-selected").click()
    page.get_by_test_id("confirm").click()
    expect(page.locator("#flash")).to_contain_text("Purged 3")
    assert dlq.count() == 7
    assert all(dlq.get(i) is None for i in chosen)

    # Everything matching a filter: counted on the server, shown, then confirmed.
    page.goto("/dead-letters?reason=retries_exhausted")
    page.get_by_test_id("dlq-purge-filtered").click()
    page.locator("#modal:not([hidden])").wait_for()
    text = page.locator("#modal-text").inner_text()
    left = dlq.matching(reason="retries_exhausted")
    assert f"Purge (delete for good) {left} matching" in text
    page.get_by_test_id("confirm").click()
    expect(page.locator("#flash")).to_contain_text(f"Purged {left}")
    assert dlq.matching(reason="retries_exhausted") == 0 and dlq.count() == 7 - left

    # One entry from its own page.
    last = dlq.list(limit=1).entries[0]["id"]
    page.goto(f"/dead-letters/entry/{last}")
    page.get_by_test_id("dlq-purge-one").click()
    assert f"Purge (delete for good) this entry ({last})?" in page.locator(
        "#modal-text").inner_text()
    page.get_by_test_id("confirm").click()
    expect(page.locator("#flash")).to_contain_text("Purged 1")
    assert dlq.get(last) is None and dlq.count() == 6 - left


# -- security -----------------------------------------------------------------------------


def test_credentials_origin_and_csrf_token_are_required(
    pipeline_env, pipeline_settings, redis_client, make_process
):
    dlq = _dlq(redis_client, pipeline_settings)
    seed(dlq, 5, time.time() - 600)
    _, url = start_dashboard(make_process, pipeline_env)
    auth = (USER, PASSWORD)
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, auth=(USER, "wrong"), timeout=10).status_code == 401
    assert requests.get(url, auth=("nobody", PASSWORD), timeout=10).status_code == 401
    assert requests.get(url + "dead-letters", timeout=10).status_code == 401
    home = requests.get(url, auth=auth, timeout=10)
    assert home.status_code == 200
    assert "default-src 'self'" in home.headers["Content-Security-Policy"]
    token = home.text.split('name="csrf-token" content="')[1].split('"')[0]
    origin = url.rstrip("/")
    body = {"ids": ["dl-00001"]}
    post = lambda headers: requests.post(  # noqa: E731
        url + "api/dead-letters/purge", json=body, auth=auth, headers=headers, timeout=10)

    assert post({"Origin": origin}).status_code == 403  # no token
    assert post({"Origin": origin, "X-CSRF-Token": "0" * 64}).status_code == 403
    assert post({"Origin": "http://evil.example", "X-CSRF-Token": token}).status_code == 403
    assert post({"Sec-Fetch-Site": "cross-site", "X-CSRF-Token": token}).status_code == 403
    assert post({"X-CSRF-Token": token}).status_code == 403  # neither Origin nor Sec-Fetch-Site
    assert requests.post(url + "api/dead-letters/purge", json=body, timeout=10,
                         headers={"Origin": origin, "X-CSRF-Token": token}).status_code == 401
    assert requests.get(url + "api/dead-letters/purge", auth=auth, timeout=10).status_code == 404
    assert dlq.count() == 5  # nothing was touched
    ok = post({"Origin": origin, "X-CSRF-Token": token, "Sec-Fetch-Site": "same-origin"})
    assert ok.status_code == 200 and ok.json()["count"] == 1 and dlq.count() == 4


def test_dashboard_refuses_to_start_without_credentials(pipeline_env):
    env = {k: v for k, v in pipeline_env.items() if k != "VOUCHERIFY_DASHBOARD_CREDENTIALS"}
    done = subprocess.run([*CLI, "dashboard", "--port", "0"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 1
    assert "VOUCHERIFY_DASHBOARD_CREDENTIALS" in done.stderr
    bad = subprocess.run([*CLI, "dashboard", "--port", "0"], capture_output=True, text=True,
                         env={**env, "VOUCHERIFY_DASHBOARD_CREDENTIALS": "no-colon"}, timeout=60)
    assert bad.returncode == 1 and "user:password" in bad.stderr


def test_read_only_shows_and_accepts_no_action(pipeline_env, pipeline_settings, redis_client,
                                               make_process, page_for):
    dlq = _dlq(redis_client, pipeline_settings)
    seed(dlq, 5, time.time() - 600)
    _, url = start_dashboard(make_process, pipeline_env, "--read-only")
    page = page_for(url)
    page.goto("/dead-letters")
    assert len(_ids_on(page)) == 5
    for testid in ("dlq-select", "dlq-replay-selected", "dlq-replay-filtered",
                   "dlq-purge-selected", "dlq-purge-filtered"):
        assert page.get_by_test_id(testid).count() == 0, testid
    assert page.locator("button[data-action]").count() == 0
    assert page.get_by_test_id("dlq-export").count() == 1  # reading stays possible
    screenshot(page, "dashboard-read-only")
    page.goto("/dead-letters/entry/dl-00001")
    assert page.locator("button[data-action]").count() == 0
    token = page.locator('meta[name="csrf-token"]').get_attribute("content")
    response = page.request.post("/api/dead-letters/replay", data={"ids": ["dl-00001"]},
                                 headers={"X-CSRF-Token": token, "Origin": url.rstrip("/")})
    assert response.status == 403
    assert page.request.get("/api/dead-letters/count").status == 403
    assert dlq.count() == 5 and redis_client.llen(pipeline_settings.queue) == 0
    assert isinstance(redis_client, redis.Redis)


def test_a_redis_outage_is_a_clear_page_and_the_dashboard_recovers(
    private_redis, namespace, standin, make_process
):
    from tests.support.pipeline import make_env

    env = make_env(private_redis.url, namespace, standin.url)
    _, url = start_dashboard(make_process, env)
    auth = (USER, PASSWORD)
    assert requests.get(url, auth=auth, timeout=10).status_code == 200
    private_redis.kill()  # down; start() brings it back on the same port
    down = requests.get(url + "dead-letters", auth=auth, timeout=30)
    assert down.status_code == 503 and "Redis unavailable" in down.text
    assert APP_TOKEN not in down.text
    private_redis.start()
    deadline = time.monotonic() + 20
    status = 0
    while time.monotonic() < deadline and status != 200:
        status = requests.get(url, auth=auth, timeout=10).status_code
        time.sleep(0.2)
    assert status == 200
