"""The Voucherify stand-in, exercised over real loopback HTTP with ``requests``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from voucherify_ingest.standin import StandIn, drop, garbage, html, respond, stall
from voucherify_ingest.standin import wire as standin_wire

pytestmark = pytest.mark.timeout(30)

AUTH = {"X-App-Id": "test-app", "X-App-Token": "test-token"}
GOOD = {"event": "signed_up", "customer": {"source_id": "u-1", "name": "Ann"}, "metadata": {"k": 1}}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api():
    with StandIn() as standin:
        yield standin


@pytest.fixture
def http():
    with requests.Session() as session:
        session.trust_env = False
        yield session


def post(http, api, body=GOOD, event_id="e-1", headers=None, **kwargs):
    hdrs = {**AUTH, "X-Ingest-Event-Id": event_id, **(headers or {})}
    kwargs.setdefault("timeout", 5)
    return http.post(f"{api.url}/v1/events", json=body, headers=hdrs, **kwargs)


def test_valid_event_answers_the_documented_shape_and_is_recorded(api, http):
    r = post(http, api)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert "X-Rate-Limit-Limit" not in r.headers  # no rate limit configured
    body = r.json()
    assert body["object"] == "event" and body["type"] == "signed_up"
    assert body["referral"] is None and body["loyalty"] is None
    assert body["metadata"] == {"k": 1}
    customer = body["customer"]
    assert customer["id"].startswith("cust_") and customer["source_id"] == "u-1"
    assert customer["name"] == "Ann" and customer["object"] == "customer"
    assert post(http, api).json()["customer"]["id"] == customer["id"]  # stable per source_id

    assert api.wait_for_delivered(2, timeout=1)
    rec = api.received()[0]
    assert (rec.event_id, rec.status, rec.body) == ("e-1", 200, GOOD)
    assert rec.schema_valid and rec.schema_checked and rec.schema_errors == []
    assert rec.headers["X-App-Id"] == "test-app"
    assert rec.at <= time.time() and rec.mono <= time.monotonic()
    assert api.delivered_ids() == {"e-1": 2}


def test_wait_for_delivered_times_out(api):
    started = time.monotonic()
    assert not api.wait_for_delivered(1, timeout=0.2)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "headers, details",
    [
        ({}, "Missing"),
        ({"X-App-Id": "test-app", "X-App-Token": "wrong"}, "Invalid"),
        ({"X-App-Id": "other", "X-App-Token": "test-token"}, "Invalid"),
    ],
)
def test_bad_credentials_answer_401_in_voucherify_format(api, http, headers, details):
    r = http.post(f"{api.url}/v1/events", json=GOOD, headers=headers, timeout=5)
    assert r.status_code == 401
    err = r.json()
    assert (err["code"], err["key"], err["message"]) == (401, "unauthorized", "Unauthorized")
    assert err["details"].startswith(details) and err["request_id"].startswith("v-")
    assert api.delivered() == [] and api.received()[0].status == 401


@pytest.mark.parametrize(
    "body, fragment",
    [
        ({"customer": {"source_id": "u"}}, "'event' is a required property"),
        ({"event": "x"}, "'customer' is a required property"),
        ({"event": "", "customer": {}}, ".event"),
        ({"event": "x", "customer": {"address": 5}}, ".customer.address"),
        ({"event": "x", "customer": {"birthdate": "2020-02-30"}}, ".customer.birthdate"),
        ({"event": "x", "customer": {}, "referral": {}}, ".referral: 'code'"),
        ({"event": "x", "customer": {}, "loyalty": {"code": 7}}, ".loyalty.code"),
        ({"event": "x", "customer": {}, "metadata": []}, ".metadata"),
    ],
)
def test_schema_invalid_body_answers_400_invalid_payload(api, http, body, fragment):
    r = post(http, api, body=body)
    assert r.status_code == 400
    err = r.json()
    assert err["key"] == "invalid_payload" and err["code"] == 400
    assert fragment in err["details"]
    rec = api.received()[0]
    assert not rec.schema_valid and any(fragment in e for e in rec.schema_errors)


def test_nullable_address_is_accepted(api, http):
    customer = {"source_id": "u", "address": None, "birthdate": "1990-01-31"}
    body = {"event": "x", "customer": customer}
    assert post(http, api, body=body).status_code == 200


def test_non_json_content_type_and_body_are_refused(api, http):
    url = f"{api.url}/v1/events"
    text = {**AUTH, "Content-Type": "text/plain"}
    as_json = {**AUTH, "Content-Type": "application/json"}
    r = http.post(url, data="event=x", headers=text, timeout=5)
    assert r.status_code == 400 and "Content-Type" in r.json()["details"]
    r = http.post(url, data="{nope", headers=as_json, timeout=5)
    assert r.status_code == 400 and "not valid JSON" in r.json()["details"]
    assert api.received()[1].body == "{nope"


def test_chunked_bodies_are_read_and_oversized_ones_refused(api, http):
    def chunks():
        yield b'{"event": "x", '
        yield b'"customer": {"id": "cust_1"}}'

    headers = {**AUTH, "Content-Type": "application/json"}
    r = http.post(f"{api.url}/v1/events", data=chunks(), headers=headers, timeout=5)
    assert r.status_code == 200 and r.json()["customer"]["id"] == "cust_1"
    host, port = api.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 999999999\r\n\r\n")
        reply = sock.makefile("rb")
        try:
            assert reply.readline().startswith(b"HTTP/1.1 413")
        finally:
            reply.close()


def test_without_jsonschema_bodies_are_parsed_but_not_checked(api, http, monkeypatch):
    monkeypatch.setattr(standin_wire, "jsonschema", None)
    standin_wire._validator.cache_clear()
    try:
        assert post(http, api, body={"event": 5}).status_code == 200
        assert post(http, api, body=[1]).status_code == 400
    finally:
        standin_wire._validator.cache_clear()
    first, second = api.received()
    assert first.schema_valid and not first.schema_checked
    assert not second.schema_valid and not second.schema_checked


def test_concurrent_clients_are_all_recorded(api):
    def client(worker):
        with requests.Session() as session:
            for i in range(40):
                assert post(session, api, event_id=f"{worker}-{i}").status_code == 200

    threads = [threading.Thread(target=client, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert api.wait_for_delivered(240, timeout=5)
    ids = api.delivered_ids()
    assert len(ids) == 240 and set(ids.values()) == {1}
    assert api.stats()["duplicates"] == 0


def test_unknown_path_and_method_answer_404_and_405(api, http):
    r = http.get(f"{api.url}/v1/customers", timeout=5)
    assert r.status_code == 404 and r.json()["key"] == "not_found"
    r = http.get(f"{api.url}/v1/events", timeout=5)
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.json()["code"] == 405
    assert api.received() == []  # only POST /v1/events is recorded


def test_planned_statuses_are_one_shot_and_in_order(api, http):
    api.plan(respond(429), respond(503, headers={"Retry-After": "7"}), respond(401, body={"x": 1}))
    r = post(http, api)
    assert r.status_code == 429
    assert r.json() == {"code": 429, "message": "Too many requests hit the API too quickly."}
    r = post(http, api)
    assert r.status_code == 503 and r.headers["Retry-After"] == "7"
    assert r.json()["key"] == "service_unavailable"
    assert post(http, api).json() == {"x": 1}
    assert post(http, api).status_code == 200  # plan used up: default behaviour again
    assert [rec.status for rec in api.received()] == [429, 503, 401, 200]


def test_stall_beats_a_short_read_timeout_but_is_still_delivered(api, http):
    api.plan(stall(1.0))
    started = time.monotonic()
    with pytest.raises(requests.ReadTimeout):
        post(http, api, timeout=(1, 0.2))
    assert time.monotonic() - started < 0.9
    assert api.wait_for_delivered(1, timeout=5)  # the API processed it: a duplicate hazard
    assert api.received()[0].outcome == "stalled"


def test_drop_closes_the_connection_without_an_answer(api, http):
    api.plan(drop())
    with pytest.raises(requests.ConnectionError):
        post(http, api)
    assert api.received()[0].status == 0
    assert post(http, api).status_code == 200  # the next request opens a new connection


def test_html_gateway_page(api, http):
    api.plan(html(502))
    r = post(http, api)
    assert r.status_code == 502 and r.headers["Content-Type"].startswith("text/html")
    assert "<html>" in r.text
    with pytest.raises(ValueError):
        r.json()


def test_garbage_answers(api, http):
    api.plan(garbage("truncated_json"), garbage("empty_200"), garbage("huge"), garbage("html_200"))
    r = post(http, api)
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    r = post(http, api)
    assert r.status_code == 200 and r.content == b""
    r = post(http, api)
    assert r.status_code == 200 and len(r.content) >= 5 * 1024 * 1024
    r = post(http, api)
    assert r.status_code == 200 and r.text.startswith("<html>")


def test_plan_refuses_malformed_actions(api):
    for bad in ({"respond": 42}, {"stall": -1}, {"garbage": "odd"}, {}, {"drop": 1, "html": 502}):
        with pytest.raises(ValueError):
            api.plan(bad)


def test_rate_limit_answers_429_with_headers(api, http):
    api.set_rate_limit(1, burst=2)
    first, second, third = (post(http, api) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (200, 200, 429)
    assert first.headers["X-Rate-Limit-Limit"] == "2"
    assert first.headers["X-Rate-Limit-Remaining"] == "1"
    assert second.headers["X-Rate-Limit-Remaining"] == "0"
    assert third.headers["X-Rate-Limit-Remaining"] == "0"
    assert int(third.headers["Retry-After"]) >= 1
    assert int(third.headers["X-Rate-Limit-Retry"]) >= int(time.time())
    assert third.json()["code"] == 429
    assert api.too_many_count() == 1
    time.sleep(1.05)  # one slot refills every second
    assert post(http, api).status_code == 200
    api.set_rate_limit(None)
    assert all(post(http, api).status_code == 200 for _ in range(5))
    assert api.too_many_count() == 1


def test_refuse_for_is_a_429_storm_that_ends(api, http):
    api.refuse_for(0.5)
    r = post(http, api)
    assert r.status_code == 429 and r.headers["Retry-After"] == "1"  # rounded up, at least 1
    assert int(r.headers["X-Rate-Limit-Retry"]) >= int(time.time())
    api.refuse_for(0.5, retry_after_s=4)
    assert post(http, api).headers["Retry-After"] == "4"
    time.sleep(0.55)
    assert post(http, api).status_code == 200


def test_down_latency_and_chaos(api, http):
    api.set_down(503, headers={"Retry-After": "2"})
    r = post(http, api)
    assert r.status_code == 503 and r.headers["Retry-After"] == "2"
    api.set_up()
    api.set_latency(0.1)
    started = time.monotonic()
    assert post(http, api).status_code == 200
    assert time.monotonic() - started >= 0.1
    api.set_latency(0)
    api.set_chaos(p_503=1.0)
    assert post(http, api).status_code == 503
    api.set_chaos(p_429=1.0, retry_after_s=3)
    r = post(http, api)
    assert r.status_code == 429 and r.headers["Retry-After"] == "3"
    api.set_chaos()
    assert post(http, api).status_code == 200


def test_chaos_is_reproducible_from_the_seed(http):
    def statuses(seed):
        with StandIn(seed=seed) as api:
            api.set_chaos(p_503=0.5)
            return [post(http, api).status_code for _ in range(12)]

    assert statuses(7) == statuses(7)
    assert {200, 503} <= set(statuses(7))


def test_http_control_endpoints(api, http):
    control = f"{api.url}/_standin"
    r = http.post(f"{control}/config", json={"plan": [{"respond": 400}, {"html": 502}]}, timeout=5)
    assert r.status_code == 200 and len(r.json()["config"]["plan"]) == 2
    assert post(http, api).status_code == 400
    assert post(http, api).status_code == 502
    assert post(http, api, event_id="dup").status_code == 200
    assert post(http, api, event_id="dup").status_code == 200

    received = http.get(f"{control}/received", timeout=5).json()
    assert [(r["event_id"], r["status"]) for r in received][-1] == ("dup", 200)
    assert received[0]["body"] == GOOD and received[0]["schema_valid"] is True
    stats = http.get(f"{control}/stats", timeout=5).json()
    assert stats["total"] == 4 and stats["delivered"] == 2
    assert stats["by_status"] == {"400": 1, "502": 1, "200": 2}
    assert stats["duplicates"] == 1

    for change, status in [({"down": 503}, 503), ({"up": True}, 200)]:
        assert http.post(f"{control}/config", json=change, timeout=5).status_code == 200
        assert post(http, api).status_code == status
    config = {"rate_limit": {"per_second": 1, "burst": 1}, "latency_s": 0.01}
    assert http.post(f"{control}/config", json=config, timeout=5).status_code == 200
    assert [post(http, api).status_code for _ in range(2)] == [200, 429]
    refuse = {"refuse_for": {"seconds": 5, "retry_after_s": 2}, "rate_limit": None}
    assert http.post(f"{control}/config", json=refuse, timeout=5).status_code == 200
    assert post(http, api).headers["Retry-After"] == "2"

    bad = http.post(f"{control}/config", json={"nonsense": 1}, timeout=5)
    assert bad.status_code == 400 and bad.json()["code"] == 400
    bad = http.post(f"{control}/config", json={"plan": [{"respond": "x"}]}, timeout=5)
    assert bad.status_code == 400

    assert http.post(f"{control}/reset", timeout=5).json() == {"ok": True}
    assert http.get(f"{control}/stats", timeout=5).json()["total"] == 0
    assert post(http, api).status_code == 200  # reset undid the storm too
    assert http.get(f"{control}/received", timeout=5).status_code == 200
    assert http.post(f"{control}/stats", timeout=5).status_code == 405
    assert http.get(f"{control}/nope", timeout=5).status_code == 404


def test_keep_alive_and_stop_closes_idle_connections(http):
    api = StandIn().start()
    url = api.url
    try:
        for _ in range(3):
            assert post(http, api).status_code == 200
        assert len(api._server._live) == 1  # one kept-alive connection served all three
    finally:
        api.stop()
    with pytest.raises(requests.ConnectionError):  # the pooled connection was cut, port closed
        http.post(f"{url}/v1/events", json=GOOD, headers=AUTH, timeout=1)


def test_stop_wakes_a_stalled_handler_quickly(http):
    api = StandIn().start()
    api.plan(stall(20))
    url = api.url
    try:
        with pytest.raises(requests.ReadTimeout):
            http.post(f"{url}/v1/events", json=GOOD, headers=AUTH, timeout=(1, 0.2))
    finally:
        started = time.monotonic()
        api.stop()
    assert time.monotonic() - started < 3


def test_cli_serves_until_sigterm():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        sys.executable,
        "-m",
        "voucherify_ingest.standin",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--app-id",
        "X",
        "--app-token",
        "Y",
        "--latency-ms",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("standin listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        with requests.Session() as session:
            headers = {"X-App-Id": "X", "X-App-Token": "Y"}
            r = session.post(f"{url}/v1/events", json=GOOD, headers=headers, timeout=5)
            assert r.status_code == 200
            assert session.get(f"{url}/_standin/stats", timeout=5).json()["delivered"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        proc.stdout.close()
