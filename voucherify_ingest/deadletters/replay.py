"""Operator actions over the store: replay onto the ingest queue, and NDJSON export.

``DeadLetterQueue`` is the store plus these actions; the worker only ever needs the store
(``DeadLetterStore``), so delivery code does not carry the replay machinery.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from voucherify_ingest.deadletters.entries import DeadLetterFilter, ReplayResult, export_record
from voucherify_ingest.deadletters.store import PAGE_SIZE, DeadLetterStore
from voucherify_ingest.jsoncodec import dumps_text as _dumps
from voucherify_ingest.lanes import LIVE, check_lane
from voucherify_ingest.messages import event_message, make_envelope


class DeadLetterQueue(DeadLetterStore):
    """The dead-letter store with the operator's actions: replay and export."""

    def export(self, out: IO[str], *, limit: int | None = None, **filters) -> int:
        """Write matching entries to ``out`` as NDJSON (:func:`export_record`), oldest first."""
        written = 0
        for entry in self.iter_entries(limit=limit, **filters):
            out.write(_dumps(export_record(entry)) + "\n")
            written += 1
        return written

    def message_for(self, entry: dict[str, Any], lane: str = LIVE) -> str:
        """The Celery message a replay enqueues: original id and first-enqueued time, attempt 0,
        on ``lane`` (``dlq replay`` passes bulk: a replay is a backlog, it must not delay live
        events; the library's default stays live, as before lanes)."""
        envelope = make_envelope(entry["payload"], entry["id"], attempt=0,
                                 enqueued_at=entry.get("first_enqueued_at"), lane=lane)
        return event_message(envelope, self.keys.lane_queue(lane))

    def replay(
        self, *, limit: int | None = None, chunk_size: int = PAGE_SIZE, dry_run: bool = False,
        rate_per_s: float = 0.0, on_progress: Callable[[int], None] | None = None,
        include_invalid: bool | None = None, lane: str = LIVE, **filters,
    ) -> ReplayResult:
        """Move matching entries back onto the ingest queue, oldest first, one atomic script per
        chunk. ``invalid`` entries are left alone unless asked for (``reason="invalid"``,
        ``ids``, or ``include_invalid``): the same payload would only fail validation again."""
        if include_invalid is None:
            include_invalid = filters.get("reason") == "invalid" or bool(filters.get("ids"))
        if filters.get("until") is None and not filters.get("ids"):
            filters["until"] = time.time()  # entries failing again meanwhile wait for next time
        lane = check_lane(lane)
        queue = self.keys.lane_queue(lane)
        flt = DeadLetterFilter.of(**filters, skip_invalid=not include_invalid)
        result = ReplayResult(dry_run=dry_run)
        started = time.monotonic()

        moved = 0

        def settle(ids: list[str], pending: Future) -> None:
            nonlocal moved
            done = pending.result()
            result.replayed += len(done)
            result.gone += len(ids) - len(done)
            moved += len(ids)
            if on_progress is not None:
                on_progress(len(ids))
            if rate_per_s > 0:
                ahead = moved / rate_per_s - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)

        def act(rows):
            result.matched += len(rows)
            if dry_run:
                result.sample_ids.extend(r[0] for r in rows[: max(0, 100 - len(result.sample_ids))])
                return []
            # One chunk's script runs while the next chunk's messages are built; scripts run
            # one at a time, in order, and the page is finished before the next is read.
            previous = None
            for start in range(0, len(rows), chunk_size):
                part = rows[start:start + chunk_size]
                ids = [r[0] for r in part]
                messages = [self.message_for(r[2], lane) for r in part]
                current = (ids, mover.submit(self._remove_ids, ids, messages, top=flt.until,
                                             queue=queue))
                if previous is not None:
                    settle(*previous)
                previous = current
            if previous is not None:
                settle(*previous)
            return [r[0] for r in rows]  # none of them is in the index any more, whoever took them

        chunk_size = max(1, int(chunk_size))
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dlq-replay") as mover:
            if flt.ids:
                self._by_ids(flt, act, limit, chunk_size * 4)
            else:
                self._walk(flt, act, newest_first=False, limit=limit, page_size=chunk_size * 4,
                           load=True)
        return result
