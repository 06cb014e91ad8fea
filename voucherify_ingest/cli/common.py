"""Helpers shared by the CLI commands."""

from __future__ import annotations

import json
import sys

import click

from voucherify_ingest.logs import configure_logging
from voucherify_ingest.settings import Settings

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_REJECTED = 3  # a bulk load finished but refused some records


def load_settings(role: str = "worker", **overrides) -> Settings:
    """Read the environment once per command (ConfigError becomes a one-line error).

    ``role`` names what the command is (see ``voucherify_ingest.settings.ROLES``): a producer
    command is not refused over a setting only workers use."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return Settings.from_env(role=role, **overrides)


def setup(settings: Settings, *, stream=None) -> None:
    configure_logging(settings, stream=stream or sys.stderr)


def echo_json(value) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def serve_until_stopped(server, client, log, name: str) -> None:
    """Block until SIGTERM or SIGINT, then stop ``server`` (an HTTP server with ``shutdown``),
    close the Redis ``client``, log ``{name}_stopped`` and exit 0: the end of every reader of
    Redis that serves pages (``metrics``, ``dashboard``)."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    client.close()
    log.info(f"{name}_stopped")
    sys.exit(EXIT_OK)
