"""CSV records: dotted column paths and typed cells.

Columns are dotted paths into the event (``event``, ``customer.source_id``, ``metadata.plan``).
A cell is a string unless its header ends in a type: ``:number`` (an int when it looks like one,
else a finite float), ``:bool`` (true/false, yes/no, 1/0) or ``:json`` (any JSON value). An
empty cell is omitted from the record (send an empty string with ``:json`` and ``""``).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from producers.bulk.records import BulkInputError, Record, excerpt

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
                yield Record(start, error={"_csv": [problem]}, raw=excerpt(",".join(row)))
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
                        errors[column.name] = [f"{column.problem}: {excerpt(cell, 80)!r}"]
                        continue
                node = record
                for part in column.path[:-1]:
                    node = node.setdefault(part, {})
                node[column.path[-1]] = value
            if errors:
                yield Record(start, error=errors, raw=excerpt(",".join(row)))
            else:
                yield Record(start, record)
    except csv.Error as exc:
        yield Record(reader.line_num, error={"_csv": [f"{exc}; the rest of the file is not read"]})
    except UnicodeDecodeError as exc:
        yield Record(reader.line_num + 1,
                     error={"_csv": [f"not UTF-8 text ({exc.reason}); the rest is not read"]})


# -- event ids --------------------------------------------------------------------------------

