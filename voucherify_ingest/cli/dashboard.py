"""``voucherify-ingest dashboard``: the operator's web page over Redis (flow and dead letters)."""

from __future__ import annotations

import sys
import threading

import click
import structlog

from voucherify_ingest.cli.common import load_settings, serve_until_stopped
from voucherify_ingest.dashboard import Dashboard, make_server
from voucherify_ingest.logs import configure_logging
from voucherify_ingest.redis_conn import make_redis

DEFAULT_PORT = 9809


@click.command("dashboard")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback by default; put TLS in front for more).")
@click.option("-p", "--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              show_default=True, help="Port (0: any free port).")
@click.option("--read-only", is_flag=True,
              help="Show everything, offer and accept no action (no replay, no purge).")
@click.option("--refresh", "refresh_s", type=click.FloatRange(0.5, 60), default=2.0,
              show_default=True, help="Seconds between the overview's live updates.")
def dashboard_command(host, port, read_only, refresh_s):
    """Serve the operator dashboard: the flow live, and the dead letters to search, replay,
    purge and export.

    Needs VOUCHERIFY_DASHBOARD_CREDENTIALS (user:password, comma-separated for several) and
    Redis; no Voucherify token.

    \b
    Examples:
      VOUCHERIFY_DASHBOARD_CREDENTIALS=oncall:s3cret voucherify-ingest dashboard
      voucherify-ingest dashboard --read-only --port 9810
    """
    settings = load_settings("producer")  # a reader of Redis, like stats: no worker settings
    configure_logging(settings, stream=sys.stdout)
    log = structlog.get_logger("voucherify_ingest.dashboard")
    client = make_redis(settings, timeout_s=max(10.0, settings.redis_timeout_s))
    app = Dashboard(client, settings, read_only=read_only, refresh_s=refresh_s)  # ConfigError
    server = make_server(app, host, port)
    bound_host, bound_port = server.server_address[:2]
    thread = threading.Thread(target=server.serve_forever, name="dashboard", daemon=True)
    thread.start()
    log.info("dashboard_listening", url=f"http://{bound_host}:{bound_port}/",
             read_only=read_only, users=len(settings.dashboard_credentials),
             redis=settings.safe_redis_url, queue=settings.queue)
    if bound_host not in ("127.0.0.1", "::1"):
        log.warning("dashboard_not_loopback", host=bound_host,
                    hint="HTTP Basic sends the password with every request: put TLS in front")
    serve_until_stopped(server, client, log, "dashboard")
