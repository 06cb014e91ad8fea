"""``POST /v1/events`` over loopback under ``wrk``, beside the same server answering a bare 200.

Both servers run the same stack (``producers/serve/runner.py``: uvicorn, httptools, uvloop) with
the same ``--workers``; the baseline (``tests/bench/serve_bare.py``) reads the body and answers
a constant 200, while ours checks credentials, parses, validates, builds the Celery message and
has Redis confirm the ``LPUSH`` before answering. Each pair is measured back to back in one run.
Also checked: every 200 is in Redis (the queue grew by at least the requests answered).
Two diagnostic runs show where the time goes: ``serve_bare.py --no-redis`` does everything but
the ``LPUSH`` (the gap to the bare 200 is the per-event CPU: credentials, parse, validate, build
the message), and ``serve_bare.py --least-work`` does only what any enqueueing endpoint must
(read the JSON, stamp it, build the message, wait one event-loop turn): a ceiling for the ratio
to the bare 200 on this stack.

Needs Debian's ``wrk`` (``apt-get install -y wrk``); skipped with a message without it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from tests.bench import BenchContext, Row
from tests.support.procs import ManagedProcess

APP_ID, APP_TOKEN = "bench-app", "bench-token-0123456789abcdef"
CONNECTIONS = 32  # concurrent callers, e.g. a fleet of web-app workers
GOAL_RPS, GOAL_P99_MS, GOAL_RATIO = 2000.0, 25.0, 0.6

_LUA = f"""\
wrk.method = "POST"
wrk.body = '{{"event":"order_paid","customer":{{"source_id":"user-1842","email":"ada@example.com",\
"name":"Ada Lovelace","metadata":{{"tier":"gold"}}}},"metadata":{{"order_id":"o-77","total":129.5,\
"items":3}}}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-App-Id"] = "{APP_ID}"
wrk.headers["X-App-Token"] = "{APP_TOKEN}"
"""


def _wrk_args(url: str, script: Path, seconds: int) -> list[str]:
    return ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script), url]


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict:
    def latency(pct: str) -> float:
        match = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(match.group(1)) * _UNIT_MS[match.group(2)] if match else float("nan")

    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in", text)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": latency("50"),
        "p99_ms": latency("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def _start(argv: list[str], env: dict[str, str], name: str, workdir: str) -> tuple:
    proc = ManagedProcess(argv, env=env, name=name, log_dir=workdir).start()
    line = proc.wait_for_output(re.compile(r'"port": (\d+)'), timeout=30)
    return proc, int(re.search(r"\d+", line).group())


def _measure(url: str, script: Path, seconds: int) -> tuple[dict, int]:
    """Warm up, then measure; return the measured figures and all requests answered."""
    warm = subprocess.run(_wrk_args(url, script, 2), capture_output=True, text=True, timeout=60)
    out = subprocess.run(_wrk_args(url, script, seconds), capture_output=True, text=True,
                         timeout=seconds + 60)
    figures = parse_wrk(out.stdout)
    return figures, parse_wrk(warm.stdout)["requests"] + figures["requests"]


def _pair(ctx: BenchContext, workers: int, seconds: int, script: Path) -> list[Row]:
    queue = f"bench-serve-{uuid.uuid4().hex[:8]}"
    env = {
        "REDIS_URL": ctx.redis_url,
        "VOUCHERIFY_QUEUE": queue,
        "VOUCHERIFY_KEY_PREFIX": queue,
        "VOUCHERIFY_INGEST_CREDENTIALS": f"{APP_ID}:{APP_TOKEN}",
        "VOUCHERIFY_LOG_FORMAT": "json",
        "VOUCHERIFY_LOG_LEVEL": "WARNING",
    }
    client = redis.Redis.from_url(ctx.redis_url)
    runs = {}
    try:
        for mode, argv in (
            ("bare", [sys.executable, "-m", "tests.bench.serve_bare"]),
            ("least_work", [sys.executable, "-m", "tests.bench.serve_bare", "--least-work"]),
            ("no_redis", [sys.executable, "-m", "tests.bench.serve_bare", "--no-redis"]),
            ("ours", [sys.executable, "-m", "voucherify_ingest.cli", "serve"]),
        ):
            argv = [*argv, "--port", "0", "--workers", str(workers)]
            proc, port = _start(argv, {**env, "VOUCHERIFY_LOG_LEVEL": "INFO"}, mode, ctx.workdir)
            try:
                figures, answered = _measure(f"http://127.0.0.1:{port}/v1/events", script, seconds)
            finally:
                proc.terminate(timeout=15)
            runs[mode] = figures
            if mode == "ours":
                stored = client.llen(queue)
                ok = answered - figures["non2xx"]
                if figures["non2xx"] or stored < ok:
                    raise AssertionError(
                        f"serve: {figures['non2xx']} non-2xx answers, {stored} stored for "
                        f"{ok} answered 200"
                    )
    finally:
        client.delete(queue)
        client.close()
    ours, bare, no_redis, least = runs["ours"], runs["bare"], runs["no_redis"], runs["least_work"]
    note = f"workers={workers}, wrk -t1 -c{CONNECTIONS}, {seconds}s"
    ratio = ours["rps"] / bare["rps"] if bare["rps"] else 0.0
    return [
        Row(f"serve POST /v1/events rate [{note}]", ours["rps"], "req/s", bare["rps"],
            "bare 200, same server", f">= {GOAL_RPS:,.0f}/s and >= {GOAL_RATIO}x bare",
            ours["rps"] >= GOAL_RPS and ratio >= GOAL_RATIO),
        Row(f"serve without the LPUSH (diagnostic) [workers={workers}]", no_redis["rps"],
            "req/s", bare["rps"], "bare 200, same server", "-", None),
        Row(f"least work any enqueueing app must do (ceiling) [workers={workers}]",
            least["rps"], "req/s", bare["rps"], "bare 200, same server", "-", None),
        Row(f"serve p50 latency [workers={workers}]", ours["p50_ms"], "ms", bare["p50_ms"],
            "bare 200", "-", None),
        Row(f"serve p99 latency [workers={workers}]", ours["p99_ms"], "ms", bare["p99_ms"],
            "bare 200", f"<= {GOAL_P99_MS:g} ms", ours["p99_ms"] <= GOAL_P99_MS),
    ]


def run(ctx: BenchContext) -> list[Row]:
    if shutil.which("wrk") is None:
        print("# serve: skipped: wrk not found (Debian: apt-get install -y wrk)", flush=True)
        return []
    workdir = ctx.workdir or os.getcwd()
    script = Path(workdir) / "serve_post.lua"
    script.write_text(_LUA)
    seconds = 3 if ctx.quick else 10
    rows: list[Row] = []
    for workers in (1, 2):
        rows += _pair(ctx, workers, seconds, script)
        time.sleep(0.5)
    return rows
