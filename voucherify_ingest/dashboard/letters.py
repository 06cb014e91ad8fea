"""The dead-letter page's reads and the operator's actions, over ``DeadLetterQueue``.

Filters arrive as query or form fields (reason, status, event, since, until, q). ``q`` is an
event id (one HGET) or a customer ``source_id``; the store has no index by customer, so that
search walks pages newest first with a bounded budget per request and hands back a cursor to
go on from where it stopped.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import IO, Any

from voucherify_ingest.deadletters import REASONS, DeadLetterQueue
from voucherify_ingest.lanes import BULK

PAGE_ROWS = 50
SEARCH_BUDGET = 5_000  # entries one source_id search request reads before it returns a cursor
CHUNK_MAX = 500  # a sparse search reads up to this many entries per round trip
_AGO = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

#: Replays go on the bulk lane, as `dlq replay` does: a replay is a backlog and must not
#: delay live events.
REPLAY_LANE = BULK


class BadFilter(ValueError):
    """A filter field the page cannot use; the message names it."""


def parse_when(name: str, text: str, now_s: float | None = None) -> float:
    """``2h`` ago, an ISO time (UTC unless it says otherwise; what a datetime-local input
    sends), or epoch seconds."""
    raw = text.strip()
    ago = _AGO.match(raw.lower())
    if ago:
        return (time.time() if now_s is None else now_s) - float(ago[1]) * _UNIT_S[ago[2]]
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise BadFilter(f"{name}: {text!r} is not a time (2h, 7d, 2024-05-01T10:00)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


@dataclass
class Query:
    """The filters as the page shows them (``fields``) and as the store takes them."""

    fields: dict[str, str] = field(default_factory=dict)
    reason: str | None = None
    status: str | None = None
    event: str | None = None
    since: float | None = None
    until: float | None = None
    q: str | None = None

    @classmethod
    def parse(cls, params: dict[str, str]) -> Query:
        shown = {k: params[k].strip() for k in ("reason", "status", "event", "since", "until", "q")
                 if params.get(k, "").strip()}
        out = cls(fields=shown)
        reason = shown.get("reason")
        if reason is not None and reason not in REASONS:
            raise BadFilter(f"reason: one of {', '.join(REASONS)}")
        status = shown.get("status")
        if status is not None:
            status = status.lower()
            if status != "none" and not (status.isdigit() and 100 <= int(status) <= 599):
                raise BadFilter("status: an HTTP status such as 400, or 'none'")
        out.reason, out.status, out.event = reason, status, shown.get("event")
        out.since = parse_when("since", shown["since"]) if "since" in shown else None
        out.until = parse_when("until", shown["until"]) if "until" in shown else None
        out.q = shown.get("q")
        return out

    def store_filters(self) -> dict[str, Any]:
        found = {"reason": self.reason, "status": self.status, "event": self.event,
                 "since": self.since, "until": self.until}
        return {k: v for k, v in found.items() if v is not None}

    @property
    def cheap_to_count(self) -> bool:
        return self.q is None and self.status is None and self.event is None


@dataclass
class Listing:
    entries: list[dict[str, Any]]
    next_cursor: str | None
    matching: int | None  # None: not counted (costly filter); the confirm step counts


class Letters:
    """Reads and actions for the page; every action returns the count it touched."""

    def __init__(self, dlq: DeadLetterQueue):
        self.dlq = dlq

    def page(self, query: Query, cursor: str | None = None, rows: int = PAGE_ROWS) -> Listing:
        if query.q:
            return self._search(query, cursor, rows)
        filters = self._narrowed(query)
        page = self.dlq.list(limit=rows, cursor=cursor or None, **filters)
        matching = self.dlq.matching(**filters) if query.cheap_to_count else None
        return Listing(page.entries, page.next_cursor, matching)

    def _narrowed(self, query: Query) -> dict[str, Any]:
        """A status held under one reason only (per the exact counts) walks that reason's
        index instead of all entries: a rare status is then found without reading the rest."""
        filters = query.store_filters()
        if query.status is None or query.reason is not None:
            return filters
        stats = self.dlq.stats()
        if not stats["counts_exact"]:
            return filters
        holding = [reason for reason, statuses in stats["by_reason_status"].items()
                   if statuses.get(query.status)]
        if len(holding) == 1 and holding[0] in REASONS:
            filters["reason"] = holding[0]
        return filters

    def _search(self, query: Query, cursor: str | None, rows: int) -> Listing:
        if not cursor:
            by_id = self.dlq.list(ids=(query.q,), limit=1, **query.store_filters()).entries
            if by_id:
                return Listing(by_id, None, 1)
        found: list[dict[str, Any]] = []
        scanned, chunk = 0, rows
        while len(found) < rows and scanned < SEARCH_BUDGET:
            page = self.dlq.list(limit=chunk, cursor=cursor or None, **query.store_filters())
            scanned += len(page.entries)
            hits = [e for e in page.entries if source_id_of(e) == query.q]
            found.extend(hits)
            cursor = page.next_cursor
            if cursor is None:
                break
            if len(hits) * 4 < chunk:  # sparse: read bigger chunks (fewer round trips)
                chunk = min(CHUNK_MAX, chunk * 2)
        return Listing(found, cursor, None)

    def count(self, query: Query, *, for_replay: bool) -> int:
        """How many entries an action over the filter takes now. Replay leaves ``invalid``
        entries alone unless the filter asks for them (as ``DeadLetterQueue.replay`` does)."""
        filters = query.store_filters()
        if query.q:
            return len(self._ids_matching(query, time.time(), for_replay=for_replay))
        n = self.dlq.matching(**filters)
        if for_replay and query.reason is None:
            n -= self.dlq.matching(**filters, reason="invalid")
        return n

    def iter_matching(self, query: Query):
        for entry in self.dlq.iter_entries(**query.store_filters()):
            if not query.q or entry.get("id") == query.q or source_id_of(entry) == query.q:
                yield entry

    def _ids_matching(self, query: Query, until: float, *, for_replay: bool) -> list[str]:
        skip_invalid = for_replay and query.reason != "invalid"
        return [e["id"] for e in self.iter_matching(query)
                if e.get("last_failed_ts", 0) <= until
                and not (skip_invalid and e.get("reason") == "invalid")]

    def replay(self, *, ids: list[str] | None = None, query: Query | None = None,
               until: float | None = None) -> int:
        if ids:
            return self.dlq.replay(ids=tuple(ids), lane=REPLAY_LANE).replayed
        assert query is not None
        until = _cap(query.until, until)
        if query.q:
            ids = self._ids_matching(query, until, for_replay=True)
            return self.dlq.replay(ids=tuple(ids), lane=REPLAY_LANE).replayed if ids else 0
        return self.dlq.replay(**{**query.store_filters(), "until": until},
                               lane=REPLAY_LANE).replayed

    def purge(self, *, ids: list[str] | None = None, query: Query | None = None,
              until: float | None = None) -> int:
        if ids:
            return self.dlq.purge(ids=tuple(ids))
        assert query is not None
        until = _cap(query.until, until)
        if query.q:
            ids = self._ids_matching(query, until, for_replay=False)
            return self.dlq.purge(ids=tuple(ids)) if ids else 0
        return self.dlq.purge(**{**query.store_filters(), "until": until})

    def export(self, query: Query, out: IO[str]) -> int:
        if not query.q:
            return self.dlq.export(out, **query.store_filters())
        from voucherify_ingest.deadletters import export_record
        from voucherify_ingest.jsoncodec import dumps_text

        written = 0
        for entry in self.iter_matching(query):
            out.write(dumps_text(export_record(entry)) + "\n")
            written += 1
        return written


def source_id_of(entry: dict[str, Any]) -> str | None:
    payload = entry.get("payload")
    customer = payload.get("customer") if isinstance(payload, dict) else None
    value = customer.get("source_id") if isinstance(customer, dict) else None
    return value if isinstance(value, str) else None


def _cap(until: float | None, seen_at: float | None) -> float:
    """Only entries that failed by the time the operator saw the count (and the filter's end)."""
    limits = [t for t in (until, seen_at) if t is not None]
    return min(limits) if limits else time.time()
