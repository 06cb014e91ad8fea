"""Every API call counts against the billing cycle, not only event POSTs (issue 19): an OAuth
token call takes a live slot and an in-doubt lookup a bulk slot of the same shared limiter, and
each is counted in the cycle (``voucherify_ingest.cycle.usage``). A lookup is refused, and its
event parked still in doubt, once the bulk allowance is spent. Real Redis, the real limiter
(``RateLimiter.from_settings``), the loopback stand-in answering the calls."""

from __future__ import annotations

import time

import pytest

from voucherify_ingest.cycle import CycleQuota, usage
from voucherify_ingest.indoubt import SendRecord
from voucherify_ingest.keys import Keys
from voucherify_ingest.messages import make_envelope
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn
from worker.delivery import Deliverer
from worker.ledger import IN_DOUBT
from worker.oauth import TokenSource
from worker.ratelimit import QUOTA_RECHECK_S, RateLimiter

APP_ID, APP_TOKEN = "app", "tok-123456"
MARKER = "ingest_event_id"
EVENT = {"event": "order_paid", "customer": {"source_id": "cycle-1"}}


@pytest.fixture
def api():
    server = StandIn(APP_ID, APP_TOKEN).start()
    try:
        yield server
    finally:
        server.stop()


def _settings(redis_url: str, namespace: str, api_url: str, **env: str) -> Settings:
    return Settings.from_env({
        "REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace, "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_API_URL": api_url, "VOUCHERIFY_APP_ID": APP_ID,
        "VOUCHERIFY_APP_TOKEN": APP_TOKEN, "VOUCHERIFY_RATE_LIMIT": "100/s",
        "VOUCHERIFY_RATE_LIMIT_MAX_WAIT_S": "1",
        # 10 calls a cycle, bulk may spend 1 of them (10%)
        "VOUCHERIFY_CYCLE_QUOTA": "10", "VOUCHERIFY_CYCLE_BULK_SHARE": "10%",
        **env,
    })


def _used(redis_client, limiter: RateLimiter) -> dict:
    assert isinstance(limiter.cycle, CycleQuota), "VOUCHERIFY_CYCLE_QUOTA was not picked up"
    return usage(redis_client, limiter.key, limiter.cycle, time.time())


def test_an_oauth_token_call_counts_against_the_cycle_as_live(
    redis_url, redis_client, namespace, api
):
    settings = _settings(redis_url, namespace, api.url, VOUCHERIFY_AUTH="oauth")
    limiter = RateLimiter.from_settings(settings, redis_client)
    before = _used(redis_client, limiter)
    assert (before["used"], before["used_live"], before["used_bulk"]) == (0, 0, 0)
    source = TokenSource(settings, redis_client, limiter)
    try:
        assert source.token()
    finally:
        source.close()
    assert api.tokens.issued == 1  # one call to POST /v1/oauth/token was made ...
    after = _used(redis_client, limiter)
    assert (after["used"], after["used_live"], after["used_bulk"]) == (1, 1, 0)  # ... and counted
    assert after["left_live"] == 9


def test_an_in_doubt_lookup_counts_as_bulk_and_is_parked_when_bulk_is_spent(
    redis_url, redis_client, namespace, api
):
    settings = _settings(redis_url, namespace, api.url, VOUCHERIFY_IN_DOUBT="verify",
                         VOUCHERIFY_EVENT_ID_METADATA_KEY=MARKER,
                         VOUCHERIFY_IN_DOUBT_GRACE_S="0")
    limiter = RateLimiter.from_settings(settings, redis_client)
    d = Deliverer(settings, redis_client=redis_client, limiter=limiter, sleep=lambda s: None)
    keys = Keys.from_settings(settings)
    try:
        # a dead worker's send of e-1 (its record in the ledger): the next claim is in doubt
        d.ledger.mark_sending("e-1", SendRecord("dead-worker", 1_700_000_000.0))
        outcome = d.handle(make_envelope(EVENT, "e-1"))
        # the lookup (unknown customer: absent, grace 0) and then the resend of the live event
        assert outcome.kind == "delivered"
        assert api.stats()["lookups"] == 1 and api.delivered_ids() == {"e-1": 1}
        used = _used(redis_client, limiter)
        assert (used["used"], used["used_bulk"], used["used_live"]) == (2, 1, 1)
        assert used["bulk_paused"] and not used["live_paused"]  # bulk's 1 call is spent

        # the next in-doubt event: its lookup finds the bulk allowance spent and is refused
        d.ledger.mark_sending("e-2", SendRecord("dead-worker", 1_700_000_000.0))
        parked_at = time.time()
        outcome = d.handle(make_envelope(EVENT, "e-2"))
        assert outcome.kind == "deferred" and "lookup" in outcome.detail
        assert api.stats()["lookups"] == 1 and "e-2" not in api.delivered_ids()  # no call made
        assert _used(redis_client, limiter)["used"] == 2  # a refused slot is not counted
        assert d.ledger.claim("e-2", "next-worker") == IN_DOUBT  # still in doubt, evidence kept
        (entry,) = redis_client.zrange(keys.delayed, 0, -1, withscores=True)
        # parked until the quota is worth looking at again, not handed straight back (which
        # would spin on the spent allowance until the cycle resets)
        park_s = entry[1] / 1000 - parked_at  # scores are epoch milliseconds (Redis TIME)
        assert park_s >= QUOTA_RECHECK_S / 2, f"parked for {park_s:.3f}s"
        assert redis_client.hlen(keys.dlq_entries) == 0  # nothing dead-lettered for the quota
    finally:
        d.http.close()
