"""``voucherify-ingest enqueue``: put events on the queue from the command line.

One event (an argument or standard input), or a whole file with ``--file`` (a backfill: see
``producers.bulk``).
"""

from __future__ import annotations

import json
import os
import sys

import click

from voucherify_ingest.cli.common import EXIT_FAILURE, EXIT_REJECTED, load_settings, setup
from voucherify_ingest.errors import BrokerUnavailable, InvalidEvent, format_messages

NO_PAYLOAD = (
    "no payload given: pass the event as PAYLOAD_JSON or pipe it on standard input "
    "(see voucherify-ingest enqueue --help)"
)
TTY_HINT = (
    "reading one event (JSON) from standard input; end it with Ctrl-D, or pass it as an "
    "argument: voucherify-ingest enqueue '{\"event\":\"signed_up\",\"customer\":"
    "{\"source_id\":\"u1\"}}'"
)


def _read_payload(payload_json: str | None) -> object:
    if payload_json is None:
        if sys.stdin.isatty():  # a person at a terminal: say what we wait for
            click.echo(TTY_HINT, err=True)
        payload_json = sys.stdin.read()
    if not payload_json.strip():
        raise click.UsageError(NO_PAYLOAD)
    try:
        return json.loads(payload_json)
    except ValueError as exc:
        raise click.UsageError(f"payload is not valid JSON: {exc}") from None
    except RecursionError:  # json.loads recurses once per level of [[[[...]]]]
        raise click.UsageError("payload is not valid JSON: nested too deeply") from None


def _default_rejects_path(path: str) -> str:
    base = "stdin" if path == "-" else os.path.basename(path)
    for suffix in (".gz", ".ndjson", ".jsonl", ".json", ".csv"):
        base = base.removesuffix(suffix)
    return f"{base}.rejects.ndjson"


@click.command("enqueue")
@click.argument("payload_json", required=False)
@click.option("--event-id", default=None, help="Use this event id instead of a new uuid4.")
@click.option("-f", "--file", "file_path", default=None, metavar="PATH",
              help="Backfill: enqueue every record of PATH (NDJSON, JSON array or CSV, "
                   "optionally gzipped; '-' reads standard input).")
@click.option("--format", "fmt", type=click.Choice(["auto", "ndjson", "json", "csv"]),
              default="auto", show_default=True,
              help="Input format; auto: '[' starts a JSON array, '{' NDJSON, else CSV.")
@click.option("--id-field", default=None, metavar="DOTTED.PATH",
              help="Event id from this field of each record (e.g. metadata.event_key); "
                   "default: bf- + a hash of the record's content.")
@click.option("--dry-run", is_flag=True, help="Validate only; enqueue nothing, touch no Redis.")
@click.option("--max-queue", type=click.IntRange(min=1), default=None, metavar="N",
              help="Pause loading while the queue holds more than N events.")
@click.option("--batch-size", type=click.IntRange(1, 1000), default=None, metavar="N",
              help="Events per queue message (default 50, chosen by measurement; 1 = one "
                   "message per event).")
@click.option("--rejects", "rejects_path", default=None, metavar="PATH",
              help="Where rejected records go, one JSON line each (default "
                   "NAME.rejects.ndjson in the current directory; created only if needed).")
@click.option("--no-ledger-check", is_flag=True,
              help="Do not skip ids the delivery ledger has as delivered (the worker's "
                   "ledger still stops a second send).")
@click.option("--lane", default=None, metavar="NAME",
              help="Lane: live (default for one event) or bulk (default for --file): live "
                   "events go before bulk ones, at the queue and at the rate limit.")
@click.option("--progress-every", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Interval of the plain progress lines when stderr is not a TTY.")
def enqueue_command(payload_json, event_id, file_path, fmt, id_field, dry_run, max_queue,
                    batch_size, rejects_path, no_ledger_check, lane, progress_every):
    """Validate one event and enqueue it; print its event id. Or backfill a file.

    The event is PAYLOAD_JSON, or standard input when it is omitted. With --file every record
    of the file is validated and enqueued; bad records go to the rejects file with their line
    number and do not stop the run. Prints a summary; exits 3 when anything was rejected.

    \b
    Examples:
      voucherify-ingest enqueue '{"event":"signed_up","customer":{"source_id":"u1"}}'
      echo '{"event":"order_paid","customer":{"id":"cust_1"}}' | voucherify-ingest enqueue
      voucherify-ingest enqueue --file orders-2024.ndjson.gz --max-queue 200000
      voucherify-ingest enqueue --file signups.csv --id-field metadata.signup_id --dry-run
      zcat dlq-export.ndjson.gz | voucherify-ingest enqueue --file -
    """
    from producers import Producer
    from voucherify_ingest.lanes import BULK, LIVE, UnknownLane, check_lane

    try:
        lane = check_lane(lane) if lane is not None else (BULK if file_path else LIVE)
    except UnknownLane as exc:
        raise click.BadParameter(str(exc), param_hint="--lane") from None
    settings = load_settings("producer")
    setup(settings)
    if file_path is not None:
        if payload_json is not None or event_id is not None:
            raise click.UsageError("--file takes no PAYLOAD_JSON and no --event-id")
        sys.exit(_backfill(settings, file_path, fmt, id_field, dry_run, max_queue, batch_size,
                           rejects_path, not no_ledger_check, progress_every, lane))
    payload = _read_payload(payload_json)
    producer = Producer(settings)
    try:
        click.echo(producer.enqueue_event(payload, event_id=event_id, lane=lane))
    except InvalidEvent as exc:
        click.echo(f"invalid event: {format_messages(exc.messages)}", err=True)
        sys.exit(EXIT_FAILURE)
    finally:
        producer.close()


def _cycle_plan(settings, events: int) -> list[str]:
    """The file's cost against this cycle's bulk allowance (VOUCHERIFY_CYCLE_QUOTA)."""
    import time

    import redis

    from voucherify_ingest.cycle import CycleQuota, plan_lines, usage
    from voucherify_ingest.rates import limiter_key, parse_rate_limit, reserve_fraction
    from voucherify_ingest.redis_conn import make_redis

    quota = CycleQuota.from_settings(settings)
    limit = parse_rate_limit(settings.rate_limit)
    per_s = limit.per_s * (1 - reserve_fraction(settings.rate_reserve, limit)) if limit else None
    key = limiter_key(settings.key_prefix, settings.app_id, settings.api_base)
    client = make_redis(settings, timeout_s=2.0)
    try:
        used = usage(client, key, quota, time.time())
    except redis.RedisError:
        used = None
    finally:
        client.close()
    return plan_lines(events, quota, used, per_s, time.time())


def _plan_up_front(settings, path: str, fmt: str) -> None:
    """Before a real load spends anything: what the file will cost against this cycle's bulk
    allowance, so a file that cannot finish within it says so before the first event is queued.
    Counting is one extra read of the file (records as the loader reads them, before
    validation); standard input cannot be read twice, so it is planned only after loading."""
    from producers.bulk import BulkInputError, open_input, read_records

    try:
        source = open_input(path)
    except BulkInputError:
        return  # the load says what is wrong with the file
    try:
        records = sum(1 for _ in read_records(source, fmt))
    except BulkInputError:
        return
    finally:
        source.close()
    click.echo(f"cycle: before loading: {path} holds {records:,} records", err=True)
    for line in _cycle_plan(settings, records):
        click.echo(line, err=True)


def _backfill(settings, path, fmt, id_field, dry_run, max_queue, batch_size, rejects_path,
              check_ledger, progress_every, lane) -> int:
    from producers import Producer
    from producers.bulk import (
        DEFAULT_BATCH_SIZE,
        BulkInputError,
        BulkLoader,
        Progress,
        Rejects,
        open_input,
        read_records,
    )

    rejects_path = rejects_path or _default_rejects_path(path)
    try:
        source = open_input(path)
    except BulkInputError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_FAILURE
    if settings.cycle_quota and not dry_run and path != "-":
        _plan_up_front(settings, path, fmt)
    # A backfill never spools: when Redis is down it stops with a clear error instead.
    producer = Producer(settings.replace(spool_dir=""))
    rejects = Rejects(rejects_path, echo=sys.stderr)
    progress = Progress(sys.stderr, source, every_s=progress_every, dry_run=dry_run)
    loader = BulkLoader(
        producer,
        batch_size=batch_size or DEFAULT_BATCH_SIZE,
        id_field=id_field,
        dry_run=dry_run,
        max_queue=max_queue,
        check_ledger=check_ledger,
        rejects=rejects,
        on_chunk=progress.update,
        on_pause=progress.paused,
        lane=lane,
    )
    try:
        summary = loader.run(read_records(source, fmt))
    except (BulkInputError, BrokerUnavailable) as exc:
        progress.finish()
        click.echo(f"stopped: {loader.summary.line(dry_run)}", err=True)
        click.echo(f"error: {exc}", err=True)
        return EXIT_FAILURE
    finally:
        progress.finish()
        rejects.close()
        source.close()
        producer.close()
    click.echo(summary.line(dry_run))
    if settings.cycle_quota:
        for line in _cycle_plan(settings, summary.enqueued):
            click.echo(line)
    if summary.rejected:
        click.echo(f"rejected records: {rejects_path}", err=True)
        return EXIT_REJECTED
    return 0
