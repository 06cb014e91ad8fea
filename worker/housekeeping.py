"""A worker's background chores: move due retries back onto the queue, and say it is alive.

One daemon thread per worker node (the main process, not each pool child). Redis outages are
logged once per outage and the loop carries on: it must outlive every reconnect.
"""

from __future__ import annotations

import threading
import time

import redis
import structlog

from voucherify_ingest.deadletters import Retention
from voucherify_ingest.keys import Keys
from voucherify_ingest.redis_conn import make_redis
from voucherify_ingest.settings import Settings
from voucherify_ingest.stats import StatsRecorder
from worker.delayed import DelayedQueue

MOVE_EVERY_S = 0.25
HEARTBEAT_EVERY_S = 5.0


class Housekeeper(threading.Thread):
    def __init__(self, settings: Settings, node: str):
        super().__init__(name="voucherify-housekeeper", daemon=True)
        self.settings = settings
        self.node = node
        self.client = make_redis(settings, timeout_s=5.0)
        self.delayed = DelayedQueue(self.client, Keys.from_settings(settings))
        self.stats = StatsRecorder(settings.key_prefix)
        self.retention = Retention.from_settings(self.client, settings)  # None: keep all
        self._stop_event = threading.Event()
        self.log = structlog.get_logger("voucherify_ingest.housekeeping")

    def run(self) -> None:
        next_beat = 0.0
        failing = False
        while not self._stop_event.is_set():
            try:
                while self.delayed.move_due(limit=500) == 500:
                    pass
                now = time.monotonic()
                if now >= next_beat:
                    self.stats.heartbeat(self.client, self.node)
                    next_beat = now + HEARTBEAT_EVERY_S
                if self.retention is not None:
                    self.retention.maybe_run()  # logs how many dead letters it dropped
                if failing:
                    self.log.info("redis_reachable_again")
                    failing = False
            except redis.RedisError as exc:
                if not failing:
                    self.log.warning("housekeeping_redis_error", error=type(exc).__name__)
                    failing = True
            self._stop_event.wait(MOVE_EVERY_S)

    def stop(self) -> None:
        self._stop_event.set()
        try:
            self.stats.forget(self.client, self.node)
        except redis.RedisError:
            pass
        self.join(timeout=2)
        self.client.close()
