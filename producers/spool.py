"""A local spool for Redis outages: events are fsync'd to disk and drained to Redis in order.

Off unless ``VOUCHERIFY_SPOOL_DIR`` is set. When an enqueue's ``LPUSH`` fails (Redis refused or
did not answer within ``VOUCHERIFY_REDIS_TIMEOUT_S``), the ready-built Celery message goes to
the spool and the caller gets its event id. From then on, while the spool holds anything, every
enqueue goes straight to the spool (a circuit breaker: no Redis call, so no timeout paid per
request, and the order of events is kept); a daemon thread probes Redis with backoff (0.5 s,
doubling to 2 s) and drains the spool when it answers. A full spool raises ``SpoolFull``:
never a silent drop. File layout and locking: ``producers/spool_files.py``.

Appends go to the newest segment file and are fsync'd before the call returns. To drain, the
owner seals that segment (new appends start the next one), LPUSHes its records in file order
in chunks, then unlinks it. A crash between the LPUSH and the unlink re-sends the segment: the
event ids are preserved, so the worker's delivery ledger skips what was already delivered.
Once its own spool is empty the thread also drains spools that exited owners left behind in
the same directory for the same Redis.
"""

from __future__ import annotations

import atexit
import errno
import json
import os
import random
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import structlog

from producers.spool_files import (
    FORMAT,
    create_locked,
    flush_dead,
    frame,
    fsync_dir,
    new_owner,
    push_segment,
    redis_target,
    release_owner,
    write_all,
)
from voucherify_ingest.errors import BrokerUnavailable, ConfigError, SpoolFull
from voucherify_ingest.settings import Settings

PROBE_MIN_S = 0.5
PROBE_MAX_S = 2.0
CLOSE_DRAIN_S = 2.0

log = structlog.get_logger("voucherify_ingest.spool")



@dataclass
class _Segment:
    path: Path
    fd: int | None
    records: int = 0
    bytes: int = 0


class Spool:
    """The spool of one producer in one process. Thread-safe; reset in a forked child."""

    def __init__(
        self, directory: str | os.PathLike[str], *, client: redis.Redis, queue: str,
        max_bytes: int, target: str, probe_min_s: float = PROBE_MIN_S,
        probe_max_s: float = PROBE_MAX_S,
    ):
        self.directory = Path(directory)
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            writable = os.access(self.directory, os.W_OK | os.X_OK)
        except OSError as exc:
            writable, why = False, exc.strerror
        else:
            why = "not writable"
        if not writable:  # fail at start-up, not at the first outage
            raise ConfigError(f"VOUCHERIFY_SPOOL_DIR={self.directory} cannot be used ({why})")
        self.client = client
        self.queue = queue
        self.max_bytes = max_bytes
        self.target = target
        self.probe_min_s = probe_min_s
        self.probe_max_s = probe_max_s
        self._reset()
        _spools.add(self)
        if any(p.name.endswith(".seg") for p in self.directory.iterdir()):
            self._ensure_thread()  # a process that exited left events here: adopt them
            self._wake.set()

    @classmethod
    def for_settings(cls, settings: Settings, client: redis.Redis) -> Spool:
        return cls(
            settings.spool_dir, client=client, queue=settings.queue,
            max_bytes=settings.spool_max_bytes, target=redis_target(settings.redis_url),
        )

    def _reset(self) -> None:
        """Fresh state: at start, and in a forked child (the parent's records stay the parent's)."""
        self.owner = new_owner()
        self._lock = threading.Lock()  # guards the fields below and every file write
        self._drain_lock = threading.Lock()  # one drain at a time (thread, close())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock_fd: int | None = None
        self._active: _Segment | None = None
        self._sealed: deque[_Segment] = deque()
        self._seq = 0
        self._records = 0
        self._bytes = 0
        self._offsets: dict[Path, int] = {}
        self._adopt = True  # look for dead owners' spools once our own is empty

    # -- state --------------------------------------------------------------------------

    @property
    def pending(self) -> bool:
        """True while events wait on disk: enqueues then bypass Redis (order, no timeouts)."""
        return self._records > 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "owner": self.owner, "records": self._records, "bytes": self._bytes,
                "segments": len(self._sealed) + (self._active is not None),
            }

    # -- append -------------------------------------------------------------------------

    def append(self, messages: Sequence[str]) -> None:
        """Store ready-built messages durably (fsync'd) before returning; wake the drainer."""
        if not messages:
            return
        data = b"".join(frame(m) for m in messages)
        with self._lock:
            header = b"" if self._active is not None else self._header()
            if self._bytes + len(header) + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"the spool in {self.directory} holds {self._bytes} bytes and this event "
                    f"needs {len(header) + len(data)} more, over VOUCHERIFY_SPOOL_MAX_BYTES="
                    f"{self.max_bytes}; the event was NOT stored (Redis at {self.target} is "
                    "unreachable)"
                )
            was_empty = self._records == 0
            segment = self._active
            try:
                if segment is None:
                    segment = self._open_segment()
                write_all(segment.fd, header + data)
                os.fsync(segment.fd)
                if header:
                    fsync_dir(self.directory)
            except OSError as exc:
                if segment is not None:
                    self._abandon_active(segment)
                raise self._write_failed(exc) from None
            segment.records += len(messages)
            segment.bytes += len(header) + len(data)
            self._records += len(messages)
            self._bytes += len(header) + len(data)
            self._ensure_thread()
        if was_empty:
            log.warning("spool_in_use", dir=str(self.directory), owner=self.owner,
                        redis=self.target)
        self._wake.set()

    def _write_failed(self, exc: OSError) -> Exception:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return SpoolFull(
                f"the spool disk is full ({exc.strerror}); the event was NOT stored"
            )
        return BrokerUnavailable(
            f"Redis at {self.target} is unreachable and the spool in {self.directory} could "
            f"not store the event ({type(exc).__name__}: {exc.strerror}); it was NOT stored"
        )

    def _header(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "queue": self.queue, "redis": self.target, "pid": os.getpid(),
            "host": socket.gethostname(), "created": time.time(),
        }).encode() + b"\n"

    def _open_segment(self) -> _Segment:
        if self._lock_fd is None:
            self._lock_fd = create_locked(self.directory / f"{self.owner}.lock")
            if self._lock_fd is None:
                raise BrokerUnavailable(f"spool owner {self.owner} already exists")
        self._seq += 1
        path = self.directory / f"{self.owner}.{self._seq:06d}.seg"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        self._active = _Segment(path, fd)
        return self._active

    def _abandon_active(self, segment: _Segment) -> None:
        """After a failed write: cut the file back to its last good record and seal it."""
        try:
            os.ftruncate(segment.fd, segment.bytes)
        except OSError:
            pass  # a torn tail is skipped by the reader anyway; nothing follows it now
        self._seal_active()
        if segment.records == 0:
            self._sealed.remove(segment)
            segment.path.unlink(missing_ok=True)

    def _seal_active(self) -> None:
        segment = self._active
        if segment is not None:
            os.close(segment.fd)
            segment.fd = None
            self._sealed.append(segment)
            self._active = None

    # -- drain --------------------------------------------------------------------------

    def drain(self) -> int:
        """Push everything spooled so far to Redis, in order; return the count pushed.

        Raises redis errors (what was pushed stays pushed; the rest waits for the next try).
        """
        pushed = 0
        with self._drain_lock:
            with self._lock:
                self._seal_active()
                batch = list(self._sealed)
            for segment in batch:
                result = push_segment(
                    self.client, segment.path, start=self._offsets.get(segment.path, 0),
                    progress=lambda offset, p=segment.path: self._offsets.__setitem__(p, offset),
                )
                pushed += result.pushed
                with self._lock:
                    segment.path.unlink()
                    self._offsets.pop(segment.path, None)
                    self._sealed.remove(segment)
                    self._records -= segment.records
                    self._bytes -= segment.bytes
            if batch:
                fsync_dir(self.directory)
        if pushed:
            log.info("spool_drained", pushed=pushed, owner=self.owner, left=self._records)
        return pushed

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()  # each thread its own: an old one may still be busy
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name="voucherify-spool", daemon=True
            )
            self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        """Probe Redis with backoff while anything is spooled; drain when it answers."""
        delay = self.probe_min_s
        failed = True  # we only get here because Redis just failed: give it a moment
        while True:
            self._wake.wait()
            if stop.is_set():
                return
            self._wake.clear()
            if not self.pending and not self._adopt:
                continue
            if failed and stop.wait(delay * (0.5 + random.random() / 2)):
                return
            try:
                self.client.ping()
                self.drain()
                if not self.pending and self._adopt:
                    self._adopt_dead()
            except (redis.ConnectionError, redis.TimeoutError):
                delay = min(delay * 2, self.probe_max_s) if failed else self.probe_min_s
                failed = True  # logged once per outage by append(), not per probe
                self._wake.set()
                continue
            except Exception as exc:  # never let the drainer die: the events are on disk
                failed, delay = True, self.probe_max_s
                log.error("spool_drain_error", error=f"{type(exc).__name__}: {exc}")
                self._wake.set()
                continue
            failed, delay = False, self.probe_min_s
            if self.pending:
                self._wake.set()  # events arrived while draining

    def _adopt_dead(self) -> None:
        """Once per spool: drain what owners that exited left here for this same Redis."""
        for report in flush_dead(self.client, self.directory, target=self.target,
                                 skip=self.owner):
            if report.pushed:
                log.info("spool_adopted", owner=report.owner, pushed=report.pushed)
        self._adopt = False

    # -- shutdown and fork --------------------------------------------------------------

    def close(self, drain_timeout_s: float = CLOSE_DRAIN_S) -> None:
        """Stop the thread, try one last drain, release the lock (leaving any rest on disk)."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(drain_timeout_s)
        if self.pending:
            try:
                self.drain()
            except (redis.RedisError, OSError) as exc:  # down, or refusing writes (OOM...)
                log.warning("spool_left_on_disk", records=self._records, dir=str(self.directory),
                            owner=self.owner, error=type(exc).__name__,
                            hint="voucherify-ingest spool flush")
        with self._lock:
            self._seal_active()
            if self._lock_fd is not None and not self._sealed:
                release_owner(self.directory, self.owner, self._lock_fd)
                self._lock_fd = None
            elif self._lock_fd is not None:
                os.close(self._lock_fd)  # dead from now on: `spool flush` may take it
                self._lock_fd = None
                self._sealed.clear()
                self._records = self._bytes = 0
                self.owner = new_owner()
            self._thread = None

    def _after_fork_in_child(self) -> None:
        # The inherited descriptors share the parent's flock; close ours (the parent keeps
        # its lock) and start an empty spool of our own under a new owner name.
        for fd in [self._lock_fd, self._active.fd if self._active else None]:
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._reset()


_spools: weakref.WeakSet[Spool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for spool in list(_spools):
        spool._after_fork_in_child()


def _close_all_at_exit() -> None:
    for spool in list(_spools):
        spool.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_all_at_exit)
