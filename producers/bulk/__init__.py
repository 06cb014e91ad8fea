"""Bulk backfills: stream records from NDJSON, a JSON array or CSV and enqueue them in chunks.

A backfill needs what a web request does not: files larger than memory, bad records that must
not stop the run (they go to a rejects file with their line number), re-runs that must not send
anything twice (deterministic event ids + the delivery ledger), and a queue that must not
outgrow Redis's memory (``max_queue`` backpressure).

- ``records``: a record read from the input, the input error, the default sizes.
- ``readers``: open a file (gzip, stdin) and read NDJSON, a JSON array or CSV, one record at a time.
- ``csvtypes``: CSV headers as dotted paths with typed cells.
- ``loader``: validate, give stable ids, drop what was delivered, push in chunks.
- ``progress``: the progress line on a terminal.
"""

from producers.bulk.csvtypes import Column, parse_header, read_csv
from producers.bulk.loader import (
    BulkLoader,
    Rejects,
    Summary,
    derive_event_id,
    get_path,
    unwrap,
)
from producers.bulk.progress import Progress
from producers.bulk.readers import (
    Input,
    open_input,
    read_json_array,
    read_ndjson,
    read_records,
    sniff_format,
)
from producers.bulk.records import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    FORMATS,
    BulkInputError,
    Record,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CHUNK_SIZE",
    "FORMATS",
    "BulkInputError",
    "BulkLoader",
    "Column",
    "Input",
    "Progress",
    "Record",
    "Rejects",
    "Summary",
    "derive_event_id",
    "get_path",
    "open_input",
    "parse_header",
    "read_csv",
    "read_json_array",
    "read_ndjson",
    "read_records",
    "sniff_format",
    "unwrap",
]
