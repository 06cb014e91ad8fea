"""Delivering one event: the plain function behind the Celery tasks.

For each envelope: check it, claim it in the ledger (a duplicate is skipped), take a slot from
the shared rate limiter, POST it, and record the outcome in one pipelined round trip:
delivered (ledger + counters), retry later (delayed set, full-jitter backoff), deferred (rate
limit wait too long: delayed set, no attempt used) or dead-lettered (reason + what the API said).
A failed send's outcome is decided in ``worker/failures.py``; an in-doubt one's in
``worker/indoubt.py``.

If the outcome cannot be written to Redis, :class:`OutcomeNotStored` is raised and the task
must not ack the message: it comes back, and the ledger stops a second POST of what got through.

A batch message (a backfill's) is handled event by event with the same steps, minus round
trips: one script call claims the whole batch, a delivered event's outcome write is its ledger
entry alone (written before the next POST), and the batch's counters are written once at the
end. Events not started once ``batch_budget_s`` has passed go back on the queue as a new batch
message, so a batch is acked well within the visibility timeout.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
import structlog

from voucherify_ingest.deadletters import DeadLetterStore, make_entry
from voucherify_ingest.errors import (
    DeliveryError,
    InvalidEvent,
)
from voucherify_ingest.events import validate_event
from voucherify_ingest.indoubt import RESEND, Policies, SendRecord
from voucherify_ingest.keys import Keys
from voucherify_ingest.lanes import BULK, LIVE, lane_of
from voucherify_ingest.messages import EVENT_ID_RE, batch_message, event_message
from voucherify_ingest.settings import Settings
from voucherify_ingest.stats import StatsRecorder
from worker.authpause import AuthPause
from worker.client import VoucherifyClient
from worker.delayed import DelayedQueue
from worker.failures import Failures
from worker.indoubt import Settler
from worker.ledger import ALREADY_DELIVERED, BUSY, CLAIMED, DROP, IN_DOUBT, KEEP, DeliveryLedger
from worker.livewatch import LiveWatch
from worker.outcome import Outcome

BUSY_RETRY_S = 2.0
STORED_MARKER_TTL_S = 60  # how long an outcome write's marker outlives its retries


class OutcomeNotStored(Exception):
    """Redis refused the outcome write: do not ack; the message must come back."""


class Limiter(Protocol):
    """What delivery needs from the shared rate limiter (``worker.ratelimit``)."""

    def wait_for_slot(self, max_wait_s: float, sleep, lane: str = LIVE,
                      give_way=None, nap=None) -> float | None:
        """Sleep until this worker's slot (at most ``max_wait_s``) and return None: send now.
        A number instead: do not send; park the event that many seconds (no retry used).
        ``lane``: a live caller is served before any bulk caller not yet sent. ``give_way``:
        a bulk caller refused a slot parks at once when it says True; ``nap``: its sleep,
        cut short (True) when a live event is queued."""

    def acquire(self, max_wait_s: float) -> tuple[bool, float]:
        """Take a slot within ``max_wait_s`` (True, seconds to it) or take none (False, seconds
        to park): in-doubt lookups, the low-priority calls, use it."""

    def on_rate_limited(self, retry_after_s: float | None, headers: Any = None) -> None:
        """The API answered 429: every worker pauses (shared cool-down)."""

    def observe(self, hints: Any) -> None:
        """Rate-limit headers of a successful answer."""


@dataclass
class _Tally:
    """What a batch's delivered and duplicate events add to the counters, written once."""

    delivered: int = 0
    duplicates: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    by_lane: dict[str, int] = field(default_factory=dict)


class Deliverer:
    def __init__(
        self,
        settings: Settings,
        *,
        redis_client: redis.Redis,
        http: VoucherifyClient | None = None,
        limiter: Limiter | None = None,
        sleep=time.sleep,
    ):
        self.settings = settings
        self.redis = redis_client
        self.keys = Keys.from_settings(settings)
        pool_size = max(8, settings.worker_concurrency)
        self.http = http or VoucherifyClient(settings, pool_size=pool_size)
        self.limiter = limiter
        self.sleep = sleep
        self.ledger = DeliveryLedger(
            redis_client,
            self.keys,
            ttl_s=settings.ledger_ttl_s,
            inflight_ttl_s=settings.max_attempt_duration_s + 5,
        )
        self.delayed = DelayedQueue(redis_client, self.keys)
        self.dlq = DeadLetterStore(redis_client, self.keys)
        self.stats = StatsRecorder(settings.key_prefix)
        self.auth_pause = AuthPause.from_settings(settings, redis_client)
        self._owner_base = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # How long a delivered event's ledger write is retried while Redis is away: if it is
        # never written, the message comes back and the event is sent again.
        self.delivered_budget_s = max(
            5.0, settings.visibility_timeout_s - settings.max_attempt_duration_s - 5
        )
        self.log = structlog.get_logger("voucherify_ingest.delivery")
        # A batch starts no event after this long: the message may wait for a thread (one
        # attempt), and its last event may take one attempt, within the visibility timeout.
        attempt_s = settings.max_attempt_duration_s
        self.batch_budget_s = max(0.0, settings.visibility_timeout_s - 2 * attempt_s - 5)
        # A batch claim older than this may lapse before the event's attempt ends: claim again.
        self.claim_fresh_s = max(0.0, self.ledger.inflight_ttl_ms / 1000 - attempt_s - 1)
        # Bulk events asleep in the limiter's line wake when a live event is queued. A test
        # that passes its own ``sleep`` keeps plain sleeps (no watcher thread).
        self.live_watch = (LiveWatch(redis_client, self.keys.lane_queue(LIVE))
                           if sleep is time.sleep else None)
        self.policies = Policies.from_settings(settings)
        self.settler = Settler(self)
        self.failures = Failures(self)

    @property
    def owner(self) -> str:
        """Ledger claims are per thread: two threads of one worker never share a claim."""
        return f"{self._owner_base}:{threading.get_ident()}"

    # -- entry points -------------------------------------------------------------------------

    def handle(self, envelope: Any) -> Outcome:
        """Deliver one envelope; never raises except :class:`OutcomeNotStored`."""
        checked = self._check_envelope(envelope)
        if isinstance(checked, Outcome):
            return checked
        event_id, payload, attempt = checked
        return self._deliver(envelope, event_id, payload, attempt)

    def handle_batch(self, envelopes: Any) -> list[Outcome]:
        """Deliver each envelope on its own (see the module docstring for what is shared)."""
        if not isinstance(envelopes, list):
            return [self._dead_letter_invalid(envelopes, {"_schema": ["batch must be a list"]})]
        started = time.monotonic()
        outcomes: list[Outcome | None] = [None] * len(envelopes)
        pending: list[tuple[dict, str, dict, int]] = []
        places: list[int] = []
        seen: set[str] = set()
        tally = _Tally()
        for place, envelope in enumerate(envelopes):
            checked = self._check_envelope(envelope)
            if isinstance(checked, Outcome):
                outcomes[place] = checked
            elif checked[0] in seen:  # the same event twice in one batch: send it once
                tally.duplicates += 1
                outcomes[place] = Outcome("duplicate", checked[0])
            else:
                seen.add(checked[0])
                pending.append((envelope, *checked))
                places.append(place)
        try:
            if pending:
                claimed_at = time.monotonic()
                ids = [p[1] for p in pending]
                claims = self._redis_call(self.ledger.claim_many, ids, self.owner)
            for index, (envelope, event_id, payload, attempt) in enumerate(pending):
                token_error = self._ready_token()
                now = time.monotonic()
                if index and (now - started > self.batch_budget_s or self._live_waiting(
                        pending[index][0])):
                    rest = self._requeue(pending[index:], claims[index:])
                    for place, outcome in zip(places[index:], rest, strict=True):
                        outcomes[place] = outcome
                    break
                claim = claims[index]
                if claim == CLAIMED and now - claimed_at > self.claim_fresh_s:
                    claim = self._redis_call(self.ledger.claim, event_id, self.owner)
                outcomes[places[index]] = self._deliver(
                    envelope, event_id, payload, attempt, claim=claim, tally=tally,
                    token_error=token_error,
                )
        finally:
            self._flush(tally)
        return outcomes  # type: ignore[return-value] - every place is filled

    # -- steps --------------------------------------------------------------------------------

    def _check_envelope(self, envelope: Any) -> Outcome | tuple[str, dict, int]:
        if not isinstance(envelope, dict):
            return self._dead_letter_invalid(envelope, {"_schema": ["envelope must be an object"]})
        event_id = envelope.get("id")
        if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
            return self._dead_letter_invalid(envelope, {"id": ["missing or malformed event id"]})
        attempt = envelope.get("attempt", 0)
        if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 0:
            attempt = 0
        try:
            payload = validate_event(envelope.get("payload"))
        except InvalidEvent as exc:
            return self._dead_letter_invalid(envelope, exc.messages, event_id=event_id)
        return event_id, payload, attempt

    def _deliver(
        self, envelope: dict, event_id: str, payload: dict, attempt: int, *,
        claim: int | None = None, tally: _Tally | None = None,
        token_error: DeliveryError | None = None,
    ) -> Outcome:
        """``claim`` given: the ledger was asked already. ``tally`` given (a batch): the
        counters of a delivered or duplicate event go to the tally, written at the batch end.
        ``token_error``: the OAuth token call just before this batch event failed."""
        log = self.log.bind(event_id=event_id, event_name=payload["event"], attempt=attempt + 1)
        if self.settings.log_pii:  # VOUCHERIFY_LOG_PII=1, a debug switch: customer data in logs
            log = log.bind(customer=payload.get("customer"))
        policy = self.policies.for_event(payload["event"])
        track = policy != RESEND  # keep send records: an unrecorded outcome is caught later
        record: SendRecord | None = None
        written = False
        if claim is None:
            try:
                self.http.ready_token()  # OAuth: before the claim, whose clock is the attempt's
            except DeliveryError as exc:  # nothing claimed, nothing sent
                return self.failures.handle(log, envelope, event_id, payload, attempt + 1, exc)
            # Without a limiter the request goes out right after the claim: one round trip
            # claims and writes the send record.
            sending = SendRecord(self.owner, time.time()) if track and not self.limiter else None
            claim, record = self._redis_call(
                self.ledger.claim_with_record, event_id, self.owner, sending
            )
            written = sending is not None and claim == CLAIMED
        elif token_error is not None and claim in (CLAIMED, IN_DOUBT):
            # A batch event without a token: it is not sent now (the send would call the token
            # endpoint again, inside the claim, and a slow success could outlast it). The claim
            # goes, any in-doubt evidence stays, and the error is handled as before a claim.
            self._store(lambda pipe: self.ledger.release(pipe, event_id, self.owner, KEEP))
            return self.failures.handle(log, envelope, event_id, payload, attempt + 1,
                                        token_error)
        elif claim == IN_DOUBT:
            record = self._redis_call(self.ledger.send_record, event_id)
        if claim == ALREADY_DELIVERED:
            if tally is not None:
                tally.duplicates += 1
            else:
                self._store(lambda pipe: self.stats.record(pipe, {"duplicates_avoided": 1}))
            log.info("delivery", outcome="duplicate_avoided")
            return Outcome("duplicate", event_id)
        if claim == BUSY:
            self._store(lambda pipe: self._defer(pipe, envelope, BUSY_RETRY_S))
            log.info("delivery", outcome="deferred", why="in_flight_elsewhere")
            return Outcome("deferred", event_id, "in flight elsewhere")
        if claim == IN_DOUBT:
            settled = self.settler.settle(log, envelope, event_id, payload, attempt,
                                          record or SendRecord("unknown", 0.0), policy)
            if settled is not None:
                return settled  # held, verified delivered, or waiting for the lookup

        auth = self._redis_call(self.auth_pause.check)
        if auth.hold:  # the API refuses our credentials: park, no POST, no retry used
            park_s = self.auth_pause.park_s()
            self._park(envelope, event_id, park_s, {"deferred": 1, "auth_deferred": 1})
            log.info("delivery", outcome="deferred", why="auth_paused",
                     paused_for_s=round(auth.paused_for_s, 1), wait_s=round(park_s, 3))
            return Outcome("deferred", event_id, "auth paused")

        lane = lane_of(envelope)
        if self.limiter is not None:
            wait_s = self._take_slot(lane)
            if wait_s is not None:
                self._park(envelope, event_id, wait_s, {"deferred": 1})
                log.info("delivery", outcome="deferred", why="rate_limit", wait_s=round(wait_s, 3))
                return Outcome("deferred", event_id, "rate limit")

        sent_at = time.time()
        if track and not written:
            self._redis_call(self.ledger.mark_sending, event_id, SendRecord(self.owner, sent_at))
        try:
            result = self.http.send_event(payload, event_id)
        except DeliveryError as exc:
            if exc.in_doubt and track:
                note = SendRecord(self.owner, sent_at, str(exc))
                self._redis_call(self.ledger.mark_sending, event_id, note)
                log.warning("delivery", outcome="in_doubt", error=str(exc), policy=policy)
                return self.settler.settle(log, envelope, event_id, payload, attempt + 1, note,
                                           policy, fresh=True)
            return self.failures.handle(log, envelope, event_id, payload, attempt + 1, exc)
        if auth.paused_for_s is not None:
            self.failures.end_auth_pause(auth)

        # The window where a death records the event twice: from the API's answer to the
        # ledger write. Nothing else comes first (the limiter's feedback waits), and it is
        # measured (``answer_to_ledger_ms`` on the log line).
        answered = time.perf_counter()
        if tally is not None:
            self._store(lambda client: self.ledger.mark_delivered(client, event_id, self.owner),
                        budget_s=self.delivered_budget_s, direct=True)
            tally.delivered += 1
            tally.by_lane[lane] = tally.by_lane.get(lane, 0) + 1
            tally.latencies_ms.append(result.latency_ms)
        else:
            self._store(
                lambda pipe: (
                    self.ledger.mark_delivered(pipe, event_id, self.owner),
                    self.stats.record(pipe, {"delivered": 1, f"delivered:{lane}": 1,
                                             "attempts": 1}, result.latency_ms),
                ),
                budget_s=self.delivered_budget_s,
            )
        window_ms = (time.perf_counter() - answered) * 1000
        if self.limiter is not None:
            self.limiter.observe(result.hints)
        log.info(
            "delivery",
            outcome="delivered",
            status=result.status,
            latency_ms=round(result.latency_ms, 1),
            answer_to_ledger_ms=round(window_ms, 2),
        )
        return Outcome("delivered", event_id)

    def _ready_token(self) -> DeliveryError | None:
        """A batch's events are claimed together: get an OAuth token before the claim's age is
        checked (and refreshed), so a slow token call does not eat into it. A failure is
        returned: the event is then handled as a failed send, without sending."""
        try:
            self.http.ready_token()
        except DeliveryError as exc:
            return exc
        return None

    def _take_slot(self, lane: str = LIVE) -> float | None:
        """Wait for a rate-limit slot: None when it is ours, else seconds to park the event."""
        # A bulk event waiting in line gives its thread up when a live event waits for one
        # (all threads may be holding bulk events): else the live event waits a slot more.
        give_way = self._live_queued if lane == BULK else None
        nap = self.live_watch.nap if lane == BULK and self.live_watch is not None else None
        return self._redis_call(
            self.limiter.wait_for_slot, self.settings.rate_limit_max_wait_s, self.sleep, lane,
            give_way, nap,
        )

    def _live_queued(self) -> bool:
        try:
            return bool(self.redis.llen(self.keys.lane_queue(LIVE)))
        except redis.RedisError:
            return False

    def _live_waiting(self, envelope: dict) -> bool:
        """A bulk batch gives its thread up between events while live events wait in their
        list (every thread may be holding a bulk batch): the rest goes back to the bulk lane."""
        if lane_of(envelope) != BULK or self.limiter is None:
            return False
        try:
            return bool(self.redis.llen(self.keys.lane_queue(LIVE)))
        except redis.RedisError:
            return False

    def _dead_letter_invalid(
        self, raw: Any, messages: dict, *, event_id: str | None = None
    ) -> Outcome:
        payload = raw.get("payload", raw) if isinstance(raw, dict) else raw
        enqueued_at = raw.get("enqueued_at") if isinstance(raw, dict) else None
        entry = make_entry(
            event_id=event_id,
            payload=payload,
            reason="invalid",
            error={"message": "invalid event", "details": str(messages)[:2000]},
            attempts=0,
            enqueued_at=enqueued_at if isinstance(enqueued_at, str) else None,
        )
        self._store(
            lambda pipe: self.stats.record(pipe, {"dead_lettered:invalid": 1}), dead_letter=entry
        )
        self.log.warning(
            "delivery", event_id=entry["id"], outcome="dead_lettered", reason="invalid",
            fields=sorted(messages) if isinstance(messages, dict) else None,
        )
        return Outcome("dead_lettered", entry["id"], "invalid")

    def _requeue(self, rest: list[tuple[dict, str, dict, int]], claims: list[int]) -> list[Outcome]:
        """The batch ran out of time: its unstarted events go back as one new batch message."""
        queue = self.keys.lane_queue(lane_of(rest[0][0]))
        message = batch_message([p[0] for p in rest], queue)

        def fill(pipe):
            for (_, event_id, _, _), claim in zip(rest, claims, strict=True):
                if claim in (CLAIMED, IN_DOUBT):
                    keep = KEEP if claim == IN_DOUBT else DROP
                    self.ledger.release(pipe, event_id, self.owner, keep)
            pipe.rpush(queue, message)  # the consuming end: next in line

        self._store(fill)
        self.log.info("batch_requeued", events=len(rest), budget_s=round(self.batch_budget_s, 1))
        return [Outcome("deferred", p[1], "batch time budget") for p in rest]

    def _flush(self, tally: _Tally) -> None:
        """Write a batch's counters, retried through a Redis blip as the ledger writes are (a
        restart lost them, and ``stats`` under-counted delivered events); past that budget,
        best effort (the outcomes themselves are stored)."""
        counts = {"delivered": tally.delivered, "attempts": tally.delivered,
                  "duplicates_avoided": tally.duplicates,
                  **{f"delivered:{lane}": n for lane, n in tally.by_lane.items()}}
        counts = {name: value for name, value in counts.items() if value}
        if not counts:
            return
        try:
            self._store(lambda pipe: (self.stats.record(pipe, counts),
                                      self.stats.record_latencies(pipe, tally.latencies_ms)),
                        budget_s=self.delivered_budget_s)
        except OutcomeNotStored as exc:
            self.log.warning("batch_counters_not_stored", error=str(exc), **counts)

    # -- Redis plumbing -----------------------------------------------------------------------

    def _park(self, envelope: dict, event_id: str, delay_s: float, counts: dict) -> None:
        """Let the claim go and bring the event back in ``delay_s``, counted: one transaction."""
        self._store(
            lambda pipe: (
                self.ledger.release(pipe, event_id, self.owner, DROP),
                self._defer(pipe, envelope, delay_s),
                self.stats.record(pipe, counts),
            )
        )

    def _defer(self, pipe, envelope: dict, delay_s: float) -> None:
        """Queue the SCHEDULE script on ``pipe``: the message waits in the delayed set."""
        lane = lane_of(envelope)
        message = event_message(envelope, self.keys.lane_queue(lane))
        self.delayed.schedule_on(pipe, message, delay_s, lane)

    def _store(
        self, fill, *, dead_letter: dict | None = None, retries: int = 2,
        budget_s: float = 0.0, direct: bool = False,
    ) -> None:
        """Run one transaction of outcome writes; retry at least ``retries`` times and for
        ``budget_s`` seconds; else raise OutcomeNotStored.

        A write whose reply was lost (Redis stopped right after running it) may have been
        applied, and its counters would count twice if it ran again. So the write carries a
        marker key, last in the same transaction; a retry that finds the marker knows the
        earlier try was applied whole. ``direct``: ``fill`` sends one idempotent command on the
        client itself (a ledger script: one EVALSHA, where a pipeline holding a script costs a
        ``SCRIPT EXISTS`` round trip first), no marker needed."""
        last: Exception | None = None
        deadline = time.monotonic() + budget_s
        attempt = 0
        marker = None if direct else f"{self.keys.prefix}:stored:{uuid.uuid4().hex}"
        while True:
            try:
                if attempt and marker is not None and self.redis.exists(marker):
                    return  # applied by an earlier try whose reply was lost
                if direct:
                    fill(self.redis)
                    return
                with self.redis.pipeline() as pipe:
                    if dead_letter is not None:
                        self.dlq.add(dead_letter, pipe)
                    fill(pipe)
                    if marker is not None:
                        pipe.set(marker, 1, ex=int(max(STORED_MARKER_TTL_S, budget_s + 60)))
                    pipe.execute()
                return
            except redis.RedisError as exc:
                last = exc
            if attempt >= retries and time.monotonic() >= deadline:
                break
            self.sleep(min(2.0, 0.2 * 2**attempt))
            attempt += 1
        self.log.error("outcome_not_stored", error=type(last).__name__)
        raise OutcomeNotStored(type(last).__name__)

    def _redis_call(self, fn, *args):
        try:
            return fn(*args)
        except redis.RedisError as exc:
            self.log.error("redis_unavailable", error=type(exc).__name__)
            raise OutcomeNotStored(type(exc).__name__) from None
