"""``voucherify-ingest metrics``: a Prometheus exporter over the counters in Redis."""

from __future__ import annotations

import sys

import click
import structlog
from prometheus_client import start_http_server

from voucherify_ingest.cli.common import load_settings, serve_until_stopped
from voucherify_ingest.logs import configure_logging
from voucherify_ingest.metrics import build_registry
from voucherify_ingest.redis_conn import make_redis

DEFAULT_PORT = 9808


@click.command("metrics")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, help="Port to serve /metrics on (0: any free port).")
@click.option("--addr", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 in a container or for a remote Prometheus.")
def metrics_command(port, addr):
    """Serve Prometheus metrics read from Redis at each scrape.

    One exporter covers every worker that shares this Redis and key prefix, wherever they run;
    run one or two (for redundancy) per deployment, not one per worker.

    \b
    Examples:
      voucherify-ingest metrics                      # http://127.0.0.1:9808/metrics
      voucherify-ingest metrics --addr 0.0.0.0 -p 9808
    """
    settings = load_settings("producer")
    configure_logging(settings, stream=sys.stdout)
    log = structlog.get_logger("voucherify_ingest.metrics")
    client = make_redis(settings, timeout_s=3.0)
    server, _thread = start_http_server(port, addr=addr, registry=build_registry(client, settings))
    host, bound_port = server.server_address[:2]
    log.info("metrics_listening", url=f"http://{host}:{bound_port}/metrics",
             redis=settings.safe_redis_url, queue=settings.queue)
    serve_until_stopped(server, client, log, "metrics")
