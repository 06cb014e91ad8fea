"""End to end from another language's point of view: the official Voucherify Python SDK
(``voucherify`` on PyPI, 6.x) with only its base URL changed -> ``voucherify-ingest serve`` ->
real Redis -> a real ``voucherify-ingest worker`` -> the loopback stand-in API.

Assertions are on what the SDK returned or raised and on what the stand-in received.
"""

from __future__ import annotations

import datetime
import json

import pytest
import voucherify
from voucherify.exceptions import (
    BadRequestException,
    ServiceException,
    UnauthorizedException,
)
from voucherify.models.customer import Customer
from voucherify.models.customer_address import CustomerAddress
from voucherify.models.events_create_request_body import EventsCreateRequestBody
from voucherify.models.events_create_request_body_referral import (
    EventsCreateRequestBodyReferral,
)

from tests.processes.test_serve import CREDENTIALS, OTHER_ID, OTHER_TOKEN, serve_argv, wait_ready
from tests.support.pipeline import APP_ID, APP_TOKEN, make_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def serve_url(make_process, pipeline_env):
    """The ingest endpoint on the same Redis and queue as the worker."""
    env = {**pipeline_env, "VOUCHERIFY_INGEST_CREDENTIALS": CREDENTIALS,
           "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"}
    proc = make_process(serve_argv(), env=env, name="serve")
    return f"http://127.0.0.1:{wait_ready(proc)}"


def _events_api(url: str, app_id: str = OTHER_ID, token: str = OTHER_TOKEN):
    config = voucherify.Configuration(
        host=url, api_key={"X-App-Id": app_id, "X-App-Token": token}
    )
    client = voucherify.ApiClient(config)
    return client, voucherify.EventsApi(client)


def _body(n: int) -> EventsCreateRequestBody:
    return EventsCreateRequestBody(
        event="order_paid",
        customer=Customer(
            source_id=f"user-{n}", email=f"user{n}@example.com", name="Ada Lovelace",
            birthdate=datetime.date(1990, 1, 2),
            address=CustomerAddress(line_1="1 Main St", postal_code="00-001", city="Warsaw"),
            metadata={"tier": "gold"},
        ),
        referral=EventsCreateRequestBodyReferral(code="REF-1", referrer_id="cust_abc"),
        metadata={"n": n, "total": 12.5},
    )


def test_sdk_events_are_enqueued_then_delivered_by_a_worker_wire_valid(
    standin, serve_url, start_worker
):
    client, api = _events_api(serve_url)
    sent: dict[str, int] = {}
    with client:
        for n in range(30):
            answer = api.track_custom_event_with_http_info(_body(n))
            assert answer.status_code == 200
            # The SDK parsed our answer as Voucherify's EventsCreateResponseBody.
            event = answer.data
            assert event.object == "event" and event.type == "order_paid"
            assert event.customer.source_id == f"user-{n}"
            assert event.customer.object == "customer"
            assert event.metadata == {"n": n, "total": 12.5}
            sent[answer.headers["x-ingest-event-id"]] = n  # a plain dict, lower-case names
        # The plain call returns the parsed model too.
        plain = api.track_custom_event(_body(99))
        assert plain.customer.email == "user99@example.com"
    assert standin.received() == []  # nothing is sent before a worker runs
    start_worker()
    assert standin.wait_for_delivered(31, timeout=60), f"only {len(standin.delivered())}"
    received = standin.received()
    assert len(received) == 31
    by_id = {r.event_id: r for r in received}
    assert set(sent) <= set(by_id)
    for event_id, n in sent.items():
        record = by_id[event_id]
        assert record.status == 200
        assert record.schema_valid, record.schema_errors
        # The worker's own Voucherify credentials: the callers' are never forwarded.
        assert record.headers.get("X-App-Id") == APP_ID
        assert record.headers.get("X-App-Token") == APP_TOKEN
        assert OTHER_TOKEN not in json.dumps(record.headers)
        assert record.body == {
            "event": "order_paid",
            "customer": {
                "source_id": f"user-{n}", "email": f"user{n}@example.com",
                "name": "Ada Lovelace", "birthdate": "1990-01-02",
                "address": {"line_1": "1 Main St", "postal_code": "00-001", "city": "Warsaw"},
                "metadata": {"tier": "gold"},
            },
            "referral": {"code": "REF-1", "referrer_id": "cust_abc"},
            "metadata": {"n": n, "total": 12.5},
        }


def test_sdk_error_handling_works_unchanged(serve_url, pipeline_settings, redis_client):
    """400 and 401 arrive as the SDK's own exceptions, with Voucherify's error body."""
    client, api = _events_api(serve_url)
    with client, pytest.raises(BadRequestException) as bad:
        api.track_custom_event(EventsCreateRequestBody(
            event="signed_up", customer=Customer(email="no-id@example.com")))
    assert bad.value.status == 400
    error = json.loads(bad.value.body)
    assert error["code"] == 400 and error["key"] == "invalid_payload"
    assert error["message"] == "Invalid payload"
    assert error["details"] == "customer: must carry a non-empty id or source_id"
    assert error["request_id"].startswith("v-")

    client, api = _events_api(serve_url, token="not-the-token")
    with client, pytest.raises(UnauthorizedException) as denied:
        api.track_custom_event(_body(1))
    assert denied.value.status == 401
    assert json.loads(denied.value.body)["key"] == "unauthorized"
    assert redis_client.llen(pipeline_settings.queue) == 0


def test_sdk_sees_503_not_success_when_redis_is_down(
    make_process, make_redis_server, namespace, standin
):
    server = make_redis_server(appendonly=True)
    env = make_env(server.url, namespace, standin.url,
                   VOUCHERIFY_INGEST_CREDENTIALS=CREDENTIALS, VOUCHERIFY_REDIS_TIMEOUT_S="0.5")
    proc = make_process(serve_argv(), env=env, name="serve")
    client, api = _events_api(f"http://127.0.0.1:{wait_ready(proc)}")
    with client:
        assert api.track_custom_event(_body(1)).type == "order_paid"
        server.kill()
        with pytest.raises(ServiceException) as down:
            api.track_custom_event(_body(2))
    assert down.value.status == 503
    assert json.loads(down.value.body)["key"] == "service_unavailable"
    assert int(dict(down.value.headers)["retry-after"]) >= 1
