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
``{p}:sent:{event_id}``        string  a request went out, outcome not yet recorded: by|at|what
``{p}:rl:{h}``                 string  GCRA theoretical arrival time, epoch us (Redis time)
``{p}:rl:{h}:cooldown``        string  shared cool-down after a 429, until epoch us
``{p}:rl:{h}:parked``          string  place in line of the last event parked for a slot
``{p}:authpause:{h}``          string  the API refuses our credentials since epoch ms (401/403)
``{p}:authpause:{h}:probe``    string  held by the one worker allowed to probe now (short TTL)
``{p}:rl:{h}:bulkline``        string  place in line of the last bulk event told to wait
``{p}:rl:{h}:credit``          string  bulk's minimum-share credit (lanes)
``{p}:rl:{h}:starved``         string  epoch us since when bulk has had no slot (lanes)
``{p}:rl:{h}:reserve``         string  reserve pause until epoch us (``VOUCHERIFY_RATE_RESERVE``)
``{p}:rl:{h}:cycle:{start}``   hash    calls counted this billing cycle (``cycle.py``)
``{p}:rl:{h}:cycle_blocked``   string  the API said the cycle is spent: no call until epoch us
``{p}:stats:*``                 -      counters (see voucherify_ingest/stats.py)
``{p}:workers``                zset    worker node -> last heartbeat epoch s
``{p}:oauth:{h}``              string  the fleet's OAuth access token (JSON), expires with it
``{p}:oauth:{h}:lock``         string  held by the one worker fetching the next token
``{p}:oauth:{h}:replaced``     string  a token was replaced after a 401 (30 s): no second one
``{p}:unacked``                hash    kombu: messages handed to a worker, not yet acked
``{p}:unacked_index``          zset    kombu: the same by delivery time (visibility timeout)
=============================  ======  ===========================================================

``{h}`` is 16 hex digits of sha256(app id, API base URL) in literal braces (a Redis Cluster hash
tag): two projects on one Redis never share a rate budget, and no key name holds a secret. For
``{p}:oauth:{h}``, ``h`` also covers the OAuth scope; its value is the token itself (a secret:
nothing of this project prints it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from voucherify_ingest.lanes import LANES, LIVE, lane_queue


def auth_pause_key(prefix: str, app_id: str, api_url: str) -> str:
    """``{prefix}:authpause:{h}``: per project like the limiter's keys (``h`` hashes the app id
    and API base URL, never the token); see ``worker/authpause.py``."""
    base = api_url.strip().rstrip("/").lower()
    digest = hashlib.sha256(f"{app_id}\n{base}".encode()).hexdigest()[:16]
    return f"{prefix}:authpause:{{{digest}}}"


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

    def sent(self, event_id: str) -> str:
        return f"{self.prefix}:sent:{event_id}"

    @property
    def unacked(self) -> str:
        return f"{self.prefix}:unacked"

    @property
    def unacked_index(self) -> str:
        return f"{self.prefix}:unacked_index"

    def oauth_token(self, app_id: str, api_base: str, scope: str) -> str:
        base = api_base.strip().rstrip("/").lower()
        digest = hashlib.sha256(f"{app_id}\n{base}\n{scope}".encode()).hexdigest()[:16]
        return f"{self.prefix}:oauth:{{{digest}}}"

    def oauth_lock(self, app_id: str, api_base: str, scope: str) -> str:
        return f"{self.oauth_token(app_id, api_base, scope)}:lock"

    def stats(self, name: str) -> str:
        return f"{self.prefix}:stats:{name}"

    @classmethod
    def from_settings(cls, settings) -> Keys:
        return cls(prefix=settings.key_prefix, queue=settings.queue)
