"""HTML for each page, built from plain strings with every value escaped (no template engine:
three pages do not need one). The overview's live part is one fragment the page re-fetches."""

from __future__ import annotations

import json
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from voucherify_ingest.deadletters import REASONS
from voucherify_ingest.flow import RATE_WINDOW_MIN
from voucherify_ingest.timefmt import iso_utc

ENTRY_KNOWN = {"id", "event", "reason", "status", "error", "attempts", "first_enqueued_at",
               "last_failed_at", "last_failed_ts", "worker_host", "payload"}


def e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, user: str, csrf: str, read_only: bool, page: str) -> str:
    nav = "".join(
        f'<a href="{href}"{" class=on" if page == name else ""}>{label}</a>'
        for name, href, label in (("overview", "/", "Overview"),
                                  ("dead-letters", "/dead-letters", "Dead letters"))
    )
    badge = '<span class="badge">read-only</span>' if read_only else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{e(csrf)}">
<meta name="read-only" content="{'1' if read_only else '0'}">
<title>{e(title)} · voucherify-ingest</title>
<link rel="stylesheet" href="/assets/dashboard.css">
<script src="/assets/dashboard.js" defer></script>
</head><body data-page="{e(page)}">
<header><strong>voucherify-ingest</strong><nav>{nav}</nav>
<span class="who">{e(user)} {badge}</span></header>
<main>{body}</main>
<div id="modal" class="modal" hidden><div class="box"><p id="modal-text"></p>
<button data-testid="confirm" id="modal-confirm" class="danger">Confirm</button>
<button id="modal-cancel">Cancel</button></div></div>
<div id="flash" class="flash" hidden></div>
</body></html>"""


# -- overview -------------------------------------------------------------------------------

def age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _eta(lane: dict[str, Any]) -> str:
    if not lane["queued"]:
        return "empty"
    return "no flow" if lane["eta_s"] is None else age(lane["eta_s"])


def overview_page(data: dict[str, Any], refresh_s: float) -> str:
    return (f'<h1>Overview <small id="at">{e(data["at"])}</small></h1>'
            f'<div id="live" data-refresh-ms="{int(refresh_s * 1000)}">'
            f'{overview_fragment(data)}</div>')


def overview_fragment(d: dict[str, Any]) -> str:
    lanes = "".join(
        f'<tr><td>{e(lane["name"])}</td>'
        f'<td class="num" data-testid="queued-{e(lane["name"])}">{lane["queued"]}</td>'
        f'<td class="num">{age(lane["oldest_age_s"])}</td>'
        f'<td class="num">{_eta(lane)}</td>'
        "</tr>"
        for lane in d["lanes"]
    )
    lim, rate = d["limiter"], d["rate"]
    if rate["limit_per_min"]:
        pct = min(100.0, 100 * (rate["share"] or 0))
        rate_html = (f'<meter min="0" max="100" high="90" value="{pct:.0f}"></meter> '
                     f'{rate["used_per_min"]} of {rate["limit_per_min"]:g} per min '
                     f'({e(lim["configured"])})')
        if rate.get("reserve") is not None:
            rate_html += f'; reserve {e(rate["reserve"])}'
    else:
        rate_html = f"limit {e(lim['configured'])}; {rate['used_per_min']} attempts last minute"
    cool = (f'<span class="bad" data-testid="cooldown">cool-down, {lim["cooldown_left_s"]:.1f} s '
            f'left (until {e(lim["cooldown_until"])})</span>' if lim.get("cooldown_until")
            else '<span class="ok" data-testid="cooldown">no cool-down</span>')
    auth = lim.get("auth_paused_since")
    auth_html = (f'<span class="bad" data-testid="auth-pause">paused since {e(auth)}: the API '
                 'refuses the credentials</span>' if auth
                 else '<span class="ok" data-testid="auth-pause">not paused</span>')
    reasons = "".join(
        f'<tr><td><a href="/dead-letters?reason={e(r)}">{e(r)}</a></td>'
        f'<td class="num" data-testid="dead-letters-{e(r)}">{n}</td></tr>'
        for r, n in sorted(d["dead_letters"].items()) if n
    ) or '<tr><td colspan="2" class="muted">none</td></tr>'
    ages = d["heartbeat_age_s"]
    workers = "".join(
        f'<tr><td>{e(w)}</td><td class="num">{age(ages.get(w))}</td>'
        f'<td>{"alive" if w in d["workers_alive"] else "<span class=bad>silent</span>"}</td></tr>'
        for w in [*d["workers_alive"], *d["workers_stale"]]
    ) or '<tr><td colspan="3" class="muted">no worker has reported</td></tr>'
    pm, tm, totals = d["per_minute"], d["this_minute"], d["totals"]
    return f"""
<section class="cards">
 <div class="card"><h2>Queued per lane</h2><table><tr><th>lane</th><th>queued</th>
  <th>oldest</th><th>ETA</th></tr>{lanes}</table></div>
 <div class="card"><h2>Flow</h2><table>
  <tr><td>in flight</td><td class="num" data-testid="in-flight">{d["in_flight"]}</td></tr>
  <tr><td>waiting retry</td><td class="num" data-testid="waiting-retry">{d["delayed"]}</td></tr>
  <tr><td>delivered / min <small>({RATE_WINDOW_MIN}-min mean)</small></td>
   <td class="num">{pm["delivered"]:g}
   <small>(this minute {tm["delivered"]})</small></td></tr>
  <tr><td>failed / min <small>({RATE_WINDOW_MIN}-min mean)</small></td>
   <td class="num">{pm["failed"]:g}
   <small>(this minute {tm["failed"]})</small></td></tr>
  <tr><td>delivered total</td><td class="num" data-testid="delivered-total">
   {totals["delivered"]}</td></tr>
  <tr><td>429s total</td><td class="num" data-testid="http-429">{totals["http_429"]}</td></tr>
 </table></div>
 <div class="card"><h2>Rate limit</h2><p>{rate_html}</p><p>{cool}</p>
  <p>current wait {lim["current_wait_s"]:.2f} s</p><p>auth: {auth_html}</p>{_budget_html(lim)}
 </div>
</section>
<section class="card wide"><h2>Delivered and failed per minute, last hour</h2>
 {chart(d["history"])}</section>
<section class="cards">
 <div class="card"><h2>Dead letters
  <span class="num" data-testid="dead-letters-total">{d["dead_letters_total"]}</span></h2>
  <table>{reasons}</table></div>
 <div class="card"><h2>Workers alive
  <span class="num" data-testid="workers-alive">{len(d["workers_alive"])}</span></h2>
  <table><tr><th>worker</th><th>heartbeat</th><th></th></tr>{workers}</table></div>
</section>"""


def chart(history: list[dict[str, Any]], width: int = 900, height: int = 160) -> str:
    """Two polylines in an inline SVG (no chart library): delivered green, failed red."""
    top = max([1, *(max(h["delivered"], h["failed"]) for h in history)])
    step = width / max(1, len(history) - 1)

    def line(name: str) -> str:
        return " ".join(f"{i * step:.1f},{height - h[name] / top * (height - 10):.1f}"
                        for i, h in enumerate(history))

    first = iso_utc(history[0]["minute"], timespec="minutes") if history else ""
    return (f'<svg class="chart" viewBox="0 0 {width} {height + 14}" role="img" '
            f'aria-label="delivered and failed per minute">'
            f'<line x1="0" y1="{height}" x2="{width}" y2="{height}" class="axis"/>'
            f'<polyline class="delivered" points="{line("delivered")}"/>'
            f'<polyline class="failed" points="{line("failed")}"/>'
            f'<text x="0" y="{height + 12}">{e(first)}</text>'
            f'<text x="{width}" y="{height + 12}" text-anchor="end">now</text>'
            f'<text x="4" y="12">max {top}/min</text></svg>'
            '<p class="legend"><span class="delivered">delivered</span> '
            '<span class="failed">failed</span></p>')


# -- dead letters ---------------------------------------------------------------------------

def dead_letters_page(listing, fields: dict[str, str], total: int, *, read_only: bool,
                      error: str | None = None) -> str:
    def opt(value: str, current: str | None) -> str:
        return f'<option{" selected" if value == current else ""}>{e(value)}</option>'

    reasons = "<option value=''>any reason</option>" + "".join(
        opt(r, fields.get("reason")) for r in REASONS)
    form = f"""<form id="filters" method="get" action="/dead-letters" class="filters">
<select name="reason" data-testid="filter-reason">{reasons}</select>
<input name="status" placeholder="HTTP status" size="8" value="{e(fields.get("status"))}"
 data-testid="filter-status">
<input name="event" placeholder="event name" value="{e(fields.get("event"))}"
 data-testid="filter-event">
<input name="since" placeholder="since (2h, ISO)" size="14" value="{e(fields.get("since"))}"
 data-testid="filter-since">
<input name="until" placeholder="until (ISO)" size="14" value="{e(fields.get("until"))}"
 data-testid="filter-until">
<input name="q" placeholder="event id or customer source_id" size="28"
 value="{e(fields.get("q"))}" data-testid="search">
<button type="submit" data-testid="apply-filters">Apply</button>
<a href="/dead-letters">clear</a></form>"""
    actions = "" if read_only else """<div class="actions">
<button data-testid="dlq-replay-selected" data-action="replay" data-scope="selected">
 Replay selected</button>
<button data-testid="dlq-purge-selected" data-action="purge" data-scope="selected" class="danger">
 Purge selected</button>
<button data-testid="dlq-replay-filtered" data-action="replay" data-scope="filtered">
 Replay all matching</button>
<button data-testid="dlq-purge-filtered" data-action="purge" data-scope="filtered" class="danger">
 Purge all matching</button></div>"""
    query = urlencode(fields)
    matching = ("matching: counted when you act" if listing.matching is None
                else f'matching <span data-testid="dlq-matching">{listing.matching}</span>')
    head_select = ("" if read_only else
                   '<th><input type="checkbox" id="select-all" title="select this page"></th>')
    rows = "".join(_row(entry, read_only) for entry in listing.entries)
    if not rows:
        rows = '<tr><td colspan="8" class="muted">no dead letters match</td></tr>'
    more = (f'<a data-testid="dlq-next" href="/dead-letters?'
            f'{urlencode({**fields, "cursor": listing.next_cursor})}">older →</a>'
            if listing.next_cursor else '<span class="muted">end</span>')
    problem = f'<p class="bad" data-testid="filter-error">{e(error)}</p>' if error else ""
    return f"""<h1>Dead letters
 <span class="num" data-testid="dead-letters-total">{total}</span></h1>
{form}{problem}
<p class="meta">{matching} ·
 <a data-testid="dlq-export" href="/dead-letters/export.ndjson?{e(query)}">export NDJSON</a>
</p>{actions}
<table class="list" id="dlq-table" data-filter="{e(json.dumps(fields))}"><thead><tr>
{head_select}<th>last failed (UTC)</th><th>event id</th><th>event</th><th>reason</th><th>status</th>
<th>API said</th><th>attempts</th></tr></thead><tbody>{rows}</tbody></table>
<p class="pager"><a href="/dead-letters?{e(query)}">newest</a> · {more}</p>"""


def _row(entry: dict[str, Any], read_only: bool) -> str:
    err = entry.get("error") or {}
    said = " ".join(str(x) for x in (err.get("code"), err.get("key"), err.get("message")) if x)
    select = ("" if read_only else
              f'<td><input type="checkbox" data-testid="dlq-select" value="{e(entry["id"])}">'
              "</td>")
    href = "/dead-letters/entry/" + quote(entry["id"], safe="")
    return (f'<tr data-testid="dlq-row" data-event-id="{e(entry["id"])}">{select}'
            f'<td>{e(entry.get("last_failed_at"))}</td>'
            f'<td><a href="{e(href)}">{e(entry["id"])}</a></td><td>{e(entry.get("event"))}</td>'
            f'<td>{e(entry.get("reason"))}</td><td>{e(entry.get("status"))}</td>'
            f'<td class="said">{e(said[:120])}</td><td class="num">{e(entry.get("attempts"))}</td>'
            "</tr>")


def entry_page(entry: dict[str, Any], *, read_only: bool) -> str:
    err = entry.get("error") or {}
    said = "".join(f"<tr><th>{e(k)}</th><td>{_value(v)}</td></tr>"
                   for k, v in err.items() if v not in (None, ""))
    facts = "".join(
        f"<tr><th>{e(k)}</th><td>{'–' if entry.get(k) is None else e(entry.get(k))}</td></tr>"
        for k in ("id", "event", "reason", "status", "attempts", "first_enqueued_at",
                  "last_failed_at", "worker_host"))
    # In-doubt evidence, verification results and anything else a newer worker writes.
    extra = "".join(f"<tr><th>{e(k)}</th><td>{_value(v)}</td></tr>"
                    for k, v in entry.items() if k not in ENTRY_KNOWN)
    ids = e(json.dumps([entry["id"]]))
    actions = "" if read_only else f"""<div class="actions" data-ids="{ids}">
<button data-testid="dlq-replay-one" data-action="replay" data-scope="one">Replay</button>
<button data-testid="dlq-purge-one" data-action="purge" data-scope="one" class="danger">
 Purge</button></div>"""
    return f"""<h1>Dead letter <code data-testid="entry-id">{e(entry["id"])}</code></h1>
<p><a href="/dead-letters">← all dead letters</a></p>{actions}
<section class="cards"><div class="card"><h2>Entry</h2><table>{facts}</table></div>
<div class="card"><h2>What the API said</h2><table data-testid="api-said">{said}</table></div>
</section>
{f'<section class="card wide"><h2>Evidence and more</h2><table>{extra}</table></section>'
 if extra else ""}
<section class="card wide"><h2>Payload</h2>
<pre data-testid="payload">{e(json.dumps(entry.get("payload"), indent=2, ensure_ascii=False))}</pre>
</section>"""


def _value(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return f"<pre>{e(json.dumps(v, indent=2, ensure_ascii=False))}</pre>"
    return e(v)


def message_page(title: str, text: str) -> str:
    return f"<h1>{e(title)}</h1><p>{e(text)}</p>"


def _budget_html(lim: dict[str, Any]) -> str:
    """The reserve pause, bulk starvation and the billing cycle, when there is one."""
    parts = []
    if lim.get("reserve_pause_left_s"):
        parts.append(f'<p class="bad" data-testid="reserve-pause">reserve pause: other clients '
                     f'spent into the reserve, {lim["reserve_pause_left_s"]:.1f} s left</p>')
    if lim.get("bulk_starved_s"):
        parts.append(f'<p class="bad" data-testid="bulk-starved">bulk has had no slot for '
                     f'{lim["bulk_starved_s"]:.0f} s (live first)</p>')
    cycle = lim.get("cycle")
    if cycle:
        state = ("bulk paused" if cycle.get("bulk_paused") else "")
        state = "live and bulk paused" if cycle.get("live_paused") else state
        parts.append(
            f'<p data-testid="cycle">cycle: {cycle["used"]:,} of {cycle["quota"]:,} calls used; '
            f'left live {cycle["left_live"]:,}, bulk {cycle["left_bulk"]:,}; resets '
            f'{e(str(cycle["resets"]))}'
            + (f' <span class="bad">{state}</span>' if state else "") + "</p>")
    return "".join(parts)
