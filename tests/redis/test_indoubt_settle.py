"""Settling an in-doubt send on a real Redis and the loopback stand-in, with the shared rate
limiter on: every lookup spends a slot of the same budget as the events, and a lookup that
finds no slot soon parks the event (still in doubt) instead of waiting or resending. And a held
event stays held: a copy of its message that comes back is not sent; a replay is."""

from __future__ import annotations

import pytest

from tests.support.waiting import wait_for
from voucherify_ingest.deadletters import DeadLetterQueue
from voucherify_ingest.indoubt import HELD, SendRecord
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import make_envelope
from voucherify_ingest.rates import limiter_key, parse_rate_limit
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, stall
from voucherify_ingest.stats import StatsRecorder
from worker.delivery import Deliverer
from worker.ledger import IN_DOUBT
from worker.ratelimit import RateLimiter

MARKER = "ingest_event_id"
EVENT = {"event": "order_paid", "customer": {"source_id": "rl-1"}}


@pytest.fixture
def api():
    server = StandIn("app", "tok-123456").start()
    yield server
    server.stop()


def _deliverer(redis_url, namespace, api, redis_client, limit: str, **env):
    settings = Settings.from_env({
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api.url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "tok-123456", "VOUCHERIFY_IN_DOUBT": "verify",
        "VOUCHERIFY_EVENT_ID_METADATA_KEY": MARKER, "VOUCHERIFY_RATE_LIMIT": limit,
        "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S": "1", "VOUCHERIFY_IN_DOUBT_GRACE_S": "0",
        **env,
    })
    limiter = RateLimiter(redis_client, parse_rate_limit(limit),
                          key=limiter_key(namespace, "app", settings.api_base))
    return Deliverer(settings, redis_client=redis_client, limiter=limiter, sleep=lambda s: None)


def _leave_in_doubt(deliverer, redis_client, event_id: str) -> None:
    """A dead worker's send: its record in the ledger, its claim expired."""
    deliverer.ledger.mark_sending(event_id, SendRecord("dead-worker", 1_700_000_000.0))


def test_a_lookup_spends_a_slot_of_the_shared_budget(redis_url, namespace, api, redis_client):
    d = _deliverer(redis_url, namespace, api, redis_client, "1/min,burst=2")
    try:
        _leave_in_doubt(d, redis_client, "e-1")
        outcome = d.handle(make_envelope(EVENT, "e-1"))
        # the lookup (a 404: unknown customer, so absent; the grace is 0) took one slot and the
        # resend the other: the budget of two is spent
        assert outcome.kind == "delivered"
        assert api.stats()["lookups"] == 1 and api.delivered_ids() == {"e-1": 1}
        granted, _ = d.limiter.acquire(0.0)
        assert not granted, "the lookup did not take its slot from the shared limiter"
    finally:
        d.http.close()


def test_a_lookup_without_a_slot_soon_parks_the_event_still_in_doubt(
    redis_url, namespace, api, redis_client
):
    d = _deliverer(redis_url, namespace, api, redis_client, "1/min,burst=1")
    try:
        assert d.limiter.acquire(0.0)[0]  # live events spent the budget
        _leave_in_doubt(d, redis_client, "e-2")
        outcome = d.handle(make_envelope(EVENT, "e-2"))
        assert outcome.kind == "deferred" and "lookup" in outcome.detail
        assert api.stats()["lookups"] == 0 and api.received() == []
        keys = Keys.from_settings(d.settings)
        assert redis_client.zcard(keys.delayed) == 1
        assert d.ledger.claim("e-2", "next-worker") == IN_DOUBT  # the evidence is kept
    finally:
        d.http.close()


@pytest.mark.parametrize("how", ["stalled answer", "dead sender"])
def test_a_held_event_whose_message_comes_back_is_not_sent_again_until_replayed(
    redis_url, namespace, api, redis_client, how
):
    """The worker that held an event can die between the hold (dead letter written) and the
    ack: the message comes back. One CI run sent such a copy and the API recorded the event
    twice. The send record stays while the event is held, so the copy is dropped; a replay
    deletes the record with the entry, and the replayed event is sent."""
    d = _deliverer(redis_url, namespace, api, redis_client, "600/min,burst=10",
                   VOUCHERIFY_IN_DOUBT="hold", VOUCHERIFY_READ_TIMEOUT_S="0.5")
    keys = Keys.from_settings(d.settings)
    counters = StatsRecorder(d.settings.key_prefix).counters_key
    envelope = make_envelope(EVENT, "e-held")
    try:
        if how == "stalled answer":
            api.plan(stall(1.0))  # recorded on arrival, answered past the read timeout
        else:
            _leave_in_doubt(d, redis_client, "e-held")
        first = d.handle(envelope)
        assert (first.kind, first.detail) == ("dead_lettered", "in_doubt")
        sends = 1 if how == "stalled answer" else 0
        wait_for(lambda: len(api.received()) == sends, 5, "the stalled request's record")
        assert redis_client.exists(keys.sent("e-held")), "the hold let the send record go"

        again = d.handle(envelope)  # the same message, redelivered: its ack was lost
        assert again.kind == "dead_lettered" and "already held" in again.detail
        assert len(api.received()) == sends, "a held event was sent again"
        assert int(redis_client.hget(counters, HELD)) == 1
        dlq = DeadLetterQueue(redis_client, keys)
        assert dlq.count() == 1 and not redis_client.exists(keys.inflight("e-held"))

        result = dlq.replay(ids=["e-held"])
        assert result.replayed == 1 and dlq.count() == 0
        assert not redis_client.exists(keys.sent("e-held")), "the replay left the record"
        assert d.handle(envelope).kind == "delivered"
        assert len(api.received()) == sends + 1
        assert d.handle(envelope).kind == "duplicate"
        assert len(api.received()) == sends + 1
    finally:
        d.http.close()
