"""The operator dashboard at 100,000 dead letters: server time per page, time to first render
in Chromium, and the process's CPU while idle with one open page.

Server time is the handler's own ``Server-Timing`` (authentication, Redis reads, HTML); the
round trip over loopback is shown beside it. Baselines, measured in the same run: the bare
Redis reads each page rests on (``FlowReader.snapshot`` for the overview; ZREVRANGE + HMGET +
JSON decode of 50 entries for a dead-letter page), a static page from ``http.server`` for
the first render, and the same dashboard process with no page open for the idle CPU.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import redis
import requests

from tests.bench import BenchContext, Row, median, percentile
from tests.bench.dlq import seed
from tests.support.browser import PASSWORD, USER, chromium_path
from tests.support.redis_server import delete_namespace_keys
from voucherify_ingest.deadletters import DeadLetterQueue
from voucherify_ingest.flow import FlowReader
from voucherify_ingest.keys import Keys
from voucherify_ingest.settings import Settings

FULL_N, QUICK_N = 100_000, 10_000
SERVER_GOAL_MS = 200.0
IDLE_GOAL_PCT = 2.0
# First contentful paint after navigation start, waiting for it if it has not happened yet.
FCP_JS = """() => new Promise(resolve => {
  const pick = list => list.find(e => e.name === 'first-contentful-paint');
  const now = pick(performance.getEntriesByType('paint'));
  if (now) return resolve(now.startTime);
  new PerformanceObserver(l => { const e = pick(l.getEntries()); if (e) resolve(e.startTime); })
    .observe({type: 'paint', buffered: true});
  setTimeout(() => resolve(null), 5000);
})"""
URL_LINE = re.compile(r'"url": "(http://127\.0\.0\.1:\d+/)"')


def _start(env: dict) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "voucherify_ingest.cli", "dashboard",
                             "--port", "0"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        found = URL_LINE.search(line or "")
        if found:
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # keep draining
            return proc, found.group(1)
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError("the dashboard did not start")


def _server_ms(session: requests.Session, url: str, repeats: int) -> tuple[list[float], list]:
    server, total = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        response = session.get(url, timeout=30)
        total.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        server.append(float(response.headers["Server-Timing"].split("dur=")[1]))
    return server, total


def _timed_ms(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        out.append((time.perf_counter() - started) * 1000)
    return out


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _idle_pct(pid: int, seconds: float) -> float:
    before, started = _cpu_s(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (_cpu_s(pid) - before) / (time.monotonic() - started)


def _first_render_ms(browser, url: str, repeats: int, credentials: bool = True) -> float:
    extra = {"http_credentials": {"username": USER, "password": PASSWORD}} if credentials else {}
    times = []
    for _ in range(repeats):
        context = browser.new_context(**extra)
        page = context.new_page()
        page.goto(url)
        fcp = page.evaluate(FCP_JS)
        times.append(float(fcp) if fcp is not None else float("nan"))
        context.close()
    return median(times)


def _static_server(workdir: str) -> http.server.ThreadingHTTPServer:
    root = Path(workdir) / "static"
    root.mkdir(exist_ok=True)
    (root / "index.html").write_text("<!doctype html><title>bare</title><h1>bare page</h1>"
                                     "<table>" + "<tr><td>row</td></tr>" * 50 + "</table>")
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def run(ctx: BenchContext) -> list[Row]:
    from playwright.sync_api import sync_playwright

    n = QUICK_N if ctx.quick else FULL_N
    repeats = 30 if ctx.quick else 100
    idle_s = 10.0 if ctx.quick else 30.0
    ns = "bdash" + secrets.token_hex(4)
    env = {**os.environ, "REDIS_URL": ctx.redis_url, "VOUCHERIFY_KEY_PREFIX": ns,
           "VOUCHERIFY_QUEUE": f"{ns}-events", "VOUCHERIFY_LOG_FORMAT": "json",
           "VOUCHERIFY_DASHBOARD_CREDENTIALS": f"{USER}:{PASSWORD}"}
    settings = Settings.from_env(env)
    keys = Keys.from_settings(settings)
    client = redis.Redis.from_url(ctx.redis_url, socket_timeout=60)
    dlq = DeadLetterQueue(client, keys)
    proc = static = None
    rows: list[Row] = []
    try:
        seed(dlq, n)
        # A cursor half way down the index: the page an operator reaches after 1,000 "older".
        (_, mid_score), = client.zrevrange(keys.dlq_index, n // 2, n // 2, withscores=True)
        deep = f"{mid_score!r}:1"
        proc, url = _start(env)
        session = requests.Session()
        session.auth = (USER, PASSWORD)

        reader = FlowReader(client, settings)
        bare_overview = percentile(_timed_ms(reader.snapshot, repeats), 95)

        def bare_page():
            ids = client.zrevrange(keys.dlq_index, 0, 49)
            [json.loads(raw) for raw in client.hmget(keys.dlq_entries, ids)]

        bare_list = percentile(_timed_ms(bare_page, repeats), 95)
        pages = [
            ("overview /", "", bare_overview, "FlowReader.snapshot"),
            ("overview live fragment", "partials/overview", bare_overview, "FlowReader.snapshot"),
            ("dead letters, newest page", "dead-letters", bare_list, "ZREVRANGE+HMGET+decode"),
            ("dead letters, page 1,000 (cursor)", f"dead-letters?cursor={deep}", bare_list,
             "ZREVRANGE+HMGET+decode"),
            ("dead letters, reason filter", "dead-letters?reason=retries_exhausted", bare_list,
             "ZREVRANGE+HMGET+decode"),
        ]
        for name, path, base, base_name in pages:
            server, total = _server_ms(session, url + path, repeats)
            p95 = percentile(server, 95)
            rows.append(Row(f"dashboard {name} @ {n:,} DLQ, server p95", p95, "ms", base,
                            base_name, f"< {SERVER_GOAL_MS:g} ms", p95 < SERVER_GOAL_MS,
                            note=f"round trip p95 {percentile(total, 95):.1f} ms"))
        server, total = _server_ms(session, url + "dead-letters?status=404", max(5, repeats // 10))
        rows.append(Row(f"dashboard dead letters, rare status @ {n:,} DLQ, server p95",
                        percentile(server, 95), "ms", bare_list, "ZREVRANGE+HMGET+decode",
                        note="one reason holds it: that reason's index is walked"))
        server, total = _server_ms(session, url + "dead-letters?q=user-7", max(5, repeats // 10))
        rows.append(Row(f"dashboard search by customer source_id @ {n:,} DLQ, server p95",
                        percentile(server, 95), "ms", bare_list, "ZREVRANGE+HMGET+decode",
                        note="walks up to 5,000 entries per request; no goal"))
        session.close()

        static = _static_server(ctx.workdir)
        static_url = f"http://127.0.0.1:{static.server_address[1]}/index.html"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium_path(), headless=True,
                                                 args=["--no-sandbox", "--disable-gpu"])
            try:
                bare_fcp = _first_render_ms(browser, static_url, 5, credentials=False)
                for name, path in (("overview", ""), ("dead letters", "dead-letters")):
                    fcp = _first_render_ms(browser, url + path, 5)
                    rows.append(Row(f"dashboard {name} first contentful paint (Chromium)", fcp,
                                    "ms", bare_fcp, "static page, http.server",
                                    note="median of 5"))
                no_page = _idle_pct(proc.pid, idle_s)
                context = browser.new_context(
                    http_credentials={"username": USER, "password": PASSWORD})
                page = context.new_page()
                page.goto(url)  # the overview refreshes every 2 s
                time.sleep(2)
                one_page = _idle_pct(proc.pid, idle_s)
                context.close()
            finally:
                browser.close()
        rows.append(Row("dashboard CPU idle, one overview page open", one_page, "% of a core",
                        no_page, "same process, no page", f"< {IDLE_GOAL_PCT:g}%",
                        one_page < IDLE_GOAL_PCT, ratio=None,
                        note=f"{idle_s:g} s, refresh 2 s"))
        return rows
    finally:
        if static is not None:
            static.shutdown()
            static.server_close()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        delete_namespace_keys(client, ns)
        client.close()
