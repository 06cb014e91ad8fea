"""Settling an in-doubt send on a real Redis and the loopback stand-in, with the shared rate
limiter on: every lookup spends a slot of the same budget as the events, and a lookup that
finds no slot soon parks the event (still in doubt) instead of waiting or resending."""

from __future__ import annotations

import pytest

from voucherify_ingest.indoubt import SendRecord
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import make_envelope
from voucherify_ingest.rates import limiter_key, parse_rate_limit
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn
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


def _deliverer(redis_url, namespace, api, redis_client, limit: str):
    settings = Settings.from_env({
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api.url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "tok-123456", "VOUCHERIFY_IN_DOUBT": "verify",
        "VOUCHERIFY_EVENT_ID_METADATA_KEY": MARKER, "VOUCHERIFY_RATE_LIMIT": limit,
        "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S": "1", "VOUCHERIFY_IN_DOUBT_GRACE_S": "0",
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
