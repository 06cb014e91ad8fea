"""Wake the bulk events asleep in the rate limiter's line when a live event is queued.

A bulk event refused a slot sleeps until its place in the bulk line (up to a few slot
intervals), holding its worker thread; when every thread holds one, a live event waits in its
list until some bulk event wakes and gives its thread up. At a slow limit such as 100/min that
wake-up comes about once per slot interval (0.6 s). One watcher thread per worker process looks
at the live list's length every ``interval_s`` while at least one bulk event sleeps, and wakes
the sleepers as soon as it is not empty: they give their threads up at once.

Cost: one ``LLEN`` per ``interval_s`` per worker process, only while bulk events sleep.
"""

from __future__ import annotations

import threading
import time

import redis

POLL_S = 0.05


class LiveWatch:
    def __init__(self, client: redis.Redis, live_queue: str, *, interval_s: float = POLL_S):
        self.redis = client
        self.live_queue = live_queue
        self.interval_s = interval_s
        self._live = threading.Event()  # set: a live event was queued at the last look
        self._changed = threading.Condition()
        self._sleepers = 0
        self._thread: threading.Thread | None = None

    def nap(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True at once when a live event waits (give the thread up)."""
        with self._changed:
            self._sleepers += 1
            if self._thread is None or not self._thread.is_alive():
                self._live.clear()
                self._thread = threading.Thread(target=self._watch, name="voucherify-livewatch",
                                                daemon=True)
                self._thread.start()
            self._changed.notify()
        try:
            return self._live.wait(seconds)
        finally:
            with self._changed:
                self._sleepers -= 1

    def _watch(self) -> None:
        while True:
            with self._changed:
                while self._sleepers == 0:
                    self._live.clear()
                    self._changed.wait()
            try:
                queued = bool(self.redis.llen(self.live_queue))
            except redis.RedisError:
                queued = False  # the sleepers wake on their own time, as without a watcher
            if queued:
                self._live.set()
            else:
                self._live.clear()
            time.sleep(self.interval_s)
