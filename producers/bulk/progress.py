"""The progress line of a backfill: records, rate, share of the file, pauses for room.
"""

from __future__ import annotations

import math
import time
from typing import IO

from producers.bulk.loader import Summary
from producers.bulk.readers import Input


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
