"""Loading records into the queue: validate, give stable ids, drop what was delivered, push.

:class:`BulkLoader` validates each record with ``Producer.prepare``, gives it a deterministic id
(:func:`derive_event_id`), drops duplicates (repeats within a chunk, and ids the delivery ledger
says were delivered), packs the rest into batch messages and pushes each chunk with one
pipelined ``LPUSH``, waiting while the queue is longer than ``max_queue``. A record in the
dead-letter export's wrapped form (``{"event_id": ..., "payload": {...}}``) is unwrapped and
keeps its event id.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import redis

from producers.bulk.records import (
    _REJECT_ECHO_LIMIT,
    DEFAULT_BATCH_SIZE,
    DEFAULT_CHUNK_SIZE,
    Record,
)
from producers.producer import Producer
from voucherify_ingest import jsoncodec
from voucherify_ingest.errors import InvalidEvent, format_messages
from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import LIVE, check_lane
from voucherify_ingest.redis_conn import broker_unavailable

_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def get_path(data: Any, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def derive_event_id(payload: Any, id_field: str | None = None) -> str:
    """The record's event id: the ``id_field`` value as is, else ``bf-`` + a content hash.

    The hash is over the record's canonical JSON (sorted keys, no whitespace), so re-reading
    the same record, in any key order or file format, gives the same id
    (``voucherify_ingest.jsoncodec``:
    orjson, or ``json`` for a record orjson cannot write, always the same for a given record).
    """
    if id_field:
        value = get_path(payload, id_field)
        if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
            raise InvalidEvent({id_field: ["--id-field: missing, empty, or not a string/integer"]})
        return str(value)
    try:
        canonical = jsoncodec.dumps(payload, sort_keys=True)
    except UnicodeEncodeError:  # an unpaired surrogate: hash it anyway, validation words it
        canonical = _canonical(payload).encode("utf-8", "surrogatepass")
    except (TypeError, ValueError):
        raise InvalidEvent({"_schema": ["event payload must be a JSON object"]}) from None
    return "bf-" + hashlib.sha256(canonical).hexdigest()[:32]


def unwrap(data: Any) -> tuple[Any, str | None]:
    """``(payload, event id or None)``; the dead-letter export's wrapped form is unwrapped."""
    if isinstance(data, dict) and "payload" in data and "event" not in data:
        event_id = data.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            raise InvalidEvent({"event_id": ["must be a string"]})
        return data["payload"], event_id or None
    return data, None


# -- loading ----------------------------------------------------------------------------------

# KEYS = {p}:delivered:{id}...; returns the 1-based indexes of the keys that exist.
_DELIVERED_LUA = """
local found = {}
for i, key in ipairs(KEYS) do
  if redis.call('EXISTS', key) == 1 then found[#found + 1] = i end
end
return found
"""


@dataclass
class Summary:
    read: int = 0
    enqueued: int = 0
    rejected: int = 0
    duplicates: int = 0
    messages: int = 0
    paused_s: float = 0.0
    elapsed_s: float = 0.0

    def line(self, dry_run: bool = False) -> str:
        rate = self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0
        verb = "valid (dry run, nothing enqueued)" if dry_run else "enqueued"
        text = (
            f"read {self.read}, {verb} {self.enqueued}, rejected {self.rejected}, "
            f"duplicates {self.duplicates} in {self.elapsed_s:.1f}s ({rate:,.0f} records/s)"
        )
        if self.paused_s >= 0.1:
            text += f"; paused {self.paused_s:.1f}s for --max-queue"
        return text


class Rejects:
    """Rejected records, one JSON line each: ``{"line", "errors", "record"|"raw"}``.

    The file is created on the first reject only; the first few are echoed to ``echo``.
    """

    def __init__(self, path: str | None, echo: IO[str] | None = None):
        self.path = path
        self.echo = echo
        self.count = 0
        self._file: IO[str] | None = None

    def add(self, line: int, errors: dict, record: Any = None, raw: str | None = None) -> None:
        self.count += 1
        if self.echo is not None and self.count <= _REJECT_ECHO_LIMIT:
            self.echo.write(f"line {line}: {format_messages(errors)}\n")
            if self.count == _REJECT_ECHO_LIMIT:
                self.echo.write(f"(further rejects only in {self.path or 'the rejects file'})\n")
        if self.path is None:
            return
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - see close()
        entry: dict[str, Any] = {"line": line, "errors": errors}
        if raw is not None:
            entry["raw"] = raw
        else:
            entry["record"] = record
        self._file.write(json.dumps(entry, ensure_ascii=False, default=repr) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class BulkLoader:
    """Validate, deduplicate and enqueue records in chunks; see the module docstring.

    ``dry_run`` validates only and never touches Redis. ``max_queue`` pauses before each chunk
    while the queue holds more than that many events (its length in messages times the batch
    size). ``check_ledger`` skips ids the delivery ledger has as delivered (one script call per
    chunk); the worker's ledger claim stops the rest.
    """

    def __init__(
        self,
        producer: Producer,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        id_field: str | None = None,
        dry_run: bool = False,
        max_queue: int | None = None,
        check_ledger: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        rejects: Rejects | None = None,
        on_chunk: Callable[[Summary], None] | None = None,
        on_pause: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        pause_poll_s: float = 0.5,
        lane: str = LIVE,
    ):
        self.producer = producer
        self.lane = check_lane(lane)
        self.queue = producer.lane_queue(self.lane)
        self.batch_size = max(1, batch_size)
        self.id_field = id_field
        self.dry_run = dry_run
        self.max_queue = max_queue
        self.check_ledger = check_ledger and not dry_run
        self.chunk_size = max(1, chunk_size)
        self.rejects = rejects or Rejects(None)
        self.on_chunk = on_chunk
        self.on_pause = on_pause
        self.sleep = sleep
        self.pause_poll_s = pause_poll_s
        self.summary = Summary()
        self.keys = Keys.from_settings(producer.settings)
        self._delivered = None if dry_run else producer.redis.register_script(_DELIVERED_LUA)

    def run(self, records: Iterable[Record]) -> Summary:
        started = time.monotonic()
        chunk: list[Record] = []
        for record in records:
            chunk.append(record)
            if len(chunk) >= self.chunk_size:
                self._load(chunk)
                chunk = []
                self.summary.elapsed_s = time.monotonic() - started
                if self.on_chunk is not None:
                    self.on_chunk(self.summary)
        if chunk:
            self._load(chunk)
        self.summary.elapsed_s = time.monotonic() - started
        return self.summary

    def _load(self, chunk: list[Record]) -> None:
        summary, prepare, reject = self.summary, self.producer.prepare, self.rejects.add
        id_field = self.id_field
        envelopes: dict[str, dict] = {}
        summary.read += len(chunk)
        for record in chunk:
            if record.error is not None:
                reject(record.line, record.error, raw=record.raw)
                continue
            try:
                payload, event_id = unwrap(record.data)
                if event_id is None:
                    event_id = derive_event_id(payload, id_field)
                event_id, envelope = prepare(payload, event_id, lane=self.lane)
            except InvalidEvent as exc:
                reject(record.line, exc.messages, record.data)
                continue
            if event_id in envelopes:
                summary.duplicates += 1
            else:
                envelopes[event_id] = envelope
        summary.rejected = self.rejects.count
        if not envelopes:
            return
        if self.dry_run:
            summary.enqueued += len(envelopes)
            return
        try:
            batch = self._drop_delivered(envelopes)
            if not batch:
                return
            messages = self.producer.messages_for(batch, self.batch_size, lane=self.lane)
            self._wait_for_room()
            with self.producer.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(messages), 1000):
                    pipe.lpush(self.queue, *messages[start : start + 1000])
                pipe.execute()
        except redis.RedisError as exc:  # down, or refusing writes (OOM, read-only replica)
            raise broker_unavailable(self.producer.settings.redis_url, exc) from None
        summary.enqueued += len(batch)
        summary.messages += len(messages)

    def _drop_delivered(self, envelopes: dict[str, dict]) -> list[dict]:
        if not self.check_ledger:
            return list(envelopes.values())
        ids = list(envelopes)
        keys = [self.keys.delivered(i) for i in ids]
        # One EXISTS counts them (C, no Lua); only a re-run pays for finding which ones.
        found = self._delivered(keys=keys) if self.producer.redis.exists(*keys) else []
        if found:
            self.summary.duplicates += len(found)
            for index in found:
                del envelopes[ids[int(index) - 1]]
        return list(envelopes.values())

    def _wait_for_room(self) -> None:
        if not self.max_queue:
            return
        limit_messages = max(1, self.max_queue // self.batch_size)
        started = None
        while True:
            length = self.producer.queue_length(self.lane)
            if length <= limit_messages:
                break
            if started is None:
                started = time.monotonic()
            if self.on_pause is not None:
                self.on_pause(length)
            self.sleep(self.pause_poll_s)
        if started is not None:
            self.summary.paused_s += time.monotonic() - started


# -- progress ---------------------------------------------------------------------------------
