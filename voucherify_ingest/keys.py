"""The Redis key layout, in one place.

Everything this project stores lives under ``{prefix}:`` (``VOUCHERIFY_KEY_PREFIX``, default
``vi``) except the ingest queue itself, which is a plain Redis list named after the queue
(``VOUCHERIFY_QUEUE``) because Celery's Redis transport consumes it by that name.

=============================  ======  ===========================================================
key                            type    what
=============================  ======  ===========================================================
``{queue}``                    list    the ``live`` lane (Celery/kombu messages, JSON)
``{queue}.bulk``               list    the ``bulk`` lane (``voucherify_ingest/lanes.py``)
``{p}:delayed``                zset    live messages waiting for a retry/backoff; score = due ms
``{p}:delayed:bulk``           zset    the same for the bulk lane
``{p}:dlq:entries``            hash    dead-letter id -> entry JSON
``{p}:dlq:index``              zset    dead-letter id -> last-failed epoch s (listing by time)
``{p}:dlq:reason:{reason}``    zset    the same, per reason (cheap filtered listing)
``{p}:dlq:counts``             hash    ``{reason}|{status}`` -> entries (stats without scans)
``{p}:delivered:{event_id}``   string  delivery ledger: set after a 200, expires after the TTL
``{p}:inflight:{event_id}``    string  a worker is sending this event now (short TTL)
``{p}:rl:{h}``                 string  GCRA theoretical arrival time, epoch us (Redis time)
``{p}:rl:{h}:cooldown``        string  shared cool-down after a 429, until epoch us
``{p}:rl:{h}:parked``          string  place in line of the last event parked for a slot
``{p}:rl:{h}:bulkline``        string  place in line of the last bulk event told to wait
``{p}:rl:{h}:credit``          string  bulk's minimum-share credit (lanes)
``{p}:rl:{h}:starved``         string  epoch us since when bulk has had no slot (lanes)
``{p}:rl:{h}:reserve``         string  reserve pause until epoch us (``VOUCHERIFY_RATE_RESERVE``)
``{p}:rl:{h}:cycle:{start}``   hash    calls counted this billing cycle (``cycle.py``)
``{p}:rl:{h}:cycle_blocked``   string  the API said the cycle is spent: no call until epoch us
``{p}:stats:*``                 -      counters (see voucherify_ingest/stats.py)
``{p}:workers``                zset    worker node -> last heartbeat epoch s
``{p}:unacked``                hash    kombu: messages handed to a worker, not yet acked
``{p}:unacked_index``          zset    kombu: the same by delivery time (visibility timeout)
=============================  ======  ===========================================================

``{h}`` is 16 hex digits of sha256(app id, API base URL) in literal braces (a Redis Cluster hash
tag): two projects on one Redis never share a rate budget, and no key holds the token.
"""

from __future__ import annotations

from dataclasses import dataclass

from voucherify_ingest.lanes import LANES, LIVE, lane_queue


@dataclass(frozen=True)
class Keys:
    prefix: str
    queue: str

    @property
    def delayed(self) -> str:
        return f"{self.prefix}:delayed"

    def lane_queue(self, lane: str) -> str:
        """The list of ``lane`` (the live lane is the queue itself)."""
        return lane_queue(self.queue, lane)

    def lane_delayed(self, lane: str) -> str:
        """The delayed set of ``lane`` (the live lane's is the historical ``delayed``)."""
        return self.delayed if lane == LIVE else f"{self.prefix}:delayed:{lane}"

    @property
    def lanes(self) -> tuple[str, ...]:
        return LANES

    @property
    def dlq_entries(self) -> str:
        return f"{self.prefix}:dlq:entries"

    @property
    def dlq_index(self) -> str:
        return f"{self.prefix}:dlq:index"

    def dlq_reason(self, reason: str) -> str:
        return f"{self.prefix}:dlq:reason:{reason}"

    def delivered(self, event_id: str) -> str:
        return f"{self.prefix}:delivered:{event_id}"

    def inflight(self, event_id: str) -> str:
        return f"{self.prefix}:inflight:{event_id}"

    @property
    def unacked(self) -> str:
        return f"{self.prefix}:unacked"

    @property
    def unacked_index(self) -> str:
        return f"{self.prefix}:unacked_index"

    def stats(self, name: str) -> str:
        return f"{self.prefix}:stats:{name}"

    @classmethod
    def from_settings(cls, settings) -> Keys:
        return cls(prefix=settings.key_prefix, queue=settings.queue)
