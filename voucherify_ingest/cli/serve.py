"""``voucherify-ingest serve``: the HTTP ingest endpoint (see ``producers/serve``)."""

from __future__ import annotations

import sys

import click

from voucherify_ingest.cli.common import load_settings
from voucherify_ingest.logs import configure_logging


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port to listen on (0 picks a free one; the ready log line names it).")
@click.option("-w", "--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Processes sharing the socket; use one per core.")
@click.option("--rate-limit", "rate_limit", default="off", show_default=True,
              help="Requests per caller (app id) and process: 50/s, 600/min, 10000/hour, off.")
def serve_command(host, port, workers, rate_limit):
    """Accept POST /v1/events like Voucherify does, validate, enqueue, answer at once.

    Callers authenticate with X-App-Id/X-App-Token (or Authorization: Bearer TOKEN) matching
    VOUCHERIFY_INGEST_CREDENTIALS (APP_ID:TOKEN[,APP_ID:TOKEN]); these are never forwarded
    to Voucherify. Refuses to start without them.

    \b
    Examples:
      VOUCHERIFY_INGEST_CREDENTIALS=web:$(openssl rand -hex 24) voucherify-ingest serve
      voucherify-ingest serve --host 0.0.0.0 --port 8080 --workers 2 --rate-limit 200/s
      # then point any Voucherify SDK at http://HOST:8080 instead of the API URL
    """
    import structlog

    from producers.serve import Authenticator, IngestApp, parse_rate, serve
    from producers.serve.auth import short_token_warnings

    settings = load_settings("serve")
    Authenticator(settings.ingest_credentials)  # ConfigError (one line, exit 1) before binding
    per_second = parse_rate(rate_limit)
    configure_logging(settings, stream=sys.stdout)
    log = structlog.get_logger("voucherify_ingest.serve")
    for warning in short_token_warnings(settings.ingest_credentials):
        log.warning("ingest_token_weak", detail=warning)

    def make_app() -> IngestApp:
        return IngestApp(settings, rate_limit_per_s=per_second)

    serve(make_app, settings, host=host, port=port, workers=workers)
