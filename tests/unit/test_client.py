"""HTTP outcomes are classified in one place: worker.client.classify (and the real client
against the loopback stand-in)."""

from __future__ import annotations

import json

import pytest

from voucherify_ingest.errors import (
    AuthRejected,
    PermanentDelivery,
    QuotaExhausted,
    RateLimited,
    RetryableDelivery,
)
from voucherify_ingest.settings import Settings
from voucherify_ingest.standin import StandIn, drop, garbage, html, respond, stall
from worker.client import VoucherifyClient, classify, parse_retry_after

ERROR_BODY = json.dumps({
    "code": 404, "key": "not_found", "message": "Resource not found",
    "details": "Cannot find customer with id x", "request_id": "v-0dc6",
}).encode()


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, PermanentDelivery), (401, AuthRejected), (402, QuotaExhausted),
        (403, AuthRejected), (404, PermanentDelivery), (409, PermanentDelivery),
        (413, PermanentDelivery), (422, PermanentDelivery), (418, PermanentDelivery),
        (408, RetryableDelivery), (429, RateLimited), (500, RetryableDelivery),
        (502, RetryableDelivery), (503, RetryableDelivery), (504, RetryableDelivery),
    ],
)
def test_status_mapping(status, kind):
    error = classify(status, {}, ERROR_BODY)
    assert type(error) is kind
    assert error.status == status
    assert error.retryable == issubclass(kind, RetryableDelivery)


def test_2xx_is_success():
    assert classify(200, {}, b"{}") is None
    assert classify(202, {}, b"") is None


def test_error_fields_travel_on_the_exception():
    error = classify(404, {}, ERROR_BODY)
    assert error.key == "not_found"
    assert error.request_id == "v-0dc6"
    assert error.code == 404
    assert "Resource not found" in str(error)
    assert error.as_dict()["details"] == "Cannot find customer with id x"


def test_html_gateway_page_is_retryable_and_truncated():
    page = b"<html><body>" + b"x" * 50_000 + b"</body></html>"
    error = classify(502, {"Content-Type": "text/html"}, page)
    assert isinstance(error, RetryableDelivery)
    assert error.key is None
    assert len(error.body_excerpt) <= 2000


def test_429_cycle_quota_is_permanent():
    error = classify(429, {"X-Rate-Limit-Type": "api_calls_cycle"}, b"{}")
    assert isinstance(error, QuotaExhausted)
    assert error.reason == "quota_exhausted"


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now_epoch_s=1445412470) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    error = classify(429, {"X-Rate-Limit-Retry": "2000000000"}, b"{}")
    assert error.retry_after_s > 0


@pytest.fixture
def client(api):
    settings = Settings.from_env({
        "VOUCHERIFY_API_URL": api.url, "VOUCHERIFY_APP_ID": "app",
        "VOUCHERIFY_APP_TOKEN": "token-123456", "VOUCHERIFY_READ_TIMEOUT_S": "0.5",
        "VOUCHERIFY_CONNECT_TIMEOUT_S": "0.5",
    })
    c = VoucherifyClient(settings)
    yield c
    c.close()


EVENT = {"event": "signed_up", "customer": {"source_id": "u1"}}


def test_real_delivery_sends_headers_and_json(api, client):
    result = client.send_event(EVENT, "evt-1")
    assert result.status == 200
    (record,) = api.received()
    assert record.body == EVENT
    assert record.event_id == "evt-1"
    assert record.headers["X-App-Token"] == "token-123456"
    assert record.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("action", "kind"),
    [
        (respond(400), PermanentDelivery), (respond(401), AuthRejected),
        (respond(429, headers={"Retry-After": "2"}), RateLimited),
        (respond(503), RetryableDelivery), (stall(1.5), RetryableDelivery),
        (drop(), RetryableDelivery), (html(502), RetryableDelivery),
    ],
)
def test_real_failures_are_classified(api, client, action, kind):
    api.plan(action)
    with pytest.raises(kind) as info:
        client.send_event(EVENT, "evt-2")
    if isinstance(info.value, RateLimited):
        assert info.value.retry_after_s == 2.0


@pytest.mark.parametrize("kind", ["truncated_json", "empty_200", "html_200"])
def test_garbage_200_counts_as_delivered(api, client, kind):
    api.plan(garbage(kind))
    assert client.send_event(EVENT).status == 200


def test_wrong_token_is_auth_error():
    with StandIn("app", "right-token").start() as api:
        settings = Settings.from_env({
            "VOUCHERIFY_API_URL": api.url, "VOUCHERIFY_APP_ID": "app",
            "VOUCHERIFY_APP_TOKEN": "wrong-token",
        })
        c = VoucherifyClient(settings)
        try:
            with pytest.raises(AuthRejected) as info:
                c.send_event(EVENT)
        finally:
            c.close()
    assert "wrong-token" not in str(info.value)
    assert info.value.reason == "auth"
