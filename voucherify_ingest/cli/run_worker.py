"""``voucherify-ingest worker``: a Celery worker on our app, with our housekeeping thread."""

from __future__ import annotations

import os
import sys

import click
import structlog
from celery import signals

from voucherify_ingest.cli.common import load_settings
from voucherify_ingest.lanes import LANES, lane_queue
from voucherify_ingest.logs import configure_logging
from worker import kombu_fix
from worker.app import create_app
from worker.housekeeping import Housekeeper
from worker.shutdown import ShutdownGuard

POOLS = ["threads", "prefork", "solo", "gevent", "eventlet"]


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

    Needs VOUCHERIFY_APP_ID and VOUCHERIFY_APP_TOKEN; refuses to start without them. Extra
    arguments after `--` go to `celery worker` unchanged.

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
    app = create_app(settings)
    kombu_fix.apply()  # survive a Redis restart with deliveries in flight
    ShutdownGuard(settings).install()  # second SIGTERM / stop bound: exit at once
    node = hostname or f"voucherify-{os.getpid()}@%h"
    keeper: dict[str, Housekeeper] = {}

    @signals.worker_ready.connect(weak=False)
    def _ready(sender=None, **_kwargs):
        name = getattr(sender, "hostname", node)
        keeper["k"] = Housekeeper(settings, name)
        keeper["k"].start()
        log.info(
            "worker_ready", node=name, queue=settings.queue, pool=settings.worker_pool,
            concurrency=settings.worker_concurrency, api_url=settings.api_base,
            redis=settings.safe_redis_url, rate_limit=settings.rate_limit or "off",
        )

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_kwargs):
        if "k" in keeper:
            keeper["k"].stop()
        log.info("worker_stopped")

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
