"""OAuth tokens shared through real Redis against the real stand-in (``worker.oauth``).

Two ``TokenSource`` objects stand for two worker processes (each has its own memory cache and
HTTP session; they share only Redis), with threads inside each.
"""

from __future__ import annotations

import threading

import pytest

from tests.support.pipeline import APP_ID, APP_TOKEN
from tests.support.waiting import wait_for
from voucherify_ingest.keys import Keys
from voucherify_ingest.rates import limiter_key
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn
from worker.client import VoucherifyClient
from worker.oauth import AccessToken, TokenSource
from worker.ratelimit import RateLimiter

EVENT = {"event": "signed_up", "customer": {"source_id": "u1"}}


@pytest.fixture
def api():
    server = StandIn(APP_ID, APP_TOKEN, token_lifetime_s=60).start()
    try:
        yield server
    finally:
        server.stop()


def _settings(redis_url: str, namespace: str, api_url: str, **env: str) -> Settings:
    return Settings.from_env({
        "REDIS_URL": redis_url,
        "VOUCHERIFY_API_URL": api_url,
        "VOUCHERIFY_APP_ID": APP_ID,
        "VOUCHERIFY_APP_TOKEN": APP_TOKEN,
        "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_QUEUE": f"{namespace}-events",
        "VOUCHERIFY_AUTH": "oauth",
        "VOUCHERIFY_RATE_LIMIT": "off",
        **env,
    })


def _in_threads(n: int, fn) -> list:
    results: list = [None] * n
    errors: list = []

    def run(i: int) -> None:
        try:
            results[i] = fn(i)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return results


def test_fleet_fetches_one_token_and_sends_it_as_bearer(redis_url, redis_client, namespace, api):
    settings = _settings(redis_url, namespace, api.url)
    sources = [TokenSource(settings, redis_client), TokenSource(settings, redis_client)]
    tokens = _in_threads(16, lambda i: sources[i % 2].token())
    assert len(set(tokens)) == 1
    assert api.tokens.issued == 1, "each process (or thread) fetched its own token"

    client = VoucherifyClient(settings, tokens=sources[0])
    try:
        assert client.send_event(EVENT, event_id="e1").status == 200
    finally:
        client.close()
    (record,) = api.received()
    assert record.headers["Authorization"] == f"Bearer {tokens[0]}"
    assert "X-App-Token" not in record.headers, "the pair travelled with every event"
    assert tokens[0] not in repr(sources[0]._cached) and tokens[0] not in repr(settings)


def test_a_401_replaces_the_token_once_for_everyone(redis_url, redis_client, namespace, api):
    settings = _settings(redis_url, namespace, api.url)
    clients = [VoucherifyClient(settings, tokens=TokenSource(settings, redis_client))
               for _ in range(2)]
    try:
        clients[0].send_event(EVENT, event_id="before")
        first = api.received()[0].headers["Authorization"]
        api.tokens.revoke_all()  # the API forgets it (revoked, or expired early)
        statuses = _in_threads(
            12, lambda i: clients[i % 2].send_event(EVENT, event_id=f"after-{i}").status
        )
    finally:
        for client in clients:
            client.close()
    assert statuses == [200] * 12, "an event failed across the token replacement"
    assert api.tokens.issued == 2, "a burst of 401s for one token fetched more than one token"
    after = {r.headers["Authorization"] for r in api.received() if r.status == 200} - {first}
    assert len(after) == 1


def test_a_401_whose_new_token_is_slow_is_sent_later_not_at_once(
    redis_url, redis_client, namespace, api
):
    """After a 401 the event is resent at once only while the ledger claim surely holds (the
    refused POST and the new token within ``resend_after_401_within_s``); a slower token means
    a retry later under a fresh claim, and no second POST now."""
    from voucherify_ingest.errors import RetryableDelivery

    settings = _settings(redis_url, namespace, api.url)
    source = TokenSource(settings, redis_client)
    client = VoucherifyClient(settings, tokens=source)
    refresh = source.refresh_after_rejection

    def slow_refresh(rejected: str) -> str:
        token = refresh(rejected)
        threading.Event().wait(0.3)  # the slow token call itself
        return token

    source.refresh_after_rejection = slow_refresh
    client.resend_after_401_within_s = 0.2
    try:
        client.send_event(EVENT, event_id="before")
        api.tokens.revoke_all()
        with pytest.raises(RetryableDelivery, match="HTTP 401, and the new OAuth token took"):
            client.send_event(EVENT, event_id="after")
        tries = [r.status for r in api.received() if r.event_id == "after"]
        assert tries == [401], tries  # refused once, not sent a second time within the attempt
        assert client.send_event(EVENT, event_id="after").status == 200  # the retry, later
    finally:
        client.close()
    # (a quick replacement is resent at once: test_a_401_replaces_the_token_once_for_everyone)


def test_token_refreshed_ahead_of_expiry(redis_url, redis_client, namespace, api):
    api.tokens.set_lifetime(10)
    settings = _settings(redis_url, namespace, api.url, VOUCHERIFY_OAUTH_REFRESH_AHEAD_S="3")
    source = TokenSource(settings, redis_client)
    first = source.token()
    stored = AccessToken.from_json(redis_client.get(source.key))
    assert stored is not None and stored.value == first
    assert stored.expires_at - stored.refresh_at == pytest.approx(3, abs=0.01)
    ttl_ms = redis_client.pttl(source.key)
    assert 8_000 < ttl_ms <= 10_000, "the shared token must expire with the token"
    # Make it due (as if 7 s had passed): the next call fetches a new one, the old still works.
    redis_client.set(source.key, AccessToken(first, stored.expires_at, 0).to_json(), px=5000)
    source._cached = None
    assert source.token() != first
    assert api.tokens.issued == 2


def test_the_token_call_takes_a_rate_limit_slot(redis_url, redis_client, namespace, api):
    settings = _settings(redis_url, namespace, api.url, VOUCHERIFY_RATE_LIMIT="60/min")
    limiter = RateLimiter.from_settings(settings, redis_client)
    TokenSource(settings, redis_client, limiter).token()
    key = limiter_key(namespace, APP_ID, settings.api_base)
    assert redis_client.exists(key), "the token call did not go through the shared limiter"
    assert Keys.from_settings(settings).prefix == namespace


def test_bad_pair_is_an_auth_error_not_a_token(redis_url, redis_client, namespace, api):
    from voucherify_ingest.errors import AuthRejected

    settings = _settings(redis_url, namespace, api.url).replace(app_token="wrong-token")
    with pytest.raises(AuthRejected) as caught:
        TokenSource(settings, redis_client).token()
    assert "wrong-token" not in str(caught.value)
    assert api.tokens.issued == 0


def test_an_api_rejecting_every_token_does_not_burn_the_token_cap(
    redis_url, redis_client, namespace, api
):
    from voucherify_ingest.errors import AuthRejected

    settings = _settings(redis_url, namespace, api.url)
    client = VoucherifyClient(settings, tokens=TokenSource(settings, redis_client))
    api.set_down(401)  # every event answered 401 (e.g. a token whose scope lacks "events")
    try:
        for i in range(6):
            with pytest.raises(AuthRejected):
                client.send_event(EVENT, event_id=f"e{i}")
    finally:
        client.close()
    assert api.tokens.issued == 2, "each rejected event fetched a token of its own"


class _SlowFirstToken:
    """A TokenSource whose first ``failures`` calls of ``token()`` fail (the token endpoint
    answered 503) and whose next one takes ``delay_s`` (a slow token call, or a wait for another
    worker's fetch); otherwise the real one."""

    def __init__(self, source: TokenSource, delay_s: float, *, failures: int = 0):
        self.source, self.delay_s, self.failures = source, delay_s, failures
        self.calls = 0
        self.started = threading.Event()

    def token(self) -> str:
        from voucherify_ingest.errors import RetryableDelivery

        self.calls += 1
        if self.calls <= self.failures:
            raise RetryableDelivery("OAuth token call failed: HTTP 503", status=503)
        if self.calls == self.failures + 1:
            self.started.set()
            threading.Event().wait(self.delay_s)  # the slow call itself, not a settle wait
        return self.source.token()

    def refresh_after_rejection(self, rejected: str) -> str:
        return self.source.refresh_after_rejection(rejected)

    def close(self) -> None:
        self.source.close()


def test_a_slow_token_call_does_not_let_a_second_worker_send_the_same_event(
    redis_url, redis_client, namespace, api
):
    """The token comes before the ledger claim: a claim taken first would lapse during a slow
    token call (here its lifetime is cut to 0.3 s, standing in for one attempt's bound), and a
    second worker handed the same message would claim it while the first still meant to send
    it. Before the fix the second found the first's send record behind the lapsed claim and
    dead-lettered the event as in doubt while the first delivered it: delivered and
    dead-lettered both (with the rate limiter on, the record is written only just before the
    POST, and the second would have sent it too)."""
    from voucherify_ingest.messages import make_envelope
    from worker.delivery import Deliverer

    settings = _settings(redis_url, namespace, api.url)
    slow = _SlowFirstToken(TokenSource(settings, redis_client), delay_s=0.9)
    first = Deliverer(settings, redis_client=redis_client,
                      http=VoucherifyClient(settings, tokens=slow))
    second = Deliverer(settings, redis_client=redis_client,
                       http=VoucherifyClient(settings, tokens=TokenSource(settings, redis_client)))
    for deliverer in (first, second):
        deliverer.ledger.inflight_ttl_ms = 300
    envelope = make_envelope(EVENT, "evt-slow-token")
    outcomes: dict[str, str] = {}
    worker = threading.Thread(target=lambda: outcomes.update(first=first.handle(envelope).kind))
    try:
        worker.start()
        assert slow.started.wait(5)
        # the same message handed to a second worker once no live claim stops it (before the
        # fix: when the first's claim lapsed mid-token-call; now: at once, nothing is claimed)
        inflight = f"{namespace}:inflight:evt-slow-token"
        wait_for(lambda: not redis_client.exists(inflight), timeout=5, what="no live claim")
        assert slow.started.is_set() and worker.is_alive(), "the first worker already ended"
        outcomes["second"] = second.handle(envelope).kind
        worker.join(10)
    finally:
        first.http.close()
        second.http.close()
    assert api.delivered_ids() == {"evt-slow-token": 1}, outcomes
    assert sorted(outcomes.values()) == ["delivered", "duplicate"], outcomes


def test_a_batch_event_whose_token_call_failed_is_not_sent_inside_its_claim(
    redis_url, redis_client, namespace, api
):
    """In a batch message the events are claimed together and the token is got before each
    event. When that token call failed, the event used to be sent anyway, and the send called
    the token endpoint again inside the claim: a slow success there outlasted the claim, a
    second worker handed the same message found the send record and held the event in doubt
    while the first delivered it (delivered and dead-lettered both). Now the event is handled
    as a failed send (a retry), not sent, and its claim released."""
    from voucherify_ingest.deadletters import DeadLetterStore
    from voucherify_ingest.messages import make_envelope
    from worker.delivery import Deliverer

    settings = _settings(redis_url, namespace, api.url)
    flaky = _SlowFirstToken(TokenSource(settings, redis_client), delay_s=0.9, failures=1)
    first = Deliverer(settings, redis_client=redis_client,
                      http=VoucherifyClient(settings, tokens=flaky))
    second = Deliverer(settings, redis_client=redis_client,
                       http=VoucherifyClient(settings, tokens=TokenSource(settings, redis_client)))
    for deliverer in (first, second):
        deliverer.ledger.inflight_ttl_ms = 300  # one attempt's bound, cut short
    envelope = make_envelope(EVENT, "evt-batch-token")
    outcomes: dict[str, object] = {}
    worker = threading.Thread(
        target=lambda: outcomes.update(first=[o.kind for o in first.handle_batch([envelope])]))
    try:
        worker.start()
        worker.join(0.5)  # ends at once now; before the fix it sat in the slow token call
        inflight = f"{namespace}:inflight:evt-batch-token"
        wait_for(lambda: not redis_client.exists(inflight), timeout=5, what="no live claim")
        outcomes["second"] = second.handle(envelope).kind
        worker.join(10)
    finally:
        first.http.close()
        second.http.close()
    dead = DeadLetterStore(redis_client, Keys.from_settings(settings)).get("evt-batch-token")
    assert dead is None, f"dead-lettered ({dead and dead['reason']}) while delivered: {outcomes}"
    assert api.delivered_ids() == {"evt-batch-token": 1}, outcomes
    assert outcomes == {"first": ["retry"], "second": "delivered"}, outcomes
    assert not flaky.started.is_set(), "the token endpoint was called again for the event"
