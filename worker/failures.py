"""A send that failed (``DeliveryError``): what becomes of the event, and who else must know.

- 429: pacing, not failure: every worker holds back (the shared cool-down), the event comes
  back after the pause, its retries untouched (``worker/pacing.py``).
- 402 or a spent cycle: every worker waits for the cycle's reset; nothing is dead-lettered.
- 401/403: the fleet pauses and probes (``worker/authpause.py``); dead letters ``auth`` only
  after ``VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S``.
- Anything else retryable: backoff with full jitter, up to ``VOUCHERIFY_MAX_RETRIES``; then,
  or for a permanent refusal, a dead letter with what the API said (secrets masked).

Every outcome is written in one transaction through the :class:`~worker.delivery.Deliverer`'s
plumbing, which raises ``OutcomeNotStored`` (no ack) when Redis refuses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import redis

from voucherify_ingest.deadletters import make_entry
from voucherify_ingest.errors import AuthRejected, DeliveryError, QuotaExhausted, RateLimited
from voucherify_ingest.indoubt import RESENT
from voucherify_ingest.logs import mask_secrets
from worker.authpause import AuthState
from worker.backoff import backoff_delay
from worker.ledger import DROP
from worker.outcome import Outcome
from worker.pacing import comeback_delay, pause_after_429

if TYPE_CHECKING:
    from worker.delivery import Deliverer

CYCLE_RECHECK_S = 10.0  # an event waiting out a spent cycle looks again this often


def _masked(error: dict[str, Any]) -> dict[str, Any]:
    """What the API said, with our own secrets masked should an answer ever echo one (a
    debugging proxy's error page listing request headers): dead letters are shown by the CLI."""
    return {k: mask_secrets(v) if isinstance(v, str) else v for k, v in error.items()}


class Failures:
    """The failure paths of one :class:`~worker.delivery.Deliverer`."""

    def __init__(self, deliverer: Deliverer):
        self.d = deliverer

    def handle(
        self, log, envelope: dict, event_id: str, payload: dict, attempt: int, exc: DeliveryError
    ) -> Outcome:
        latency = round(exc.latency_ms, 1) if exc.latency_ms is not None else None
        counts = {"attempts": 1}
        if exc.status == 429:
            counts["http_429"] = 1
        if exc.in_doubt:  # policy resend: sent again as before, and counted
            counts[RESENT] = 1
        if isinstance(exc, QuotaExhausted):
            return self._cycle_spent(log, envelope, event_id, exc, counts)
        if isinstance(exc, RateLimited):
            return self._paced(log, envelope, event_id, exc, counts, latency)
        if isinstance(exc, AuthRejected):
            counts["auth_refused"] = 1
            held = self._auth_refused(log, envelope, event_id, exc, counts)
            if held is not None:
                return held
        if exc.retryable and attempt <= self.d.settings.max_retries:
            delay = backoff_delay(
                attempt,
                base_s=self.d.settings.backoff_base_s,
                cap_s=self.d.settings.backoff_max_s,
                retry_after_s=exc.retry_after_s,
            )
            retry_envelope = {**envelope, "attempt": attempt}
            self.d._park(retry_envelope, event_id, delay, {**counts, "retried": 1})
            log.warning(
                "delivery", outcome="retry", status=exc.status, latency_ms=latency,
                error=str(exc), retry_in_s=round(delay, 3),
            )
            return Outcome("retry", event_id, str(exc))

        reason = exc.reason  # retries_exhausted | rejected | auth (a spent cycle pauses instead)
        entry = make_entry(
            event_id=event_id, payload=payload, reason=reason, error=_masked(exc.as_dict()),
            attempts=attempt, enqueued_at=envelope.get("enqueued_at"),
        )
        self.d._store(
            lambda pipe: (
                self.d.ledger.release(pipe, event_id, self.d.owner, DROP),
                self.d.stats.record(pipe, {**counts, f"dead_lettered:{reason}": 1}),
            ),
            dead_letter=entry,
        )
        level = log.error if reason == "auth" else log.warning
        level(
            "delivery", outcome="dead_lettered", reason=reason, status=exc.status,
            latency_ms=latency, error=str(exc), request_id=exc.request_id,
        )
        return Outcome("dead_lettered", event_id, reason)

    def _paced(self, log, envelope: dict, event_id: str, exc: RateLimited, counts: dict,
               latency) -> Outcome:
        """A 429 is pacing (worker/pacing.py): every worker holds back, and the event comes
        back after the pause with its retries untouched (``attempt`` is not advanced)."""
        pause_s = pause_after_429(exc.retry_after_s, exc.headers, self.d.settings.retry_after_max_s)
        if self.d.limiter is not None:
            left_s = self.d._redis_call(self.d.limiter.on_rate_limited, pause_s, None)
            pause_s = min(max(pause_s, left_s or 0.0), self.d.settings.retry_after_max_s)
        delay = comeback_delay(pause_s)
        self.d._park(envelope, event_id, delay, {**counts, "deferred": 1})
        log.warning(
            "delivery", outcome="deferred", why="rate_limited", status=exc.status,
            latency_ms=latency, retry_in_s=round(delay, 3),
        )
        return Outcome("deferred", event_id, "rate limited")

    def _auth_refused(self, log, envelope: dict, event_id: str, exc: AuthRejected,
                      counts: dict) -> Outcome | None:
        """A 401/403 pauses the fleet (worker/authpause.py): park the event, no retry used.
        None once the pause has outlasted VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S: dead-letter."""
        paused_s, began = self.d._redis_call(self.d.auth_pause.begin)
        if began:
            log.error(
                "auth_paused", status=exc.status, request_id=exc.request_id,
                probe_every_s=self.d.settings.auth_probe_interval_s,
                dead_letter_after_s=self.d.settings.auth_dead_letter_after_s,
                message="Voucherify refuses VOUCHERIFY_APP_ID / VOUCHERIFY_APP_TOKEN (HTTP "
                f"{exc.status}); every worker holds its events and probes the API until the "
                "credentials work again. Fix the credentials; nothing is dead-lettered for "
                "VOUCHERIFY_AUTH_DEAD_LETTER_AFTER_S.",
            )
        if paused_s >= self.d.settings.auth_dead_letter_after_s:
            return None
        park_s = self.d.auth_pause.park_s()
        self.d._park(envelope, event_id, park_s, {**counts, "deferred": 1})
        log.warning("delivery", outcome="deferred", why="auth_refused", status=exc.status,
                    paused_for_s=round(paused_s, 1), retry_in_s=round(park_s, 3))
        return Outcome("deferred", event_id, "auth refused")

    def end_auth_pause(self, auth: AuthState) -> None:
        try:
            ended = self.d.auth_pause.end()
        except redis.RedisError as exc:  # the next success ends it
            self.d.log.warning("auth_pause_not_ended", error=type(exc).__name__)
            return
        if ended:
            self.d.log.warning("auth_pause_ended", paused_for_s=round(auth.paused_for_s or 0, 1),
                             message="the API accepts the credentials again; delivery resumes")

    def _cycle_spent(self, log, envelope: dict, event_id: str, exc: DeliveryError,
                     counts: dict) -> Outcome:
        """402, or 429 ``api_calls_cycle``: the billing cycle's calls are spent. Every worker
        pauses until the cycle resets (the limiter's shared block) and the event waits, its
        attempt not counted: nothing is dead-lettered for a quota (docs/lanes-and-rate-limit)."""
        if self.d.limiter is not None and hasattr(self.d.limiter, "on_cycle_spent"):
            until_s = self.d._redis_call(self.d.limiter.on_cycle_spent)
            wait_s = min(until_s, CYCLE_RECHECK_S)
        else:  # no shared limiter to hold the pause: this event waits the longest backoff
            until_s = wait_s = self.d.settings.backoff_max_s
        self.d._park(envelope, event_id, wait_s, {**counts, "cycle_spent": 1})
        log.error("delivery", outcome="deferred", why="cycle_spent", status=exc.status,
                  request_id=exc.request_id, paused_s=round(until_s, 1),
                  message="Voucherify says this billing cycle's API calls are spent; every "
                  "worker waits until the cycle resets (VOUCHERIFY_CYCLE_RESET_DAY); "
                  "nothing is dead-lettered")
        return Outcome("deferred", event_id, "cycle spent")
