"""The spool's files: format, per-owner locks, and draining what exited owners left behind.

Used by the live ``producers.spool.Spool`` and by ``voucherify-ingest spool flush|status``.

Files, all mode 0600 in the spool directory (one owner = one ``Spool`` in one process)::

    {owner}.lock                flock'd (LOCK_EX) by the live owner for as long as it runs
    {owner}.{seq:06d}.seg       a segment: one JSON header line (format, queue, redis target,
                                pid, host), then records ``{crc32:08x} {message JSON}\\n``
    {owner}.{seq:06d}.corrupt   lines that failed their CRC, kept for a human (never dropped)

``{owner}`` is ``{host}-{pid}-{random}``. An owner whose lock file can be locked is dead (the
kernel drops a flock when its process exits, however it exits). A lock file is created already
locked (a locked temp file, then ``link``), so no one sees it unlocked while its owner lives.
A record torn by a crash mid-write was never acknowledged to a caller and is skipped.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

FORMAT = "voucherify-spool/1"
CHUNK_RECORDS = 1000
CHUNK_BYTES = 1 << 20
READ_BLOCK = 1 << 20


def redis_target(url: str) -> str:
    """``scheme://host:port/db`` of a Redis URL: what a spool was meant for, no credentials."""
    if url.startswith("sentinel://"):  # the sentinels (any order) and the database
        hosts, db = [], "0"
        for part in filter(None, (p.strip() for p in url.split(";"))):
            sentinel = urlsplit(part)
            hosts.append(f"{sentinel.hostname}:{sentinel.port or 26379}")
            db = sentinel.path.strip("/") or db
        return f"sentinel://{','.join(sorted(hosts))}/{db}"
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    db = parts.path.strip("/") or "0"
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}/{db}"


def new_owner() -> str:
    host = "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())
    return f"{host[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def frame(message: str) -> bytes:
    data = message.encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(data), data)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# -- reading and pushing segments -----------------------------------------------------------


def _parse_header(first: bytes) -> tuple[str, dict[str, Any] | None]:
    if not first.endswith(b"\n"):
        return "torn", None
    try:
        header = json.loads(first)
    except ValueError:
        return "corrupt", None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        return "foreign", header if isinstance(header, dict) else None
    return "ok", header


def read_header(path: Path) -> tuple[str, dict[str, Any] | None]:
    """``("ok", header)``, ``("torn", None)`` (died at creation, nothing was acknowledged),
    ``("corrupt", None)`` or ``("foreign", header)`` (another format: leave it alone)."""
    with open(path, "rb") as fh:
        return _parse_header(fh.readline())


@dataclass
class SegmentReader:
    """Reads one segment: its header, then ``(end_offset, message)`` for each intact record."""

    path: Path
    header: dict[str, Any] | None = None
    torn: int = 0
    corrupt: list[bytes] = field(default_factory=list)

    def records(self, start: int = 0) -> Iterator[tuple[int, bytes]]:
        with open(self.path, "rb") as fh:
            kind, header = _parse_header(fh.readline())
            if kind != "ok":
                return  # flush_dead decides what to do with such a file
            self.header = header
            offset = max(start, fh.tell())
            fh.seek(offset)
            rest = b""
            while block := fh.read(READ_BLOCK):
                lines = (rest + block).split(b"\n")
                rest = lines.pop()
                for line in lines:
                    offset += len(line) + 1
                    crc, _, message = line.partition(b" ")
                    if len(crc) == 8 and crc == b"%08x" % zlib.crc32(message):
                        yield offset, message
                    else:
                        self.corrupt.append(line + b"\n")
            if rest:
                self.torn += 1  # the writer died mid-append: never acknowledged


@dataclass
class PushResult:
    pushed: int = 0
    torn: int = 0
    corrupt: int = 0
    queue: str | None = None


def push_segment(client: redis.Redis, path: Path, *, start: int = 0, progress=None) -> PushResult:
    """LPUSH a segment's records onto its queue in file order, in chunks; keep corrupt lines.

    ``progress(offset)`` is called after each chunk so a retry can resume after it. Raises
    redis errors; the segment file is left as it was (the caller unlinks it on success).
    """
    reader = SegmentReader(path)
    result = PushResult()
    chunk: list[bytes] = []
    size = 0

    def flush(offset: int) -> None:
        if chunk:
            client.lpush(result.queue, *chunk)
            result.pushed += len(chunk)
            chunk.clear()
        if reader.corrupt:
            _keep_corrupt(path, reader.corrupt)
            result.corrupt += len(reader.corrupt)
            reader.corrupt.clear()
        if progress is not None:
            progress(offset)

    offset = start
    for offset, message in reader.records(start):
        result.queue = reader.header["queue"]
        chunk.append(message)
        size += len(message)
        if len(chunk) >= CHUNK_RECORDS or size >= CHUNK_BYTES:
            flush(offset)
            size = 0
    if chunk or reader.corrupt:
        flush(offset)
    result.torn = reader.torn
    return result


def _keep_corrupt(path: Path, lines: list[bytes]) -> None:
    with open(path.with_suffix(".corrupt"), "ab", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())


# -- owners and their locks -----------------------------------------------------------------


def _segments(directory: Path, owner: str) -> list[Path]:
    """An owner's segments, oldest first."""
    found = directory.glob(f"{owner}.[0-9]*.seg")
    return sorted(found, key=lambda p: int(p.name[: -len(".seg")].rsplit(".", 1)[1]))


def list_owners(directory: Path) -> list[str]:
    """Owners with a lock file or segments in ``directory``."""
    owners = set()
    for path in directory.iterdir():
        name = path.name
        if name.startswith("."):
            continue
        if name.endswith(".lock"):
            owners.add(name[: -len(".lock")])
        elif name.endswith(".seg"):
            owners.add(name[: -len(".seg")].rsplit(".", 1)[0])
    return sorted(owners)


def create_locked(path: Path) -> int | None:
    """Create ``path`` already flock'd (via a locked temp file and ``link``); None if it exists."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.link(tmp, path)
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        os.unlink(tmp)
    return fd


def lock_owner(directory: Path, owner: str) -> int | None:
    """Lock a dead owner's spool; None while its process (or another flush) holds it."""
    path = directory / f"{owner}.lock"
    for _ in range(5):
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            fd = create_locked(path)  # segments whose lock file is gone
            if fd is not None:
                return fd
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # a flush removed it meanwhile: look again
    return None


def release_owner(directory: Path, owner: str, fd: int) -> None:
    """Drop the lock; remove the lock file when the owner has nothing left on disk."""
    try:
        if not _segments(directory, owner):
            (directory / f"{owner}.lock").unlink(missing_ok=True)
    finally:
        os.close(fd)


@dataclass
class OwnerReport:
    owner: str
    state: str  # "flushed", "empty", "live", "other-redis", "foreign"
    pushed: int = 0
    torn: int = 0
    corrupt: int = 0
    queues: list[str] = field(default_factory=list)
    detail: str = ""


def flush_dead(
    client: redis.Redis, directory: Path, *, target: str, force: bool = False,
    skip: str | None = None,
) -> list[OwnerReport]:
    """Drain every dead owner's spool in ``directory`` to ``client``, segment by segment.

    Spools written for another Redis (by target) are left alone unless ``force``. Raises
    redis errors; what was pushed before the error is already gone from the disk.
    """
    reports = []
    for owner in list_owners(directory):
        if owner == skip:
            continue
        fd = lock_owner(directory, owner)
        if fd is None:
            reports.append(OwnerReport(owner, "live"))
            continue
        try:
            reports.append(_flush_owner(client, directory, owner, target=target, force=force))
        finally:
            release_owner(directory, owner, fd)
    return reports


def _flush_owner(
    client: redis.Redis, directory: Path, owner: str, *, target: str, force: bool
) -> OwnerReport:
    report = OwnerReport(owner, "empty")
    for seg in _segments(directory, owner):
        kind, header = read_header(seg)
        if kind == "foreign":
            report.state = "foreign"
            report.detail = f"{seg.name} is not a {FORMAT} file; left alone"
            return report
        if kind == "corrupt":
            seg.rename(seg.with_suffix(".corrupt"))
            report.corrupt += 1
            continue
        if kind == "ok" and header["redis"] != target and not force:
            report.state = "other-redis"
            report.detail = f"spooled for {header['redis']}, not {target}"
            return report
        result = push_segment(client, seg)
        seg.unlink()
        report.state = "flushed"
        report.pushed += result.pushed
        report.torn += result.torn
        report.corrupt += result.corrupt
        if result.queue and result.queue not in report.queues:
            report.queues.append(result.queue)
    fsync_dir(directory)
    return report


def _is_live(lock_path: Path) -> bool:
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def spool_status(directory: Path) -> list[dict[str, Any]]:
    """One row per owner: live or dead, segments, records and bytes waiting, oldest file."""
    rows = []
    for owner in list_owners(directory):
        live = _is_live(directory / f"{owner}.lock")
        segs = _segments(directory, owner)
        records = 0
        size = 0
        queues: list[str] = []
        for seg in segs:
            data = seg.read_bytes()
            size += len(data)
            records += max(data.count(b"\n") - 1, 0)
            header = data.split(b"\n", 1)[0]
            try:
                queue = json.loads(header).get("queue")
            except ValueError:
                queue = None
            if queue and queue not in queues:
                queues.append(queue)
        oldest = min((s.stat().st_mtime for s in segs), default=None)
        rows.append({
            "owner": owner, "live": live, "segments": len(segs), "records": records,
            "bytes": size, "queues": queues,
            "oldest": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(oldest)) if oldest else None,
        })
    return rows
