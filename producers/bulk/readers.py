"""Reading a backfill file: one record at a time, whatever the size.

:func:`open_input` (``-`` is stdin; gzip is recognised by its magic bytes, not its name) and
:func:`read_records`, which picks a reader from the first non-blank byte (``[`` a JSON array,
``{`` NDJSON, anything else CSV) unless a format is given. Every reader yields :class:`Record`
``(line, data, error)``; none holds more than one record in memory.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from producers.bulk.csvtypes import read_csv
from producers.bulk.records import (
    _READ_CHARS,
    _SNIFF_BYTES,
    FORMATS,
    GZIP_MAGIC,
    BulkInputError,
    Record,
    excerpt,
)

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


def read_ndjson(stream: IO[bytes]) -> Iterator[Record]:
    """One JSON document per line; blank lines are skipped, a bad line is one reject."""
    loads = json.loads
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield Record(number, loads(line))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
            yield Record(number, error={"_json": [_line_error(exc)]}, raw=excerpt(line))


def _line_error(exc: ValueError) -> str:
    """Where in the line JSON broke: json's own "line 2 column 1" counts within this one line
    (its newline included), which read beside the file's line number contradicted it."""
    if isinstance(exc, json.JSONDecodeError):
        where = "at the end of the line" if exc.lineno > 1 else f"at column {exc.colno}"
        return f"not valid JSON: {exc.msg} {where}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason}) at byte {exc.start + 1}"
    return f"not valid JSON: {exc}"


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
