"""``voucherify-ingest worker``: a Celery worker on our app (whose own signals bring the
housekeeping thread, kombu fixes and shutdown guard: ``worker/embedding.py``). Before Celery
starts it waits for Redis, one clear log line per attempt."""

from __future__ import annotations

import os
import sys

import click
import structlog

from voucherify_ingest.cli.common import load_settings
from voucherify_ingest.cli.redis_wait import stop_signals_exit, wait_for_redis
from voucherify_ingest.lanes import LANES, lane_queue
from voucherify_ingest.logs import configure_logging
from voucherify_ingest.settings import WORKER_POOLS
from worker.app import create_app

POOLS = list(WORKER_POOLS)  # gevent/eventlet are refused: see voucherify_ingest.settings


@click.command("worker", context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", type=click.IntRange(1, 1000), default=None,
              help="Deliveries in parallel (default VOUCHERIFY_WORKER_CONCURRENCY, 16).")
@click.option("-P", "--pool", type=click.Choice(POOLS), default=None,
              help="Celery pool (default VOUCHERIFY_WORKER_POOL, threads: deliveries are I/O).")
@click.option("-n", "--hostname", default=None,
              help="Node name (default voucherify-PID@HOST, unique per process).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(concurrency, pool, hostname, celery_args):
    """Run a worker that delivers queued events to Voucherify.

    Needs VOUCHERIFY_APP_ID and VOUCHERIFY_APP_TOKEN; refuses to start without them.
    CELERY_ARGS, after `--`, go to `celery worker` unchanged.

    \b
    Examples:
      voucherify-ingest worker
      voucherify-ingest worker -c 32 -P threads
      voucherify-ingest worker -- --max-tasks-per-child 10000
    """
    settings = load_settings(worker_concurrency=concurrency, worker_pool=pool)
    settings.require_credentials()
    settings.check_visibility_timeout()
    configure_logging(settings, stream=sys.stdout)
    log = structlog.get_logger("voucherify_ingest.worker")
    if settings.api_in_clear:
        log.warning("api_url_in_clear", api_url=settings.api_base,
                    detail="the API token travels unencrypted over http://; use https://")
    with stop_signals_exit(log):
        wait_for_redis(settings, log)  # one redis_unreachable line per attempt, as long as needed
    app = create_app(settings)
    node = hostname or f"voucherify-{os.getpid()}@%h"

    argv = [
        "worker",
        "--queues", ",".join(lane_queue(settings.queue, lane) for lane in LANES),
        "--pool", settings.worker_pool,
        "--concurrency", str(settings.worker_concurrency),
        "--hostname", node,
        "--loglevel", settings.log_level.upper(),
        "--without-mingle",
        "--without-gossip",
        *celery_args,
    ]
    app.worker_main(argv)
