"""``voucherify-ingest dlq ...``: inspect, export, replay and purge dead letters.

Readable tables for people, ``--json`` for scripts. ``list`` and ``show`` read newest first;
``export``, ``replay`` and ``purge`` work oldest first, so replayed events reach Voucherify in
the order they first failed. Replay and purge only take entries that failed before the command
started: an event failing again meanwhile is left for next time, never looped over.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import time
from datetime import datetime, timezone

import click
import redis
import structlog

from voucherify_ingest.cli.common import EXIT_FAILURE, echo_json, load_settings, setup
from voucherify_ingest.deadletters import REASONS, DeadLetterQueue
from voucherify_ingest.errors import IngestError
from voucherify_ingest.indoubt import outcome_counts
from voucherify_ingest.keys import Keys
from voucherify_ingest.redis_conn import broker_unavailable, make_redis
from voucherify_ingest.stats import StatsRecorder

_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_when(text: str, now_s: float | None = None) -> float:
    """``2h`` / ``30m`` / ``7d`` ago, an ISO-8601 time (UTC unless it says otherwise), or epoch
    seconds; returns epoch seconds."""
    raw = text.strip()
    ago = _AGO.match(raw.lower())
    if ago:
        return (time.time() if now_s is None else now_s) - float(ago[1]) * _UNIT_S[ago[2]]
    with contextlib.suppress(ValueError):
        return float(raw)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a time: use e.g. 2h, 30m, 7d, 2024-05-01T10:00:00Z or epoch seconds"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class _When(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        return value if isinstance(value, float) else parse_when(str(value))


def _status(value: str | None) -> str | None:
    if value is None:
        return None
    if value.lower() == "none" or (value.isdigit() and 100 <= int(value) <= 599):
        return value.lower()
    raise click.BadParameter(f"{value!r}: an HTTP status such as 400, or 'none'",
                             param_hint="--status")


def filter_options(with_ids: bool = False):
    """The filters every listing/operating command shares."""
    options = [
        click.option("--reason", type=click.Choice(REASONS), help="Only this reason."),
        click.option("--status", help="Only this HTTP status (e.g. 400, 503), or 'none'."),
        click.option("--event", "event_name", metavar="NAME",
                     help="Only this event name (e.g. order_paid)."),
        click.option("--since", type=_When(), help="Failed at or after (2h, 7d, ISO time)."),
        click.option("--until", type=_When(), help="Failed at or before (2h, 7d, ISO time)."),
    ]
    if with_ids:
        options.append(click.option("--id", "ids", multiple=True, metavar="ID",
                                    help="This entry (repeatable); other filters still apply."))

    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _filters(reason, status, event_name, since, until, ids=()) -> dict:
    found = {"reason": reason, "status": _status(status), "event": event_name, "since": since,
             "until": until, "ids": tuple(ids)}
    return {k: v for k, v in found.items() if v not in (None, ())}


def _describe(filters: dict) -> str:
    parts = [f"{k}={_when(v) if k in ('since', 'until') else v}" for k, v in filters.items()
             if k != "ids"]
    if filters.get("ids"):
        parts.append(f"{len(filters['ids'])} id(s)")
    return ", ".join(parts) or "no filter"


@contextlib.contextmanager
def _queue():
    """The DLQ on the configured Redis; Redis failures become one clear line."""
    settings = load_settings("producer")
    setup(settings)
    client = make_redis(settings, timeout_s=max(10.0, settings.redis_timeout_s))
    try:
        yield DeadLetterQueue(client, Keys.from_settings(settings)), settings
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise broker_unavailable(settings.redis_url, exc) from None
    except redis.RedisError as exc:
        raise IngestError(f"Redis refused the operation ({type(exc).__name__}: {exc})") from None
    finally:
        client.close()


def _lane(name: str) -> str:
    """A lane name, or a usage error naming the lanes."""
    from voucherify_ingest.lanes import UnknownLane, check_lane

    try:
        return check_lane(name)
    except UnknownLane as exc:
        raise click.BadParameter(str(exc), param_hint="--lane") from None


def _when(epoch_s: float | None) -> str:
    if epoch_s is None:
        return "-"
    return datetime.fromtimestamp(epoch_s, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 86400:
        return f"{s // 86400}d {s % 86400 // 3600}h"
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 60}m {s % 60}s" if s >= 60 else f"{s}s"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _short(text, width: int) -> str:
    text = "" if text is None else " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def summary(entry: dict, with_payload: bool = False) -> dict:
    """An entry as ``list --json`` shows it (the payload only when asked for)."""
    return entry if with_payload else {k: v for k, v in entry.items() if k != "payload"}


@click.group("dlq")
def dlq_group() -> None:
    """Inspect, export, replay and purge dead letters.

    \b
    Examples:
      voucherify-ingest dlq stats
      voucherify-ingest dlq list --reason rejected --since 24h
      voucherify-ingest dlq show 1f0c4b9e-...
      voucherify-ingest dlq replay --reason quota_exhausted --dry-run
      voucherify-ingest dlq export broken.ndjson --reason invalid   # fix, then enqueue --file
      voucherify-ingest dlq purge --until 30d --yes
    """


@dlq_group.command("list")
@filter_options()
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True,
              help="Entries per page (newest first); --cursor continues after the last one.")
@click.option("--cursor", default=None, help="Continue after a previous page (its next_cursor).")
@click.option("--with-payload", is_flag=True, help="Include payloads in --json output.")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
def list_command(reason, status, event_name, since, until, limit, cursor, with_payload, as_json):
    """List dead letters, newest first."""
    filters = _filters(reason, status, event_name, since, until)
    with _queue() as (dlq, _):
        try:
            page = dlq.list(limit=limit, cursor=cursor, **filters)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--cursor") from None
    if as_json:
        echo_json({"entries": [summary(e, with_payload) for e in page.entries],
                   "count": len(page.entries), "next_cursor": page.next_cursor,
                   "scanned": page.scanned, "filters": filters})
        return
    if not page.entries:
        click.echo(f"no dead letters ({_describe(filters)})")
        return
    rows = [[_when(e.get("last_failed_ts")), e["id"], _short(e.get("event"), 24),
             e.get("reason") or "", str(e.get("status") or "-"), str(e.get("attempts", "")),
             _short((e.get("error") or {}).get("key") or (e.get("error") or {}).get("message"), 40)]
            for e in page.entries]
    click.echo(_table(["LAST FAILED", "ID", "EVENT", "REASON", "STATUS", "ATTEMPTS", "ERROR"],
                      rows))
    more = f"; next page: --cursor {page.next_cursor}" if page.next_cursor else ""
    click.echo(f"\n{len(page.entries)} shown, newest first ({_describe(filters)}){more}")


@dlq_group.command("show")
@click.argument("entry_id")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
def show_command(entry_id, as_json):
    """Show one dead letter: what failed, why, and the payload.

    ENTRY_ID is an event id, as in the ID column of `dlq list`."""
    with _queue() as (dlq, _):
        entry = dlq.get(entry_id)
    if entry is None:
        click.echo(f"error: no dead letter with id {entry_id!r}", err=True)
        sys.exit(EXIT_FAILURE)
    if as_json:
        echo_json(entry)
        return
    error = entry.get("error") or {}
    failed = entry.get("last_failed_ts")
    ago = f" ({_age(time.time() - failed)} ago)" if failed else ""
    fields = [
        ("id", entry["id"]), ("event", entry.get("event")), ("reason", entry.get("reason")),
        ("status", entry.get("status")), ("attempts", entry.get("attempts")),
        ("first enqueued", entry.get("first_enqueued_at")),
        ("last failed", f"{entry.get('last_failed_at')}{ago}"),
        ("worker host", entry.get("worker_host")),
        ("error code", error.get("code")), ("error key", error.get("key")),
        ("error message", error.get("message")), ("request id", error.get("request_id")),
        ("details", error.get("details")), ("response excerpt", error.get("body_excerpt")),
    ]
    for name, value in fields:
        if value not in (None, ""):
            click.echo(f"{name + ':':<18}{value}")
    click.echo("payload:")
    click.echo(json.dumps(entry.get("payload"), indent=2, ensure_ascii=False, sort_keys=True))


@dlq_group.command("stats")
@click.option("--recount", is_flag=True,
              help="Rebuild the per-status counts with a full scan (if they ever drift).")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
def stats_command(recount, as_json):
    """Count dead letters by reason and status; age of the oldest."""
    with _queue() as (dlq, settings):
        if recount:
            dlq.recount()
        stats = dlq.stats()
        counters = dlq.redis.hgetall(StatsRecorder(settings.key_prefix).counters_key)
    stats["in_doubt"] = outcome_counts(
        {k.decode() if isinstance(k, bytes) else k: int(v) for k, v in counters.items()})
    stats["retention"] = {"max_age_s": settings.dlq_max_age_s, "max_len": settings.dlq_max_len}
    if as_json:
        echo_json(stats)
        return
    oldest, newest = stats["oldest"], stats["newest"]
    click.echo(f"dead letters: {stats['total']:,}")
    if oldest:
        click.echo(f"oldest: {oldest['last_failed_at']} ({_age(oldest['age_s'])} ago), "
                   f"newest: {newest['last_failed_at']} ({_age(newest['age_s'])} ago)")
    reasons = [[r, f"{n:,}"] for r, n in stats["by_reason"].items() if n]
    if reasons:
        click.echo("\n" + _table(["REASON", "COUNT"], reasons))
    if stats["by_status"]:
        click.echo("\n" + _table(["STATUS", "COUNT"],
                                 [[s, f"{n:,}"] for s, n in stats["by_status"].items()]))
    doubt = stats["in_doubt"]
    if any(doubt.values()):
        click.echo("\nin-doubt sends settled (lifetime counters; held ones are reason in_doubt, "
                   "`dlq replay --reason in_doubt` sends them):")
        click.echo(_table(["OUTCOME", "COUNT"], [[k, f"{v:,}"] for k, v in doubt.items()]))
    if not stats["counts_exact"]:
        click.echo("\nnote: status counts disagree with the total; run `dlq stats --recount`")
    keep = settings.dlq_max_age_s or settings.dlq_max_len
    click.echo("\nretention: " + (
        f"max age {settings.dlq_max_age_s or '-'} s, max length {settings.dlq_max_len or '-'}"
        if keep else "keep everything (VOUCHERIFY_DLQ_MAX_AGE_S / _MAX_LEN unset)"))


def _octal_mode(value: str) -> int:
    try:
        mode = int(value, 8)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an octal mode such as 600") from None
    if not 0 <= mode <= 0o777:
        raise click.BadParameter(f"{value!r} is not a file mode (000-777)")
    return mode


def _open_private(path: str, mode: int):
    """Open ``path`` for writing with ``mode`` from the first byte (no window in which another
    user could open it), and set it on a file that already existed too."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    except OSError as exc:
        raise IngestError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, mode)
    except OSError as exc:
        os.close(fd)
        raise IngestError(f"cannot set the mode of {path}: {exc.strerror or exc}") from None
    return os.fdopen(fd, "w", encoding="utf-8")


@dlq_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@filter_options(with_ids=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="JSON summary for scripts.")
@click.option("--mode", "mode", default="600", show_default=True, metavar="OCTAL",
              callback=lambda _c, _p, v: _octal_mode(v),
              help="Permissions of FILE: dead letters carry personal data, so by default only "
                   "its owner may read it (like spool files).")
def export_command(file, reason, status, event_name, since, until, ids, limit, as_json, mode):
    """Write dead letters to FILE as NDJSON ('-' for stdout), oldest first.

    Each line is {"event_id", "payload", "dead_letter": {...}}. Fix payloads and feed the file
    to `voucherify-ingest enqueue --file`: the original event ids are kept, so the delivery
    ledger stops any event that had in fact got through. Export deletes nothing.
    """
    filters = _filters(reason, status, event_name, since, until, ids)
    with _queue() as (dlq, _):
        if file == "-":
            written = dlq.export(sys.stdout, limit=limit, **filters)
        else:
            with _open_private(file, mode) as out:
                written = dlq.export(out, limit=limit, **filters)
    if as_json:
        if file != "-":
            echo_json({"exported": written, "file": file, "filters": filters})
    elif file != "-":
        click.echo(f"exported {written:,} dead letter(s) to {file}")


@dlq_group.command("replay")
@filter_options(with_ids=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many (oldest).")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; change nothing.")
@click.option("--chunk-size", type=click.IntRange(1, 10_000), default=500, show_default=True,
              help="Entries moved per atomic step.")
@click.option("--rate", type=click.FloatRange(0), default=0.0,
              help="At most this many entries per second (0 = as fast as possible).")
@click.option("--lane", default="bulk", show_default=True, metavar="NAME",
              help="Lane to replay onto: bulk (a backlog never delays live events) or live.")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
def replay_command(reason, status, event_name, since, until, ids, limit, dry_run, chunk_size,
                   rate, lane, as_json):
    """Put dead letters back on the ingest queue with their original ids, attempts reset.

    Each chunk moves in one atomic Redis script: an entry leaves the store only with its
    message on the queue, so a replay killed at any point loses nothing, and two replays at once
    never enqueue one entry twice. An event that did get through is stopped by the delivery
    ledger. Entries with reason 'invalid' are replayed only when asked for (--reason invalid or
    --id): fix those with export and enqueue --file instead.
    """
    filters = _filters(reason, status, event_name, since, until, ids)
    lane = _lane(lane)
    log = structlog.get_logger("voucherify_ingest.cli.dlq")
    with _queue() as (dlq, settings):
        queue = f"{dlq.keys.lane_queue(lane)} (lane {lane})"
        bar = None
        if sys.stderr.isatty() and not as_json and not dry_run:
            cheap = {k: v for k, v in filters.items() if k not in ("status", "event")}
            total = dlq.matching(**cheap)  # an upper bound without reading entries
            bar = click.progressbar(length=min(total, limit or total), label="replaying",
                                    file=sys.stderr, show_pos=True)
        with bar if bar is not None else contextlib.nullcontext():
            result = dlq.replay(limit=limit, chunk_size=chunk_size, dry_run=dry_run,
                                rate_per_s=rate, on_progress=bar.update if bar else None,
                                lane=lane, **filters)
            if bar is not None:
                bar.update(max(0, bar.length - bar.pos))  # invalid entries were skipped
    if not dry_run:
        log.info("dlq_replayed", replayed=result.replayed, gone=result.gone,
                 queue=dlq.keys.lane_queue(lane), lane=lane, filters=_describe(filters))
    if as_json:
        echo_json({"dry_run": dry_run, "matched": result.matched, "replayed": result.replayed,
                   "gone": result.gone, "queue": dlq.keys.lane_queue(lane), "lane": lane,
                   "filters": filters,
                   **({"sample_ids": result.sample_ids} if dry_run else {})})
    elif dry_run:
        sample = ", ".join(result.sample_ids[:10]) + (" ..." if result.matched > 10 else "")
        click.echo(f"would replay {result.matched:,} dead letter(s) onto {queue} "
                   f"({_describe(filters)}){': ' + sample if sample else ''}")
    else:
        gone = f" ({result.gone:,} already taken by another replay or purge)" if result.gone else ""
        click.echo(f"replayed {result.replayed:,} dead letter(s) onto {queue}{gone}")


@dlq_group.command("purge")
@filter_options(with_ids=True)
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many (oldest).")
@click.option("--dry-run", is_flag=True, help="Say how many would be deleted; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="JSON output for scripts.")
def purge_command(reason, status, event_name, since, until, ids, limit, dry_run, yes, as_json):
    """Delete dead letters for good (asks first unless --yes)."""
    filters = _filters(reason, status, event_name, since, until, ids)
    log = structlog.get_logger("voucherify_ingest.cli.dlq")
    shown = _describe(filters)
    with _queue() as (dlq, _):
        if not ids and "until" not in filters:
            filters["until"] = time.time()  # what is counted now is what gets deleted
        matched = dlq.matching(**filters)
        matched = min(matched, limit) if limit else matched
        if dry_run or not matched:
            if as_json:
                echo_json({"dry_run": dry_run, "matched": matched, "purged": 0,
                           "filters": filters})
            else:
                click.echo(f"would delete {matched:,} dead letter(s) ({shown})"
                           if dry_run else f"nothing to delete ({shown})")
            return
        if not yes:
            click.confirm(f"Delete {matched:,} dead letter(s) ({shown}) for good?",
                          abort=True, err=True)
        purged = dlq.purge(limit=limit, **filters)
    log.info("dlq_purged", purged=purged, filters=_describe(filters))
    if as_json:
        echo_json({"dry_run": False, "matched": matched, "purged": purged, "filters": filters})
    else:
        click.echo(f"deleted {purged:,} dead letter(s)")
