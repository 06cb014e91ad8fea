"""``voucherify-ingest spool flush|status``: the producers' local spools on this machine.

A producer drains its own spool once Redis answers again. A process that exited with events
still spooled (killed, or Redis stayed down past its shutdown) leaves them on disk: ``flush``
pushes them to Redis in order. A live process's spool is never touched (it holds a flock).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import redis

from voucherify_ingest.cli.common import EXIT_FAILURE, EXIT_OK, echo_json, load_settings, setup
from voucherify_ingest.redis_conn import broker_unavailable, make_redis

_DIR_HELP = "Spool directory (default: VOUCHERIFY_SPOOL_DIR)."


def _spool_dir(settings, directory: str | None) -> Path:
    chosen = directory or settings.spool_dir
    if not chosen:
        raise click.UsageError("no spool directory: pass --dir or set VOUCHERIFY_SPOOL_DIR")
    path = Path(chosen)
    if not path.is_dir():
        raise click.UsageError(f"spool directory {path} does not exist")
    return path


@click.group("spool")
def spool_group() -> None:
    """Producers' local spools for Redis outages (VOUCHERIFY_SPOOL_DIR)."""


@spool_group.command("flush")
@click.option("--dir", "directory", default=None, help=_DIR_HELP)
@click.option("--force", is_flag=True,
              help="Also flush spools written for another Redis (host:port/db) than REDIS_URL.")
def flush_command(directory, force):
    """Push spools left by processes that exited to Redis, in order; skip live ones.

    Exits 1 when Redis does not answer or a spool was left alone (other Redis, unknown
    format). Pushing twice is harmless: event ids are kept, and the workers' delivery ledger
    skips an event already delivered.

    \b
    Examples:
      voucherify-ingest spool flush
      voucherify-ingest spool flush --dir /var/spool/voucherify
    """
    from producers.spool_files import flush_dead, redis_target

    settings = load_settings("producer")
    setup(settings)
    path = _spool_dir(settings, directory)
    target = redis_target(settings.redis_url)
    client = make_redis(settings, timeout_s=max(settings.redis_timeout_s, 5.0))
    try:
        reports = flush_dead(client, path, target=target, force=force)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise broker_unavailable(settings.redis_url, exc) from None
    finally:
        client.close()
    failed = False
    pushed = 0
    for report in reports:
        if report.state == "flushed":
            pushed += report.pushed
            extra = "".join(
                f", {n} {what} skipped" for n, what in
                ((report.torn, "torn"), (report.corrupt, "corrupt (kept in *.corrupt)")) if n
            )
            click.echo(f"flushed {report.pushed} event(s) from {report.owner} to "
                       f"{', '.join(report.queues) or '-'}{extra}")
        elif report.state == "live":
            click.echo(f"skipped {report.owner}: in use by a live process")
        elif report.state == "empty":
            click.echo(f"removed {report.owner}: nothing was spooled")
        else:
            failed = True
            click.echo(f"left {report.owner}: {report.detail}", err=True)
    click.echo(f"{pushed} event(s) pushed to {target}")
    sys.exit(EXIT_FAILURE if failed else EXIT_OK)


@spool_group.command("status")
@click.option("--dir", "directory", default=None, help=_DIR_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status_command(directory, as_json):
    """List the spools in the directory: live or left behind, events and bytes waiting."""
    from producers.spool_files import spool_status

    settings = load_settings("producer")
    path = _spool_dir(settings, directory)
    rows = spool_status(path)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"no spools in {path}")
        return
    click.echo(f"{'owner':<48} {'state':<6} {'events':>8} {'bytes':>10}  oldest")
    for row in rows:
        state = "live" if row["live"] else "left"
        click.echo(f"{row['owner']:<48} {state:<6} {row['records']:>8} {row['bytes']:>10}  "
                   f"{row['oldest'] or '-'}")
    waiting = sum(r["records"] for r in rows if not r["live"])
    if waiting:
        click.echo(f"{waiting} event(s) left by exited processes: run `voucherify-ingest "
                   "spool flush`")
