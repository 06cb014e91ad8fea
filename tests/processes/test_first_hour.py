"""The first hour of a new user (issue 18, parts of 14): every message says what happened and
what to do. Each test runs the real command as a user would (a subprocess, real Redis, the
stand-in) and fails without its fix.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tests.processes.test_serve import Client, serve_argv, serve_env, wait_ready
from tests.support.pipeline import make_env
from voucherify_ingest.deadletters import DeadLetterQueue, make_entry
from voucherify_ingest.keys import Keys

CLI = [sys.executable, "-m", "voucherify_ingest.cli"]
UNSET = ("VOUCHERIFY_APP_ID", "VOUCHERIFY_APP_TOKEN", "VOUCHERIFY_INGEST_CREDENTIALS",
         "VOUCHERIFY_QUEUE", "VOUCHERIFY_KEY_PREFIX", "REDIS_URL")


def run(args, env, *, stdin=None, timeout=60) -> subprocess.CompletedProcess:
    """The CLI with exactly ``env`` over a clean copy of ours (no stray VOUCHERIFY_*)."""
    base = {k: v for k, v in os.environ.items() if k not in UNSET}
    full = {**base, **{k: v for k, v in env.items() if v is not None}}
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
    return subprocess.run(CLI + list(args), env=full, input=stdin, capture_output=True,
                          text=True, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(redis_url, namespace, standin):
    return make_env(redis_url, namespace, standin.url)


# -- demo ---------------------------------------------------------------------------------------


def test_demo_200_events_quickly_says_which_redis_and_leaves_no_key(make_redis_server):
    """At the default 100/min (the rate limit in a comment) 200 events took 2 minutes; the
    demo also left kombu's binding keys behind. A fresh Redis must be empty afterwards."""
    server = make_redis_server(appendonly=False)
    started = time.monotonic()
    result = run(["demo", "-n", "200", "--timeout", "40"], {"REDIS_URL": server.url},
                 timeout=90)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "delivered 200/200" in result.stdout
    assert elapsed < 40, f"demo -n 200 took {elapsed:.1f}s"
    assert f"using the existing Redis at {server.url}" in result.stdout
    client = server.client()
    try:
        assert sorted(client.keys("*")) == []
    finally:
        client.close()


def test_demo_says_why_its_worker_would_not_start(redis_url):
    result = run(["demo", "-n", "2", "--timeout", "20"],
                 {"REDIS_URL": redis_url, "VOUCHERIFY_VISIBILITY_TIMEOUT_S": "5"}, timeout=60)
    assert result.returncode == 1
    assert "delivered" not in result.stdout  # it stopped before, with the reason
    assert "worker would refuse to start" in result.stderr
    assert "VOUCHERIFY_VISIBILITY_TIMEOUT_S=5 is too short" in result.stderr


def test_demo_shows_the_end_of_the_worker_log_when_events_do_not_arrive(redis_url):
    # 600 events at the demo's 50/s need 12 s: a 4 s timeout must end with the worker's log.
    result = run(["demo", "-n", "600", "--timeout", "4"], {"REDIS_URL": redis_url}, timeout=90)
    assert result.returncode == 1
    assert re.search(r"delivered \d+/600", result.stdout)
    assert "not every event arrived within --timeout 4s" in result.stderr
    tail = [line[4:] for line in result.stderr.splitlines() if line.startswith("  | ")]
    assert tail and any(json.loads(line).get("event") for line in tail if line.startswith("{"))


def test_demo_with_an_unanswering_redis_url_says_how_to_get_a_throwaway_one():
    url = f"redis://:pw-demo-secret@127.0.0.1:{closed_port()}/0"
    result = run(["demo", "-n", "2"], {"REDIS_URL": url}, timeout=60)
    assert result.returncode == 1
    assert "did not answer" in result.stderr
    assert "unset REDIS_URL" in result.stderr and "throwaway redis-server" in result.stderr
    assert "pw-demo-secret" not in result.stdout + result.stderr


# -- check: only what the role needs ------------------------------------------------------------


def test_check_skip_api_without_credentials_checks_a_producer(redis_url, namespace):
    result = run(["check", "--skip-api"], {"REDIS_URL": redis_url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: ") and "role producer" in result.stdout
    assert "VOUCHERIFY_APP_ID" in result.stdout  # it says why this role was chosen


def test_check_role_serve_needs_ingest_credentials_not_the_api_token(redis_url):
    good = run(["check", "--role", "serve"], {
        "REDIS_URL": redis_url, "VOUCHERIFY_INGEST_CREDENTIALS": "shop:" + "x" * 32})
    assert good.returncode == 0, good.stdout + good.stderr
    assert "role serve" in good.stdout and "warning" not in good.stderr
    short = run(["check", "--skip-api"], {
        "REDIS_URL": redis_url, "VOUCHERIFY_INGEST_CREDENTIALS": "web-shop:s3cr3t"})
    assert short.returncode == 0 and "role serve" in short.stdout  # chosen from the env
    assert "token of 'web-shop' is 6 characters" in short.stderr
    assert "s3cr3t" not in short.stdout + short.stderr  # never the token itself
    missing = run(["check", "--role", "serve"], {"REDIS_URL": redis_url})
    assert missing.returncode == 1 and "VOUCHERIFY_INGEST_CREDENTIALS" in missing.stdout


def test_check_role_worker_still_requires_credentials_and_its_settings(redis_url, env):
    no_creds = run(["check", "--role", "worker", "--skip-api"],
                   {"REDIS_URL": redis_url, "VOUCHERIFY_APP_ID": None})
    assert no_creds.returncode == 1 and "VOUCHERIFY_APP_ID" in no_creds.stdout
    bad_rate = {**env, "VOUCHERIFY_RATE_LIMIT": "lots"}
    worker = run(["check", "--role", "worker", "--skip-api"], bad_rate)
    assert worker.returncode == 1 and "VOUCHERIFY_RATE_LIMIT" in worker.stdout
    producer = run(["check", "--role", "producer"], bad_rate)
    assert producer.returncode == 0, producer.stdout + producer.stderr
    clear = run(["check", "--skip-api"], {**env, "VOUCHERIFY_API_URL": "http://api.example.com"})
    assert clear.returncode == 0 and "role worker" in clear.stdout
    assert "the API token travels in clear" in clear.stderr


# -- settings: each entry point validates what it uses --------------------------------------------


def test_a_worker_only_setting_does_not_break_enqueue(env, redis_client, namespace):
    bad = {**env, "VOUCHERIFY_RATE_LIMIT": "lots", "VOUCHERIFY_BACKOFF_MAX_S": "soon"}
    result = run(["enqueue", '{"event":"a","customer":{"source_id":"u"}}'], bad)
    assert result.returncode == 0, result.stderr
    assert redis_client.llen(f"{namespace}-events") == 1
    worker = run(["worker"], {**env, "VOUCHERIFY_RATE_LIMIT": "lots"})
    assert worker.returncode == 1 and "VOUCHERIFY_RATE_LIMIT" in worker.stderr


# -- enqueue messages ------------------------------------------------------------------------------


def test_enqueue_messages_name_no_internal_keys(env, redis_client, namespace, tmp_path):
    array = run(["enqueue", "[1,2]"], env)
    assert array.returncode == 1
    assert "invalid event: event payload must be a JSON object" in array.stderr
    assert "_schema" not in array.stderr
    lines = ['{"event":"a","customer":{"source_id":"u1"}}'] * 3 + ['{"event":"b"', ""]
    path = tmp_path / "events.ndjson"
    path.write_text("\n".join(lines))
    bulk = run(["enqueue", "--file", str(path), "--rejects", str(tmp_path / "r.ndjson")], env)
    assert bulk.returncode == 3, bulk.stderr
    assert "line 4: not valid JSON: Expecting ',' delimiter" in bulk.stderr
    assert "_json" not in bulk.stderr and "line 2 column" not in bulk.stderr
    rejected = json.loads((tmp_path / "r.ndjson").read_text())
    assert rejected["line"] == 4 and "_json" in rejected["errors"]  # the file keeps its shape


def test_enqueue_with_empty_stdin_says_no_payload_given(env, redis_client, namespace):
    result = run(["enqueue"], env, stdin="")
    assert result.returncode == 2
    assert "no payload given" in result.stderr and "not valid JSON" not in result.stderr
    with open(os.devnull) as devnull:  # `enqueue </dev/null`, literally
        null = subprocess.run(CLI + ["enqueue"], env={**os.environ, **env}, stdin=devnull,
                              capture_output=True, text=True, timeout=60)
    assert null.returncode == 2 and "no payload given" in null.stderr
    assert redis_client.llen(f"{namespace}-events") == 0


def test_enqueue_on_a_terminal_says_it_reads_standard_input(env):
    """Without an argument at a terminal it used to wait silently."""
    main, child = pty.openpty()
    full = {**os.environ, **env}
    proc = subprocess.Popen(CLI + ["enqueue"], stdin=child, stdout=child, stderr=child,
                            env=full, close_fds=True)
    os.close(child)
    seen = b""
    try:
        deadline = time.monotonic() + 30
        while b"Ctrl-D" not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                seen += os.read(main, 4096)
        assert b"reading one event (JSON) from standard input" in seen
        os.write(main, b"\x04")  # Ctrl-D at the start of a line: end of input
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(main, 4096)
                except OSError:
                    break
        assert proc.wait(timeout=10) == 2
        assert b"no payload given" in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)


# -- dlq export ------------------------------------------------------------------------------------


def test_dlq_export_file_is_readable_by_its_owner_only(env, redis_client, namespace, tmp_path):
    dlq = DeadLetterQueue(redis_client, Keys(prefix=namespace, queue=f"{namespace}-events"))
    dlq.add(make_entry(event_id="ev-1", payload={"event": "a", "customer": {
        "source_id": "u1", "email": "ada@example.com"}}, reason="rejected",
        error={"status": 400, "message": "HTTP 400"}, attempts=1,
        enqueued_at="2023-11-14T22:00:00.000Z", now_s=1_700_000_000))
    fresh, existing = tmp_path / "fresh.ndjson", tmp_path / "existing.ndjson"
    existing.write_text("old")
    existing.chmod(0o644)
    for path in (fresh, existing):
        result = run(["dlq", "export", str(path)], env)
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert "ada@example.com" in path.read_text()
    shared = tmp_path / "shared.ndjson"
    assert run(["dlq", "export", "--mode", "640", str(shared)], env).returncode == 0
    assert stat.S_IMODE(shared.stat().st_mode) == 0o640


# -- worker --------------------------------------------------------------------------------------


def test_worker_logs_one_line_per_attempt_while_redis_is_unreachable(make_process,
                                                                     make_redis_server,
                                                                     namespace, standin):
    server = make_redis_server(password="pw-worker-" + namespace, appendonly=False)
    server.kill()
    env = make_env(server.url, namespace, standin.url)
    worker = make_process(CLI + ["worker", "-c", "2"], env=env, name="worker-no-redis")
    worker.wait_for_output(re.compile(r'(?s)("redis_unreachable".*){2}'), timeout=30)
    lines = [json.loads(line) for line in worker.output().splitlines()
             if '"redis_unreachable"' in line]
    assert [line["attempt"] for line in lines[:2]] == [1, 2]
    assert lines[0]["redis"] == f"redis://:***@127.0.0.1:{server.port}/0"
    assert lines[0]["level"] == "error" and lines[0]["retry_in_s"] > 0
    assert "Trying again" not in worker.output()  # Celery's banner line is not the news
    server.start()  # same port: the worker goes on by itself
    worker.wait_for_output('"worker_ready"', timeout=60)
    assert server.password not in worker.output()


def test_worker_refused_by_redis_exits_at_once_saying_so(make_process, make_redis_server,
                                                        namespace, standin):
    """A wrong password is not a Redis that is late: waiting cannot fix it. The worker says
    "refused the credentials" once and exits 1 (the supervisor restarts it, saying it again);
    check, stats and enqueue say the same words. The wrong password is never shown."""
    server = make_redis_server(password="pw-right-" + namespace, appendonly=False)
    wrong = f"redis://:pw-wrong-{namespace}@127.0.0.1:{server.port}/0"
    env = make_env(wrong, namespace, standin.url)
    worker = make_process(CLI + ["worker", "-c", "1"], env=env, name="worker-wrong-password")
    assert worker.wait(timeout=30) == 1
    output = worker.output()
    refused = [json.loads(line) for line in output.splitlines()
               if "redis_credentials_refused" in line]
    assert len(refused) == 1 and refused[0]["level"] == "error", output
    assert "refused the credentials in REDIS_URL" in refused[0]["detail"]
    assert "redis_unreachable" not in output and '"worker_ready"' not in output
    assert f"pw-wrong-{namespace}" not in output
    for args in (["check"], ["stats"], ["enqueue", '{"event":"e","customer":{"source_id":"c"}}']):
        result = run(args, env)
        assert result.returncode != 0, (args, result.stdout, result.stderr)
        said = result.stdout + result.stderr
        assert "refused the credentials in REDIS_URL" in said, (args, said)
        assert f"pw-wrong-{namespace}" not in said and "Traceback" not in said


def test_worker_waiting_for_redis_stops_cleanly_on_sigterm(make_process, namespace, standin):
    env = make_env(f"redis://127.0.0.1:{closed_port()}/0", namespace, standin.url)
    worker = make_process(CLI + ["worker", "-c", "1"], env=env, name="worker-wait-stop")
    worker.wait_for_output('"redis_unreachable"', timeout=30)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=15) == 0
    assert '"worker_stopped"' in worker.output()


def test_worker_refuses_gevent_and_eventlet_pools(env):
    for pool in ("gevent", "eventlet"):
        result = run(["worker"], {**env, "VOUCHERIFY_WORKER_POOL": pool})
        assert result.returncode == 1
        assert f"VOUCHERIFY_WORKER_POOL={pool} is not supported" in result.stderr
        assert "Traceback" not in result.stderr
        flag = run(["worker", "-P", pool], env)
        assert flag.returncode == 2 and "Invalid value" in flag.stderr


def test_worker_warns_when_the_api_url_is_plain_http(make_process, redis_url, namespace):
    env = make_env(redis_url, namespace, "http://voucherify.invalid")
    worker = make_process(CLI + ["worker", "-c", "1"], env=env, name="worker-http")
    line = worker.wait_for_output(re.compile(r'^.*"api_url_in_clear".*$', re.M), timeout=30)
    assert json.loads(line)["level"] == "warning"
    worker.wait_for_output('"worker_ready"', timeout=60)


# -- serve -----------------------------------------------------------------------------------------


def test_serve_warns_about_a_short_ingest_token(make_process, redis_url, namespace):
    proc = make_process(serve_argv(), name="serve-short", env=serve_env(
        redis_url, namespace, VOUCHERIFY_INGEST_CREDENTIALS="web-shop:s3cr3t"))
    wait_ready(proc)
    warning = json.loads(proc.wait_for_output(
        re.compile(r'^.*"ingest_token_weak".*$', re.M), timeout=10))
    assert "'web-shop'" in warning["detail"] and warning["level"] == "warning"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_stops_cleanly_on_sigterm(make_process, redis_url, namespace, redis_client,
                                        workers):
    proc = make_process(serve_argv("--workers", workers), env=serve_env(redis_url, namespace),
                        name=f"serve-stop-{workers}")
    client = Client(wait_ready(proc))
    assert client.post({"event": "a", "customer": {"source_id": "u"}})[0] == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert '"serve_stopped"' in proc.output()
    assert redis_client.llen(namespace) == 1
