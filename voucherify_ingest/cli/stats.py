"""``voucherify-ingest stats``: is the flow healthy, at a glance (``--watch``, ``--json``)."""

from __future__ import annotations

import json
import math
import sys
import time

import click
import redis

from voucherify_ingest.cli.common import EXIT_FAILURE, EXIT_OK, load_settings
from voucherify_ingest.flow import ALIVE_WITHIN_S, RATE_WINDOW_MIN, FlowReader, FlowSnapshot
from voucherify_ingest.redis_conn import describe_redis_failure, make_redis
from voucherify_ingest.stats import LATENCY_BUCKETS_MS


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}min"
    return f"{seconds / 3600:.1f}h"


def _bound(upper_ms: float) -> str:
    """A histogram bucket's upper bound as a human reads it."""
    if math.isinf(upper_ms):
        return f"> {LATENCY_BUCKETS_MS[-1]:g} ms"
    return f"<= {upper_ms:g} ms"


def _lane_lines(snap: FlowSnapshot) -> list[str]:
    """One line per lane: queued, oldest, pace and the drain ETA."""
    lines = []
    for lane in snap.lanes:
        waiting = f", {lane.delayed} waiting retry" if lane.delayed else ""
        lines.append(f"  lane {lane.lane:<10} {lane.line()}   oldest {_age(lane.oldest_age_s)}"
                     f"{waiting}")
    return lines


def _cycle_lines(c: dict) -> list[str]:
    """The billing cycle: used, left per lane, the reset and the projection."""
    lines = [
        f"  cycle           {c['used']:,} of {c['quota']:,} calls used since {c['started']}, "
        f"resets {c['resets']}",
        f"                  left: live {c['left_live']:,}   bulk {c['left_bulk']:,} "
        f"(of {c['bulk_allowance']:,})   reserve {c['reserve']:,} never spent",
    ]
    if c["runs_out"]:
        lines.append(f"                  at the current pace ({c['per_day']:,.0f}/day) the "
                     f"allowance runs out on {c['runs_out'][:10]}")
    paused = [lane for lane in ("live", "bulk") if c[f"{lane}_paused"]]
    if paused:
        lines.append(f"                  PAUSED: {', '.join(paused)} (allowance spent; waits "
                     "for the reset or a higher allowance)")
    if c["api_blocked_s"]:
        lines.append(f"                  PAUSED: the API said the cycle is spent; "
                     f"{c['api_blocked_s']:,.0f}s to the reset")
    return lines


def render(snap: FlowSnapshot) -> str:
    """The human view: one screen, most urgent things first."""
    lim = snap.limiter
    lines = [
        f"voucherify-ingest stats  {snap.at}  queue {snap.queue}",
        "",
        f"  queued          {snap.queue_depth:>10}   oldest waiting {_age(snap.oldest_age_s)}",
        f"  in flight       {snap.in_flight:>10}",
        f"  waiting retry   {snap.delayed:>10}   (retries and rate-limit deferrals)",
        "",
        *_lane_lines(snap),
        "",
        f"  per minute      delivered {snap.per_minute['delivered']:>8.1f}   "
        f"failed {snap.per_minute['failed']:>8.1f}   "
        f"(mean of the last {RATE_WINDOW_MIN} complete minutes)",
        f"  this minute     delivered {snap.this_minute['delivered']:>8}   "
        f"failed {snap.this_minute['failed']:>8}",
        f"  totals          delivered {snap.totals['delivered']}  retried {snap.totals['retried']}"
        f"  deferred {snap.totals['deferred']}  duplicates avoided "
        f"{snap.totals['duplicates_avoided']}  429s {snap.totals['http_429']}",
    ]
    doubt = snap.in_doubt
    if any(doubt.values()):
        lines.append(
            f"  in doubt        held {doubt.get('held', 0)}  verified delivered "
            f"{doubt.get('verified_delivered', 0)}  verified absent+resent "
            f"{doubt.get('verified_absent_resent', 0)}  lookup failed "
            f"{doubt.get('lookup_failed', 0)}  resent {doubt.get('resent', 0)}  "
            f"({doubt.get('lookups', 0)} lookups)"
        )
    lat = snap.latency
    if lat["count"]:
        lines.append(
            f"  latency         mean {lat['mean_ms']} ms   p50 {_bound(lat['p50_le_ms'])}   "
            f"p95 {_bound(lat['p95_le_ms'])}   ({lat['count']} deliveries)"
        )
    lines.append("")
    held = {r: n for r, n in snap.dead_letters.items() if n}
    if held:
        by_reason = "  ".join(f"{r} {n}" for r, n in sorted(held.items()))
        lines.append(f"  dead letters    {snap.dead_letters_total:>10}   {by_reason}")
    else:
        lines.append(f"  dead letters    {snap.dead_letters_total:>10}")
    if lim.per_s is None:
        lines.append(f"  rate limit      {lim.configured}")
    else:
        cool = (
            f"   cool-down until {lim.cooldown_until} ({lim.cooldown_left_s:.1f}s left)"
            if lim.cooldown_until else "   no cool-down"
        )
        lines.append(
            f"  rate limit      {lim.configured}   current wait {lim.current_wait_s:.2f}s{cool}"
        )
        if lim.reserve:
            paused = (f"   paused {lim.reserve_pause_left_s:.1f}s (others spent into it)"
                      if lim.reserve_pause_left_s else "")
            lines.append(f"  rate reserve    {lim.reserve} kept for other clients{paused}")
        if lim.cycle:
            lines.extend(_cycle_lines(lim.cycle))
        if lim.bulk_starved_s:
            lines.append(f"  bulk starved    {lim.bulk_starved_s:.1f}s   (live events take "
                         "every slot)")
    alive = ", ".join(snap.workers_alive) or "none"
    lines.append(f"  workers alive   {len(snap.workers_alive):>10}   {alive}")
    if snap.workers_stale:
        lines.append(
            f"  no heartbeat    {len(snap.workers_stale):>10}   (silent > {ALIVE_WITHIN_S:g}s: "
            f"{', '.join(snap.workers_stale)})"
        )
    return "\n".join(lines)


@click.command("stats")
@click.option("--json", "as_json", is_flag=True, help="One JSON document (one line per refresh "
              "with --watch).")
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("-i", "--interval", "interval_s", type=click.FloatRange(0.2, 3600), default=2.0,
              show_default=True, help="Seconds between refreshes with --watch.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="With --watch: stop after this many refreshes.")
def stats_command(as_json, watch, interval_s, count):
    """Show how events flow: queue depth and age, in flight, delivered and failed per minute,
    dead letters by reason, the shared rate limiter and the workers alive.

    Reads Redis only, so it sees every worker on every machine.

    \b
    Examples:
      voucherify-ingest stats
      voucherify-ingest stats --watch -i 5
      voucherify-ingest stats --json | jq .queue_depth
    """
    settings = load_settings("producer")
    client = make_redis(settings, timeout_s=3.0)
    reader = FlowReader(client, settings)
    shown = 0
    try:
        while True:
            try:
                snap = reader.snapshot()
            except redis.RedisError as exc:
                click.echo(f"error: {describe_redis_failure(settings.redis_url, exc)}", err=True)
                if not watch:
                    sys.exit(EXIT_FAILURE)
            else:
                if as_json:
                    indent = None if watch else 2
                    click.echo(json.dumps(snap.as_dict(), indent=indent, sort_keys=True))
                else:
                    if watch and sys.stdout.isatty():
                        click.clear()
                    click.echo(render(snap))
                    if watch and not sys.stdout.isatty():
                        click.echo("")
            shown += 1
            if not watch or (count is not None and shown >= count):
                break
            time.sleep(interval_s)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    sys.exit(EXIT_OK)
