"""Secrets and personal data.

- A full run (worker at DEBUG, deliveries, every kind of dead letter, a Redis restart, the CLI
  commands an operator uses, their error paths) is captured whole: the app token and the Redis
  password appear in no log line, no CLI output, no dead-letter entry, no export file.
- Redis with a password over TLS (``rediss://``, a self-signed CA) works end to end: producer,
  real worker, dead letters, the CLI.
- Logs carry event ids, not customers' emails or phones, unless ``VOUCHERIFY_LOG_PII=1``.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

from producers import Producer
from producers.serve.pusher import BatchPusher, make_async_redis
from tests.support.pipeline import APP_ID, make_env, worker_argv
from voucherify_ingest.deadletters import DeadLetterStore
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import build_message, make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, respond

pytestmark = pytest.mark.e2e

EMAIL = "jane.private@example.com"
PHONE = "+48 600 700 800"


def _event(n: int) -> dict:
    return {"event": "order_paid",
            "customer": {"source_id": f"cust-{n}", "email": EMAIL, "phone": PHONE},
            "metadata": {"n": n}}


def _cli(env: dict, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
    done = subprocess.run([sys.executable, "-m", "voucherify_ingest.cli", *args],
                          env={**os.environ, **env}, input=stdin, capture_output=True,
                          text=True, timeout=timeout)
    return f"$ voucherify-ingest {' '.join(args)} -> {done.returncode}\n{done.stdout}{done.stderr}"


def _commands() -> set[str]:
    from voucherify_ingest.cli import main

    return set(main.commands)


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_app_token_and_redis_password_appear_nowhere(make_redis_server, make_process, tmp_path):
    token = "tok-" + secrets.token_hex(16)
    password = "pw/" + secrets.token_hex(12) + "+x"  # URL-quoting matters: '/' and '+'
    server = make_redis_server(password=password)
    api = StandIn(APP_ID, token).start()
    namespace = "tsec" + secrets.token_hex(3)
    env = make_env(server.url, namespace, api.url, VOUCHERIFY_APP_TOKEN=token,
                   VOUCHERIFY_LOG_LEVEL="DEBUG", VOUCHERIFY_MAX_RETRIES="0",
                   # the one 401 is dead-lettered at once (no fleet-wide auth pause)
                   VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S="0")
    settings = Settings.from_env(env)
    producer = Producer(settings)
    client = server.client()
    captured: list[str] = []
    try:
        # rejected (400), auth (401), retries exhausted (503, no retries), invalid (poison).
        # The 400 echoes the token back, as a debugging proxy's error page might.
        echo = {"code": 400, "message": f"bad request with token {token}",
                "details": f"X-App-Token: {token}"}
        api.plan(respond(400, body=echo), respond(401), respond(503), respond(503))
        ids = [producer.enqueue_event(_event(n)) for n in range(4)]
        poison = make_envelope({"event": "", "customer": {"email": EMAIL}})
        client.lpush(settings.queue, build_message("voucherify.deliver_event", [poison],
                                                   settings.queue))
        ids += producer.enqueue_events([_event(n) for n in range(4, 30)])
        worker = make_process(worker_argv(4), env=env, name="sec-worker")
        worker.wait_for_output('"worker_ready"', timeout=60)
        dlq = DeadLetterStore(client, Keys.from_settings(settings))
        assert _wait(lambda: dlq.count() >= 5 and len(api.delivered_ids()) >= 26, 60)
        server.restart(down_s=1.0)  # reconnect paths log the broker URL
        client.close()
        client = server.client()
        ids.append(producer.enqueue_event(_event(99)))
        assert api.wait_for_delivered(27, timeout=60)

        entry_id = ids[0]
        cli_env = {**env, "VOUCHERIFY_LOG_LEVEL": "DEBUG"}
        runs = [
            ("check",),
            ("check", "--skip-api"),
            ("enqueue", json.dumps(_event(100))),
            ("enqueue", '{"event": "x", "costumer": {}}'),
            ("dlq", "list", "--json", "--with-payload"),
            ("dlq", "list"),
            ("dlq", "show", entry_id, "--json"),
            ("dlq", "stats", "--json"),
            ("dlq", "export", str(tmp_path / "export.ndjson")),
            ("dlq", "replay", "--dry-run"),
        ]
        commands = _commands()
        runs += [("stats", "--json")] * ("stats" in commands)
        captured += [_cli(cli_env, *args) for args in runs if args[0] in commands]
        # error paths: Redis unreachable (the URL is in the message), a bad setting
        down = {**cli_env, "REDIS_URL": server.url.replace(str(server.port), "1")}
        captured.append(_cli(down, "check"))
        captured.append(_cli(down, "enqueue", json.dumps(_event(101))))
        captured.append(_cli({**cli_env, "VOUCHERIFY_VISIBILITY_TIMEOUT_S": "1"}, "worker"))
        export = tmp_path / "export.ndjson"
        if export.exists():
            captured.append(export.read_text())
        captured += [v.decode("utf-8", "replace")
                     for v in client.hvals(Keys.from_settings(settings).dlq_entries)]
        captured.append(worker.output())
    finally:
        producer.close()
        api.stop()
        client.close()

    text = "\n".join(captured)
    assert "dead_lettered" in text and '"worker_ready"' in text  # the capture is real
    assert len([e for e in text.splitlines() if '"reason":"auth"' in e.replace(" ", "")]) >= 1
    for secret in (token, password, quote(password, safe="")):
        assert secret not in text, f"a secret leaked:\n{_around(text, secret)}"


def _around(text: str, secret: str) -> str:
    at = text.index(secret)
    return text[max(0, at - 300): at + 300]


def test_redis_password_over_tls_end_to_end(make_redis_server, make_process, standin):
    server = make_redis_server(password="tls-" + secrets.token_hex(8), tls=True)
    assert server.url.startswith("rediss://")
    namespace = "ttls" + secrets.token_hex(3)
    env = make_env(server.url, namespace, standin.url)
    producer = Producer(Settings.from_env(env))
    try:
        standin.plan(respond(400))
        ids = producer.enqueue_events([_event(n) for n in range(20)])
        worker = make_process(worker_argv(4), env=env, name="tls-worker")
        worker.wait_for_output('"worker_ready"', timeout=60)
        assert standin.wait_for_delivered(19, timeout=60)
        client = server.client()
        try:
            dlq = DeadLetterStore(client, Keys.from_settings(Settings.from_env(env)))
            assert _wait(lambda: dlq.count() == 1, 30)
            (dead,) = dlq.ids()
        finally:
            client.close()
        assert set(standin.delivered_ids()) | {dead} == set(ids)
        listing = _cli(env, "dlq", "list", "--json")
        assert dead in listing, listing
        check = _cli(env, "check")
        assert "-> 0" in check.splitlines()[0], check
        assert "rediss://" in worker.output()
    finally:
        producer.close()


def test_serve_pusher_connection_over_tls_with_a_password(make_redis_server):
    """``serve`` pushes on a connection of its own: it must carry TLS and the password too."""
    server = make_redis_server(password="tls-" + secrets.token_hex(8), tls=True)
    queue = "tpush" + secrets.token_hex(3)
    settings = Settings.from_env({"REDIS_URL": server.url, "VOUCHERIFY_QUEUE": queue})

    async def main() -> None:
        pusher = BatchPusher(make_async_redis(settings), queue)
        await asyncio.gather(*(pusher.push(f"m{i}") for i in range(50)))
        await pusher.close()

    asyncio.run(main())
    client = server.client()
    try:
        assert sorted(m.decode() for m in client.lrange(queue, 0, -1)) == sorted(
            f"m{i}" for i in range(50))
    finally:
        client.close()


def test_plaintext_client_cannot_talk_to_the_tls_redis(make_redis_server):
    server = make_redis_server(password="tls-" + secrets.token_hex(8), tls=True)
    plain = server.url.replace("rediss://", "redis://").split("?")[0]
    out = _cli(make_env(plain, "tplain", "http://127.0.0.1:9"), "check", timeout=30)
    assert "-> 1" in out.splitlines()[0], out


@pytest.mark.parametrize("pii", [False, True])
def test_logs_carry_event_ids_not_emails_or_phones(pii, standin, producer, start_worker):
    ids = producer.enqueue_events([_event(n) for n in range(5)])
    standin.plan(respond(400))
    worker = start_worker(VOUCHERIFY_LOG_PII="1" if pii else "0")
    assert standin.wait_for_delivered(4, timeout=60)
    time.sleep(0.5)
    log = worker.output()
    assert all(event_id in log for event_id in ids)
    assert (EMAIL in log) is pii
    assert (PHONE in log) is pii
