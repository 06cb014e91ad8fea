"""Measuring SIGKILL -> redelivery: how long a killed worker's messages stay out of reach.

kombu's Redis transport keeps every message a worker has taken but not acked in
``{p}:unacked`` (tag -> message) and ``{p}:unacked_index`` (tag -> delivery time, wall clock).
A message is handed out again when a live worker's restore sweep finds it older than the
visibility timeout: it leaves the index, goes back onto the queue, and returns to the index
with a new score when a worker takes it. So after a kill at time T, the killed worker's messages
are the index entries with a score <= T that are still there once a live worker has had time to
ack its own (``settle_s``); each is redelivered at the first poll where its entry is gone or
carries a newer score.
"""

from __future__ import annotations

import statistics
import threading
import time

import redis


class RedeliveryProbe(threading.Thread):
    def __init__(self, redis_url: str, unacked_index_key: str, *, settle_s: float = 1.0,
                 interval_s: float = 0.1):
        super().__init__(name="redelivery-probe", daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.key = unacked_index_key
        self.settle_s = settle_s
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._kills: list[float] = []  # wall-clock kill times not yet attributed
        self._attributed: set[tuple[bytes, float]] = set()
        self._waiting: dict[tuple[bytes, float], float] = {}  # (tag, score) -> kill time
        self.times_s: list[float] = []
        self.kills = 0
        self._stop_event = threading.Event()

    def killed(self, at_wall_s: float) -> None:
        with self._lock:
            self._kills.append(at_wall_s)
            self.kills += 1

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self._poll()
            except redis.RedisError:
                pass
            self._stop_event.wait(self.interval_s)

    def _poll(self) -> None:
        now = time.time()
        entries = dict(self.client.zrange(self.key, 0, -1, withscores=True))
        with self._lock:
            due = [t for t in self._kills if now - t >= self.settle_s]
            self._kills = [t for t in self._kills if now - t < self.settle_s]
            for kill_at in sorted(due):
                for tag, score in entries.items():
                    pair = (tag, score)
                    if score <= kill_at and pair not in self._attributed:
                        self._attributed.add(pair)
                        self._waiting[pair] = kill_at
            for (tag, score), kill_at in list(self._waiting.items()):
                if entries.get(tag) != score:
                    self.times_s.append(now - kill_at)
                    del self._waiting[(tag, score)]

    def outstanding(self) -> int:
        with self._lock:
            return len(self._waiting) + len(self._kills)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
        self.client.close()

    def __enter__(self) -> RedeliveryProbe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, object]:
        times = sorted(self.times_s)
        if not times:
            return {"kills": self.kills, "stranded": 0}
        return {
            "kills": self.kills,
            "stranded": len(times),
            "median_s": round(statistics.median(times), 2),
            "max_s": round(times[-1], 2),
            "min_s": round(times[0], 2),
        }
