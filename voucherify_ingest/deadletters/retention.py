"""Retention: ``VOUCHERIFY_DLQ_MAX_AGE_S`` and ``VOUCHERIFY_DLQ_MAX_LEN``, applied by workers."""

from __future__ import annotations

import time

import redis

from voucherify_ingest.deadletters.store import DeadLetterStore
from voucherify_ingest.keys import Keys

TRIM_EVERY_S = 60.0
TRIM_MAX_PER_RUN = 10_000


class Retention:
    """``VOUCHERIFY_DLQ_MAX_AGE_S`` / ``VOUCHERIFY_DLQ_MAX_LEN`` applied from a worker's
    housekeeping thread, at most every ``TRIM_EVERY_S`` (sooner while a backlog remains)."""

    def __init__(self, dlq: DeadLetterStore, *, max_age_s: float, max_len: int,
                 every_s: float = TRIM_EVERY_S):
        self.dlq, self.max_age_s, self.max_len, self.every_s = dlq, max_age_s, max_len, every_s
        self._next = 0.0

    @classmethod
    def from_settings(cls, client: redis.Redis, settings) -> Retention | None:
        """None when both limits are 0 (the default: nothing is ever deleted automatically)."""
        if not settings.dlq_max_age_s and not settings.dlq_max_len:
            return None
        return cls(DeadLetterStore(client, Keys.from_settings(settings)),
                   max_age_s=settings.dlq_max_age_s, max_len=settings.dlq_max_len)

    def maybe_run(self) -> int:
        now = time.monotonic()
        if now < self._next:
            return 0
        dropped = self.dlq.trim(max_age_s=self.max_age_s, max_len=self.max_len,
                                max_drop=TRIM_MAX_PER_RUN)
        total = dropped["by_age"] + dropped["by_len"]
        self._next = now + (0.0 if total >= TRIM_MAX_PER_RUN else self.every_s)
        if total:
            self.dlq.log.info("dlq_trimmed", dropped=total, **dropped, max_age_s=self.max_age_s,
                              max_len=self.max_len)
        return total
