"""The ``voucherify-ingest`` command: one click group, one module per command family."""

from __future__ import annotations

import sys

import click

from voucherify_ingest import __version__
from voucherify_ingest.cli.common import EXIT_FAILURE
from voucherify_ingest.errors import IngestError


class _Group(click.Group):
    """Turn our own errors into one clear line and exit 1 (no traceback for users)."""

    def invoke(self, ctx):
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

    Configuration comes from VOUCHERIFY_* variables and REDIS_URL (see the README).
    """


def _register() -> None:
    from voucherify_ingest.cli import check, demo, enqueue, run_worker

    for module in (run_worker, enqueue, check, demo):
        module.register(main)
    # Command families added by later modules register themselves here too.
    for name in ("dlq", "stats", "metrics", "serve", "spool"):
        try:
            module = __import__(f"{__name__}.{name}", fromlist=["register"])
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.register(main)


_register()
