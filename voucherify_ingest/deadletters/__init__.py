"""The dead-letter store and what operators do with it.

- ``entries``: what an entry holds, its export shape, the filters.
- ``store``: the Redis store (add, get, list, stats, purge, trim), two Lua scripts.
- ``replay``: replay onto the ingest queue and NDJSON export (``DeadLetterQueue``).
- ``retention``: the age and length limits workers apply.
"""

from voucherify_ingest.deadletters.entries import (
    HOSTNAME,
    REASONS,
    DeadLetterFilter,
    Page,
    ReplayResult,
    export_record,
    make_entry,
    status_label,
)
from voucherify_ingest.deadletters.replay import DeadLetterQueue
from voucherify_ingest.deadletters.retention import TRIM_EVERY_S, TRIM_MAX_PER_RUN, Retention
from voucherify_ingest.deadletters.store import PAGE_SIZE, DeadLetterStore

__all__ = [
    "HOSTNAME",
    "PAGE_SIZE",
    "REASONS",
    "TRIM_EVERY_S",
    "TRIM_MAX_PER_RUN",
    "DeadLetterFilter",
    "DeadLetterQueue",
    "DeadLetterStore",
    "Page",
    "ReplayResult",
    "Retention",
    "export_record",
    "make_entry",
    "status_label",
]
