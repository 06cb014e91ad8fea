"""Settling an in-doubt send (see ``voucherify_ingest.indoubt``) by its event's policy.

Called with the event's claim held and its send record in the ledger (the evidence):

- ``hold``: dead letter ``in_doubt`` with the evidence. The send record stays in the ledger
  while the entry is in the store: a copy of the message that comes back (the worker died
  between this write and its ack) finds the entry and is dropped, not sent. ``dlq replay``
  deletes the record as it re-enqueues the event.
- ``verify``: look the event up (List Customer Activity, ``worker.activity``). Found: recorded
  as delivered, no resend. Absent once ``VOUCHERIFY_IN_DOUBT_GRACE_S`` has passed since the
  send: resend. Absent sooner: wait for the grace (the record stays, so the next claim is in
  doubt again). A failed lookup is retried with backoff; past the retry budget: held.
- ``resend``: send again (counted).

``settle`` returns the outcome, or None when the caller should send the event now.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from voucherify_ingest.deadletters import make_entry
from voucherify_ingest.indoubt import (
    HELD,
    HOLD,
    LOOKUP_FAILED,
    LOOKUPS,
    RESEND,
    RESENT,
    VERIFIED_ABSENT,
    VERIFIED_DELIVERED,
    SendRecord,
)
from voucherify_ingest.lanes import BULK
from worker.activity import ABSENT, FOUND, ActivityLookup
from worker.backoff import backoff_delay
from worker.ledger import KEEP, NOTE
from worker.outcome import Outcome

if TYPE_CHECKING:
    from worker.delivery import Deliverer


class _NoSlot(Exception):
    """The shared limiter has no slot for a lookup soon: park the event this long."""

    def __init__(self, park_s: float):
        super().__init__(park_s)
        self.park_s = park_s


class Settler:
    def __init__(self, deliverer: Deliverer):
        self.d = deliverer
        settings = deliverer.settings
        self.grace_s = settings.in_doubt_grace_s
        self.retries = settings.in_doubt_lookup_retries
        self.lookup = (
            ActivityLookup(deliverer.http, settings.event_id_metadata_key,
                           settings.in_doubt_window_s)
            if settings.event_id_metadata_key else None
        )
        # Lookups are the low-priority calls: they take a slot only when one is near.
        self.slot_wait_s = settings.rate_limit_max_wait_s / 2

    def settle(self, log, envelope: dict, event_id: str, payload: dict, attempt: int,
               record: SendRecord, policy: str, *, fresh: bool = False) -> Outcome | None:
        """``fresh``: this worker's own send just ended in doubt (else a redelivery found the
        record of an earlier one)."""
        log = log.bind(in_doubt_policy=policy, sent_at=record.sent_at, sent_by=record.by)
        if not fresh and self._already_held(event_id):
            self.d._store(lambda pipe: self.d.ledger.release(pipe, event_id, self.d.owner, KEEP))
            log.info("in_doubt", outcome="already_held")
            return Outcome("dead_lettered", event_id, "in_doubt, already held")
        if policy == RESEND:
            self._count({RESENT: 1})
            log.info("in_doubt", outcome="resend", what=record.what)
            return None
        if policy == HOLD or self.lookup is None:
            return self._hold(log, envelope, event_id, payload, attempt, record, HELD)
        lookups = int(envelope.get("in_doubt_lookups", 0) or 0)
        try:
            result = self.lookup.find(payload, event_id, record.sent_at, time.time(),
                                      take_slot=self._take_slot)
        except _NoSlot as no_slot:
            return self._wait(log, envelope, event_id, no_slot.park_s, {"deferred": 1},
                              "rate limit (lookup)")
        counts = {LOOKUPS: result.pages}
        if result.verdict == FOUND:
            self.d._store(
                lambda pipe: (
                    self.d.ledger.mark_delivered(pipe, event_id, self.d.owner),
                    self.d.stats.record(pipe, {**counts, VERIFIED_DELIVERED: 1, "delivered": 1}),
                ),
                budget_s=self.d.delivered_budget_s,
            )
            log.info("delivery", outcome="delivered", how="verified", lookups=result.pages)
            return Outcome("delivered", event_id, "verified")
        if result.verdict == ABSENT:
            left_s = record.sent_at + self.grace_s - time.time()
            if left_s <= 0:
                self._count({**counts, VERIFIED_ABSENT: 1})
                log.info("in_doubt", outcome="verified_absent_resend", lookups=result.pages)
                return None
            return self._wait(log, envelope, event_id, left_s, counts, "not visible yet")
        lookups += 1
        if lookups > self.retries:
            return self._hold(log, envelope, event_id, payload, attempt, record, LOOKUP_FAILED,
                              counts, lookup_error=result.detail)
        delay = backoff_delay(lookups, base_s=self.d.settings.backoff_base_s,
                              cap_s=self.d.settings.backoff_max_s)
        return self._wait(log, {**envelope, "in_doubt_lookups": lookups}, event_id, delay,
                          counts, f"lookup failed: {result.detail}")

    # -- steps --------------------------------------------------------------------------------

    def _already_held(self, event_id: str) -> bool:
        """The event sits in the dead-letter store, held in doubt: an operator has it."""
        entry = self.d._redis_call(self.d.dlq.get, event_id)
        return entry is not None and entry.get("reason") == "in_doubt"

    def _take_slot(self) -> None:
        limiter = self.d.limiter
        if limiter is None:
            return
        # Lookups yield to live events: they take slots as the bulk lane does (and count
        # against its cycle allowance), never ahead of a waiting live event.
        granted, wait_s = self.d._redis_call(limiter.acquire, self.slot_wait_s, BULK)
        if not granted:
            raise _NoSlot(wait_s)
        if wait_s > 0:
            self.d.sleep(wait_s)

    def _wait(self, log, envelope: dict, event_id: str, delay_s: float, counts: dict[str, int],
              why: str) -> Outcome:
        """Come back later, still in doubt: the claim goes, the send record stays."""
        self.d._store(
            lambda pipe: (
                self.d.ledger.release(pipe, event_id, self.d.owner, KEEP),
                self.d._defer(pipe, envelope, delay_s),
                self.d.stats.record(pipe, counts),
            )
        )
        log.info("in_doubt", outcome="waiting", why=why, retry_in_s=round(delay_s, 3))
        return Outcome("deferred", event_id, f"in doubt: {why}")

    def _hold(self, log, envelope: dict, event_id: str, payload: dict, attempt: int,
              record: SendRecord, counter: str, counts: dict[str, int] | None = None,
              lookup_error: str | None = None) -> Outcome:
        evidence: dict[str, Any] = record.evidence()
        if lookup_error:
            evidence["lookup_error"] = lookup_error
        entry = make_entry(
            event_id=event_id, payload=payload, reason="in_doubt",
            error={"message": f"in doubt: {record.what}"}, attempts=max(1, attempt),
            enqueued_at=envelope.get("enqueued_at"), in_doubt=evidence,
        )
        self.d._store(
            lambda pipe: (
                self.d.ledger.release(pipe, event_id, self.d.owner, NOTE, record),
                self.d.stats.record(
                    pipe, {**(counts or {}), counter: 1, "dead_lettered:in_doubt": 1}
                ),
            ),
            dead_letter=entry,
        )
        log.warning("delivery", outcome="dead_lettered", reason="in_doubt", what=record.what,
                    lookup_error=lookup_error)
        return Outcome("dead_lettered", event_id, "in_doubt")

    def _count(self, counts: dict[str, int]) -> None:
        self.d._store(lambda pipe: self.d.stats.record(pipe, counts))
