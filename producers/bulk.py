"""Bulk backfills: stream records from NDJSON, a JSON array or CSV and enqueue them in chunks.

A backfill needs what a web request does not: files larger than memory, bad records that must
not stop the run (they go to a rejects file with their line number), re-runs that must not send
anything twice (deterministic event ids + the delivery ledger), and a queue that must not
outgrow Redis's memory (``max_queue`` backpressure).

Reading: :func:`open_input` (``-`` is stdin; gzip is recognised by its magic bytes, not its
name) and :func:`read_records`, which picks a reader from the first non-blank byte (``[`` a JSON
array, ``{`` NDJSON, anything else CSV) unless a format is given. Every reader yields
:class:`Record` ``(line, data, error)``; none holds more than one record in memory.

CSV columns are dotted paths into the event (``event``, ``customer.source_id``,
``metadata.plan``). A cell is a string unless its header ends in a type: ``:number`` (an int
when it looks like one, else a finite float), ``:bool`` (true/false, yes/no, 1/0) or ``:json``
(any JSON value). An empty cell is omitted from the record (send an empty string with
``:json`` and ``""``). ``metadata.total:number,metadata.vip:bool`` -> ``{"total": 12.5, ...}``.

Loading: :class:`BulkLoader` validates each record with ``Producer.prepare``, gives it a
deterministic id (:func:`derive_event_id`), drops duplicates (repeats within a chunk, and ids
the delivery ledger says were delivered), packs the rest into batch messages and pushes each
chunk with one pipelined ``LPUSH``. A record in the dead-letter export's wrapped form
(``{"event_id": ..., "payload": {...}}``) is unwrapped and keeps its event id.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import redis

from producers.producer import Producer
from voucherify_ingest import jsoncodec
from voucherify_ingest.errors import InvalidEvent, format_messages
from voucherify_ingest.keys import Keys
from voucherify_ingest.redis_conn import broker_unavailable

#: Events per batch message, chosen by measurement (see the README's backfill section):
#: past ~50 the worker's drain rate stops improving, while a bigger batch makes a killed
#: worker's message longer to redo and a batch's wait behind the rate limit longer.
DEFAULT_BATCH_SIZE = 50
#: Records validated, deduplicated and pushed per round trip.
DEFAULT_CHUNK_SIZE = 1000
FORMATS = ("auto", "ndjson", "json", "csv")
GZIP_MAGIC = b"\x1f\x8b"
_READ_CHARS = 1 << 16
_SNIFF_BYTES = 512
_REJECT_ECHO_LIMIT = 20


class BulkInputError(Exception):
    """The input cannot be read at all (unreadable file, bad CSV header)."""


@dataclass(slots=True)
class Record:
    """One record read from the input: ``data`` when it parsed, else ``error`` (messages)."""

    line: int
    data: Any = None
    error: dict[str, list[str]] | None = None
    raw: str | None = None


# -- opening the input ------------------------------------------------------------------------


class _Prefixed(io.RawIOBase):
    """Bytes already read (for sniffing) followed by the rest of a stream."""

    def __init__(self, head: bytes, rest: IO[bytes]):
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _read_head(stream: IO[bytes], want: int) -> bytes:
    parts, total = [], 0
    while total < want:
        chunk = stream.read(want - total)
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


@dataclass
class Input:
    """An opened input: a binary stream of the (decompressed) content, and how far we are."""

    stream: IO[bytes]
    name: str
    head: bytes
    total_bytes: int | None = None
    _raw: IO[bytes] | None = field(default=None, repr=False)
    _owned: list[Any] = field(default_factory=list, repr=False)

    def position(self) -> int | None:
        """Bytes of the file (compressed, when gzipped) consumed so far; None for stdin."""
        if self._raw is None or self.total_bytes is None:
            return None
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        for obj in reversed(self._owned):
            try:
                obj.close()
            except (OSError, ValueError):
                pass


def open_input(path: str) -> Input:
    """Open ``path`` (``-`` for stdin) for streaming; gunzip when it starts with gzip's magic."""
    owned: list[Any] = []
    if path == "-":
        raw: IO[bytes] = sys.stdin.buffer
        total, name, tracked = None, "stdin", None
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by Input.close
            total = os.fstat(raw.fileno()).st_size
        except OSError as exc:
            raise BulkInputError(f"cannot read {path}: {exc.strerror or exc}") from None
        owned.append(raw)
        name, tracked = path, raw
    magic = _read_head(raw, 2)
    stream: IO[bytes] = io.BufferedReader(_Prefixed(magic, raw), 1 << 16)
    if magic == GZIP_MAGIC:
        stream = gzip.GzipFile(fileobj=stream, mode="rb")
        owned.append(stream)
    head = _read_head(stream, _SNIFF_BYTES)
    stream = io.BufferedReader(_Prefixed(head, stream), 1 << 16)
    owned.append(stream)
    return Input(stream, name, head, total, tracked, owned)


def sniff_format(head: bytes) -> str:
    """``json`` when the content starts with ``[``, ``ndjson`` with ``{``, else ``csv``."""
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        return "json"
    if text.startswith(b"{"):
        return "ndjson"
    return "csv"


def read_records(source: Input, fmt: str = "auto") -> Iterator[Record]:
    if fmt == "auto":
        fmt = sniff_format(source.head)
    if fmt == "ndjson":
        return read_ndjson(source.stream)
    if fmt == "json":
        return read_json_array(_text(source.stream, "utf-8-sig"))
    if fmt == "csv":
        return read_csv(_text(source.stream, "utf-8-sig", newline=""))
    raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")


def _text(stream: IO[bytes], encoding: str, newline: str | None = None) -> io.TextIOWrapper:
    return io.TextIOWrapper(stream, encoding=encoding, errors="strict", newline=newline)


def _excerpt(text: str | bytes, limit: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


# -- readers ----------------------------------------------------------------------------------


def read_ndjson(stream: IO[bytes]) -> Iterator[Record]:
    """One JSON document per line; blank lines are skipped, a bad line is one reject."""
    loads = json.loads
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield Record(number, loads(line))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            yield Record(number, error={"_json": [f"not valid JSON: {exc}"]}, raw=_excerpt(line))


_WS = re.compile(r"[ \t\n\r]*")


def read_json_array(text: IO[str], *, max_element_chars: int = 16 << 20) -> Iterator[Record]:
    """Stream the elements of one top-level JSON array, each with the line it starts on.

    ``json.JSONDecoder.raw_decode`` over a sliding buffer: an element cut by a chunk boundary
    is decoded again once more text has arrived. A syntax error cannot be skipped past (there is
    no way to find the next element), so it is reported once and ends the reading.
    """
    decode = json.JSONDecoder().raw_decode
    buf, pos, line, counted, eof = "", 0, 1, 0, False

    def more() -> bool:
        nonlocal buf, pos, line, counted, eof
        if eof:
            return False
        chunk = text.read(_READ_CHARS)
        if not chunk:
            eof = True
            return False
        line += buf.count("\n", counted, pos)
        buf, pos, counted = buf[pos:] + chunk, 0, 0
        return True

    def skip_ws() -> str:
        """Skip whitespace; return the next character ('' at the end)."""
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()
            if pos < len(buf) or not more():
                return buf[pos : pos + 1]

    def at() -> int:
        nonlocal line, counted
        line += buf.count("\n", counted, pos)
        counted = pos
        return line

    def fail(message: str) -> Record:
        return Record(at(), error={"_json": [f"{message}; the rest of the array is not read"]})

    try:
        if skip_ws() != "[":
            yield fail("not a JSON array (expected '[')")
            return
        pos += 1
        expect_element = None  # None: first element or ']'; True: after ','; False: after one
        while True:
            char = skip_ws()
            if char == "]" and expect_element is not True:
                pos += 1
                if skip_ws():
                    yield fail("unexpected text after the closing ']'")
                return
            if expect_element is False:
                if char != ",":
                    yield fail("expected ',' or ']' between elements" if char else
                               "the array is not closed (missing ']')")
                    return
                pos += 1
                expect_element = True
                continue
            if not char:
                yield fail("the array is not closed (missing ']')")
                return
            start_line = at()
            while True:
                try:
                    value, end = decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                    if not more():  # a number or literal may go on in the next chunk
                        break
                    continue
                except json.JSONDecodeError as exc:
                    if len(buf) - pos > max_element_chars:
                        yield fail(f"an element is over {max_element_chars} characters")
                        return
                    if not more():
                        yield Record(start_line, error={"_json": [
                            f"not valid JSON: {exc.msg}; the rest of the array is not read"]})
                        return
            pos = end
            yield Record(start_line, value)
            expect_element = False
    except UnicodeDecodeError as exc:
        yield fail(f"not UTF-8 text ({exc.reason})")


_INT_RE = re.compile(r"[+-]?[0-9]+")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}


def _to_number(cell: str) -> int | float:
    text = cell.strip()
    if _INT_RE.fullmatch(text):
        return int(text)
    value = float(text)  # ValueError for junk
    if not math.isfinite(value):
        raise ValueError
    return value


def _to_bool(cell: str) -> bool:
    text = cell.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


CSV_TYPES: dict[str, tuple[Callable[[str], Any] | None, str]] = {
    "str": (None, ""),
    "number": (_to_number, "not a number"),
    "bool": (_to_bool, "not a boolean (true/false, yes/no, 1/0)"),
    "json": (json.loads, "not valid JSON"),
}


@dataclass(frozen=True)
class Column:
    name: str
    path: tuple[str, ...]
    convert: Callable[[str], Any] | None
    problem: str


def parse_header(header: list[str]) -> list[Column]:
    """Turn ``customer.source_id``, ``metadata.total:number`` ... into columns; check clashes."""
    columns, paths = [], {}
    for index, raw in enumerate(header):
        name, _, kind = raw.strip().partition(":")
        kind = kind.strip().lower() or "str"
        if kind not in CSV_TYPES:
            raise BulkInputError(
                f"CSV column {index + 1} {raw!r}: unknown type {kind!r} "
                f"(use one of :{', :'.join(CSV_TYPES)})"
            )
        path = tuple(part.strip() for part in name.split("."))
        if not all(path):
            raise BulkInputError(f"CSV column {index + 1} {raw!r}: empty name in the dotted path")
        if path in paths:
            raise BulkInputError(f"CSV columns {paths[path] + 1} and {index + 1} are both {name!r}")
        paths[path] = index
        convert, problem = CSV_TYPES[kind]
        columns.append(Column(name, path, convert, problem))
    for path, index in paths.items():
        for cut in range(1, len(path)):
            if path[:cut] in paths:
                raise BulkInputError(
                    f"CSV column {index + 1} {'.'.join(path)!r} is inside column "
                    f"{paths[path[:cut]] + 1} {'.'.join(path[:cut])!r}: use one or the other"
                )
    return columns


def read_csv(text: IO[str]) -> Iterator[Record]:
    """CSV with a header row of dotted paths (see the module docstring)."""
    reader = csv.reader(text, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = parse_header(header)
        width = len(columns)
        last_line = reader.line_num
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0]):
                continue
            if len(row) > width:
                problem = f"row has {len(row)} cells, the header has {width}"
                yield Record(start, error={"_csv": [problem]}, raw=_excerpt(",".join(row)))
                continue
            record: dict[str, Any] = {}
            errors: dict[str, list[str]] = {}
            for column, cell in zip(columns, row, strict=False):
                if cell == "":
                    continue
                value: Any = cell
                if column.convert is not None:
                    try:
                        value = column.convert(cell)
                    except ValueError:
                        errors[column.name] = [f"{column.problem}: {_excerpt(cell, 80)!r}"]
                        continue
                node = record
                for part in column.path[:-1]:
                    node = node.setdefault(part, {})
                node[column.path[-1]] = value
            if errors:
                yield Record(start, error=errors, raw=_excerpt(",".join(row)))
            else:
                yield Record(start, record)
    except csv.Error as exc:
        yield Record(reader.line_num, error={"_csv": [f"{exc}; the rest of the file is not read"]})
    except UnicodeDecodeError as exc:
        yield Record(reader.line_num + 1,
                     error={"_csv": [f"not UTF-8 text ({exc.reason}); the rest is not read"]})


# -- event ids --------------------------------------------------------------------------------

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
    ):
        self.producer = producer
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
                event_id, envelope = prepare(payload, event_id)
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
            messages = self.producer.messages_for(batch, self.batch_size)
            self._wait_for_room()
            with self.producer.redis.pipeline(transaction=False) as pipe:
                for start in range(0, len(messages), 1000):
                    pipe.lpush(self.producer.queue, *messages[start : start + 1000])
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
            length = self.producer.queue_length()
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


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """A bar with rate and ETA on a TTY (redrawn <= 10 times/s), plain lines otherwise.

    The ETA comes from the share of the file's bytes consumed (compressed bytes for gzip), so
    it needs a regular file; reading stdin shows counts and rate only.
    """

    def __init__(self, stream: IO[str], source: Input, *, tty: bool | None = None,
                 every_s: float = 10.0, width: int = 30, dry_run: bool = False):
        self.stream = stream
        self.verb = "valid" if dry_run else "enqueued"
        self.source = source
        self.tty = stream.isatty() if tty is None else tty
        self.every_s = 0.1 if self.tty else every_s
        self.width = width
        self.started = time.monotonic()
        self._last = self.started
        self._drawn = False

    def _fraction(self) -> float | None:
        position, total = self.source.position(), self.source.total_bytes
        if position is None or not total:
            return None
        return min(1.0, position / total)

    def text(self, summary: Summary, now: float) -> str:
        elapsed = max(1e-9, now - self.started)
        rate = summary.read / elapsed
        fraction = self._fraction()
        counts = (f"{summary.read:,} read, {summary.enqueued:,} {self.verb}, "
                  f"{summary.rejected:,} rejected, {summary.duplicates:,} duplicates")
        if fraction is None:
            return f"{counts}, {rate:,.0f}/s, {_clock(elapsed)} elapsed"
        eta = elapsed * (1 - fraction) / fraction if fraction > 0 else float("inf")
        eta_text = _clock(eta) if math.isfinite(eta) else "?"
        if self.tty:
            done = int(self.width * fraction)
            bar = "#" * done + "." * (self.width - done)
            return f"[{bar}] {fraction:4.0%} {counts}, {rate:,.0f}/s, ETA {eta_text}"
        return f"{fraction:.0%} {counts}, {rate:,.0f}/s, ETA {eta_text}"

    def update(self, summary: Summary, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.text(summary, now))
            self._drawn = True
        else:
            self.stream.write("progress: " + self.text(summary, now) + "\n")
        self.stream.flush()

    def paused(self, queue_length: int) -> None:
        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        message = f"paused: the queue holds {queue_length:,} messages (--max-queue)"
        if self.tty:
            self.stream.write("\r\x1b[2K" + message)
            self._drawn = True
        else:
            self.stream.write(message + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
