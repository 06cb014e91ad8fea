"""The ``voucherify-ingest`` command: one click group, one module per command family."""

from __future__ import annotations

import importlib
import sys

import click

from voucherify_ingest import __version__

EXIT_FAILURE = 1  # as voucherify_ingest.cli.common, which this module must not import (it is slow)


#: command name -> (module under voucherify_ingest.cli, attribute, one-line help). A command's
#: module is imported only when that command runs, so ``--help`` and ``--version`` stay fast.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "worker": ("run_worker", "worker_command",
               "Run a worker that delivers queued events to Voucherify."),
    "enqueue": ("enqueue", "enqueue_command",
                "Validate one event (or a file of them) and enqueue it."),
    "check": ("check", "check_command",
              "Check what this host's role needs (settings, Redis, API); 0 if all is well."),
    "demo": ("demo", "demo_command",
             "Run producer -> Redis -> worker -> API locally and show the result."),
    "dlq": ("dlq", "dlq_group", "Inspect, export, replay and purge dead letters."),
    "stats": ("stats", "stats_command",
              "Show the flow: queues, in flight, rate, dead letters, workers."),
    "metrics": ("metrics", "metrics_command",
                "Serve Prometheus metrics read from Redis at each scrape."),
    "dashboard": ("dashboard", "dashboard_command",
                  "Serve the operator dashboard: live flow, dead letters to replay or purge."),
    "serve": ("serve", "serve_command",
              "Accept POST /v1/events like Voucherify does; enqueue what is valid."),
    "spool": ("spool", "spool_group",
              "Producers' local spools for Redis outages (VOUCHERIFY_SPOOL_DIR)."),
}


class _Group(click.Group):
    """Commands loaded on first use; our own errors become one clear line and exit 1."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attribute, _ = COMMANDS[name]
        module = importlib.import_module(f"{__name__}.{module_name}")
        return getattr(module, attribute)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        from voucherify_ingest.errors import IngestError

        try:
            return super().invoke(ctx)
        except IngestError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILURE)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="voucherify-ingest")
def main() -> None:
    """Queue-backed delivery of Voucherify custom events (POST /v1/events).

    \b
    Examples:
      voucherify-ingest check                 # settings, Redis and the API reachable?
      voucherify-ingest worker -c 16          # run a worker (needs VOUCHERIFY_APP_ID/TOKEN)
      echo '{"event":"signed_up","customer":{"source_id":"u1"}}' | voucherify-ingest enqueue
      voucherify-ingest demo                  # everything locally, against a stand-in API

    Configuration comes from VOUCHERIFY_* variables and REDIS_URL
    (docs/workers-and-configuration.md).
    """
