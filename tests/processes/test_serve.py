"""The HTTP ingest endpoint (`voucherify-ingest serve`), as a real server process on real Redis.

Every answer is checked against what is (or is not) in the Redis queue afterwards: a 200 means
the event is stored, anything else means nothing was. Pure helpers (credentials, rate limit,
body checks) are tested alone at the end.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from producers.serve.auth import Authenticator, CallerRateLimit, parse_rate
from producers.serve.body import JSON_MAX_DEPTH, BodyError, is_json_media_type, parse_json
from producers.serve.pusher import BatchPusher, make_async_redis
from tests.support.procs import ManagedProcess
from voucherify_ingest.errors import ConfigError, InvalidEvent, format_messages
from voucherify_ingest.events import validate_event
from voucherify_ingest.settings import Settings

APP_ID, APP_TOKEN = "shop-web", "ingest-token-" + "a1b2c3d4e5f6"
OTHER_ID, OTHER_TOKEN = "shop-batch", "ingest-token-" + "zz99yy88xx77"
CREDENTIALS = f"{APP_ID}:{APP_TOKEN},{OTHER_ID}:{OTHER_TOKEN}"
MAX_PAYLOAD = 4096  # small, so oversized bodies are cheap to build
AUTH = {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN}
JSON = {"Content-Type": "application/json"}
EVENT = {
    "event": "order_paid",
    "customer": {"sourceId": "user-7", "email": "ada@example.com", "name": "Ada",
                 "metadata": {"tier": "gold"}, "address": {"postalCode": "00-001"}},
    "metadata": {"order_id": "o-1", "total": 12.5},
}
ERROR_KEYS = {"code", "key", "message", "details", "request_id"}
REQUEST_ID = re.compile(r"^v-[0-9a-f]{18}$")
READY_TIMEOUT_S = 30


# -- a server process --------------------------------------------------------------------------


def serve_env(redis_url: str, queue: str, **overrides: str) -> dict[str, str]:
    env = {
        "REDIS_URL": redis_url,
        "VOUCHERIFY_QUEUE": queue,
        "VOUCHERIFY_KEY_PREFIX": queue,
        "VOUCHERIFY_INGEST_CREDENTIALS": CREDENTIALS,
        "VOUCHERIFY_MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD),
        "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5",
        "VOUCHERIFY_LOG_FORMAT": "json",
        # The server must not pick up a worker's API credentials by accident.
        "VOUCHERIFY_APP_ID": None,
        "VOUCHERIFY_APP_TOKEN": None,
    }
    env.update(overrides)
    return env


def serve_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "voucherify_ingest.cli", "serve", "--port", "0", *args]


def wait_ready(proc: ManagedProcess) -> int:
    """The port from the ``serve_ready`` log line (``--port 0`` picks a free one)."""
    line = proc.wait_for_output(re.compile(r'^.*"serve_ready".*$', re.M), timeout=READY_TIMEOUT_S)
    return int(re.search(r'"port": (\d+)', line).group(1))


class Client:
    """A tiny HTTP/1.1 client on 127.0.0.1 (a fresh connection per request)."""

    def __init__(self, port: int):
        self.port = port

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, dict):
            body = json.dumps(body)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            conn.close()

    def post(self, body, headers=None):
        return self.request("POST", "/v1/events", body, {**JSON, **AUTH, **(headers or {})})


def queued(client: redis.Redis, queue: str) -> list[dict]:
    """The envelopes in the queue, oldest first (what a worker will deliver)."""
    envelopes = []
    for raw in reversed(client.lrange(queue, 0, -1)):
        message = json.loads(raw)
        (args, _kwargs, _embed) = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["id"] == args[0]["id"]
        envelopes.append(args[0])
    return envelopes


def assert_error(status: int, headers: dict, body: bytes, code: int, key: str) -> dict:
    """Voucherify's error format, nothing more: no traceback, no internals."""
    assert status == code, body
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)
    assert set(error) <= ERROR_KEYS and {"code", "key", "message", "request_id"} <= set(error)
    assert error["code"] == code and error["key"] == key
    assert REQUEST_ID.match(error["request_id"])
    assert b"Traceback" not in body and b'File "' not in body
    return error


@pytest.fixture(scope="module")
def server(redis_server) -> Iterator[tuple[Client, str]]:
    queue = "tserve-" + secrets.token_hex(4)
    proc = ManagedProcess(serve_argv("--rate-limit", "off"),
                          env=serve_env(redis_server.url, queue), name="serve")
    proc.start()
    try:
        yield Client(wait_ready(proc)), queue
    finally:
        proc.terminate(timeout=15)
        client = redis_server.client()
        client.delete(queue)
        client.close()
        assert APP_TOKEN not in proc.output() and OTHER_TOKEN not in proc.output()


@pytest.fixture
def api(server, redis_server) -> Iterator[tuple[Client, redis.Redis, str]]:
    client, queue = server
    rclient = redis_server.client()
    rclient.delete(queue)
    try:
        yield client, rclient, queue
    finally:
        rclient.delete(queue)
        rclient.close()


# -- the happy path ----------------------------------------------------------------------------


def test_valid_event_is_stored_before_200_and_answered_like_voucherify(api):
    client, rclient, queue = api
    status, headers, body = client.post(EVENT)
    assert status == 200, body
    event_id = headers["x-ingest-event-id"]
    (envelope,) = queued(rclient, queue)
    assert envelope["id"] == event_id
    assert envelope["payload"] == validate_event(EVENT)  # snake_case wire form
    assert envelope["payload"]["customer"]["source_id"] == "user-7"
    answer = json.loads(body)
    assert answer == {
        "object": "event",
        "type": "order_paid",
        "customer": {"source_id": "user-7", "email": "ada@example.com", "name": "Ada",
                     "metadata": {"tier": "gold"}, "object": "customer"},
        "referral": None,
        "loyalty": None,
        "metadata": {"order_id": "o-1", "total": 12.5},
    }


def test_bearer_token_and_charset_parameter_are_accepted(api):
    client, rclient, queue = api
    status, headers, _ = client.request(
        "POST", "/v1/events", EVENT,
        {"Authorization": f"Bearer {OTHER_TOKEN}",
         "Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert status == 200
    assert [e["id"] for e in queued(rclient, queue)] == [headers["x-ingest-event-id"]]


def test_caller_chosen_event_id_is_used_and_checked(api):
    client, rclient, queue = api
    status, headers, _ = client.post(EVENT, {"X-Ingest-Event-Id": "order-1:paid"})
    assert status == 200 and headers["x-ingest-event-id"] == "order-1:paid"
    status, headers, body = client.post(EVENT, {"X-Ingest-Event-Id": "has space"})
    error = assert_error(status, headers, body, 400, "invalid_payload")
    assert error["details"].startswith("event_id: ")
    # Stored scoped to the ingest credential (issue 14); the caller keeps its own id.
    assert [e["id"] for e in queued(rclient, queue)] == [f"{APP_ID}:order-1:paid"]


def test_lane_header_puts_the_event_on_its_lane_and_refuses_unknown_lanes(api):
    client, rclient, queue = api
    bulk_queue = f"{queue}.bulk"
    rclient.delete(bulk_queue)
    try:
        status, headers, _ = client.post(EVENT, {"X-Ingest-Lane": "bulk"})
        assert status == 200
        (envelope,) = queued(rclient, bulk_queue)
        assert envelope["id"] == headers["x-ingest-event-id"] and envelope["lane"] == "bulk"
        status, headers, _ = client.post(EVENT, {"X-Ingest-Lane": "live"})
        assert status == 200 and [e["id"] for e in queued(rclient, queue)] == [
            headers["x-ingest-event-id"]]
        status, headers, body = client.post(EVENT, {"X-Ingest-Lane": "express"})
        error = assert_error(status, headers, body, 400, "invalid_payload")
        assert "unknown lane 'express'" in error["message"] + error.get("details", "")
        assert rclient.llen(queue) == 1 and rclient.llen(bulk_queue) == 1  # nothing stored
    finally:
        rclient.delete(bulk_queue)


def test_concurrent_requests_each_get_their_own_stored_event(api):
    """Micro-batched LPUSHes: every answer names an event that is in Redis, none twice."""
    client, rclient, queue = api
    answers: list[tuple[int, str | None, int]] = []
    lock = threading.Lock()

    def caller(n: int) -> None:
        for i in range(10):
            event = {**EVENT, "metadata": {"n": n * 100 + i}}
            status, headers, _ = client.post(event)
            with lock:
                answers.append((status, headers.get("x-ingest-event-id"), n * 100 + i))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 160 and all(status == 200 for status, _, _ in answers)
    stored = {e["id"]: e["payload"]["metadata"]["n"] for e in queued(rclient, queue)}
    assert len(stored) == 160
    assert stored == {event_id: n for _, event_id, n in answers}


def test_health_and_readiness(api):
    client, _, _ = api
    assert client.request("GET", "/healthz")[0] == 200
    status, _, body = client.request("GET", "/readyz")
    assert status == 200 and json.loads(body) == {"status": "ok"}
    assert client.request("HEAD", "/healthz")[0] == 200


# -- refusals: nothing is stored ---------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {},
    {"X-App-Id": APP_ID},
    {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN + "x"},
    {"X-App-Id": APP_ID, "X-App-Token": APP_TOKEN[:-1]},
    {"X-App-Id": "someone", "X-App-Token": APP_TOKEN},
    {"X-App-Id": APP_ID, "X-App-Token": OTHER_TOKEN},  # a token of another pair
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Basic {APP_TOKEN}"},
    {"Authorization": "Bearer "},
], ids=["none", "id-only", "token-longer", "token-shorter", "wrong-id", "cross-pair",
        "bearer-wrong", "basic-scheme", "bearer-empty"])
def test_wrong_or_missing_credentials_get_401(api, headers):
    client, rclient, queue = api
    status, got, body = client.request("POST", "/v1/events", EVENT, {**JSON, **headers})
    assert_error(status, got, body, 401, "unauthorized")
    assert APP_TOKEN.encode() not in body
    assert rclient.llen(queue) == 0


def test_invalid_event_gets_400_with_field_messages(api):
    client, rclient, queue = api
    bad = {"event": "", "costumer": {"source_id": "u"}, "metadata": {"x": [1, {"y": None}]}}
    status, headers, body = client.post(bad)
    error = assert_error(status, headers, body, 400, "invalid_payload")
    assert error["message"] == "Invalid payload"
    with pytest.raises(InvalidEvent) as expected:
        validate_event(bad)
    assert error["details"] == format_messages(expected.value.messages)
    assert "costumer: Unknown field." in error["details"]
    assert rclient.llen(queue) == 0


@pytest.mark.parametrize("raw, fragment", [
    (b'{"event": "x", "customer": ', "not valid JSON"),
    (b"", "empty"),
    (b"   ", "empty"),
    (b'{"event": "\xff\xfe"}', "UTF-8"),
    (b"[1, 2]", "event payload must be a JSON object"),
    (b'"just a string"', "event payload must be a JSON object"),
    (b"[" * (JSON_MAX_DEPTH + 1) + b"]" * (JSON_MAX_DEPTH + 1), "nests deeper"),
    (b'{"event":"x","customer":{"id":"c"},"metadata":{"n":' + b"9" * 5000 + b"}}", "too long"),
    (b'{"event":"x","customer":{"id":"c"},"metadata":{"n":NaN}}', "metadata"),
], ids=["truncated", "empty", "blank", "not-utf8", "array", "string", "too-deep", "huge-int",
        "nan"])
def test_malformed_bodies_get_400(api, raw, fragment):
    client, rclient, queue = api
    status, headers, body = client.post(raw)
    error = assert_error(status, headers, body, 400, "invalid_payload")
    assert fragment in error["details"]
    assert rclient.llen(queue) == 0


def test_oversized_bodies_get_413_unread(api):
    client, rclient, queue = api
    huge = json.dumps({**EVENT, "metadata": {"pad": "x" * (3 * MAX_PAYLOAD)}})
    status, headers, body = client.post(huge)
    error = assert_error(status, headers, body, 413, "payload_too_large")
    assert f"over {2 * MAX_PAYLOAD} bytes" in error["details"]
    assert headers.get("connection") == "close"
    # Chunked, so no Content-Length announces the size: cut off while reading.
    # The server answers 413 and closes; a client still sending may see that answer, or only
    # the closed connection (EPIPE/ECONNRESET) when the close wins the race. Either way the
    # body was not read to the end and nothing was stored.
    conn = http.client.HTTPConnection("127.0.0.1", client.port, timeout=10)
    try:
        chunks = (b"x" * 1024 for _ in range(3 * MAX_PAYLOAD // 1024))
        try:
            conn.request("POST", "/v1/events", body=chunks, headers={**JSON, **AUTH},
                         encode_chunked=True)
            response = conn.getresponse()
        except (BrokenPipeError, ConnectionResetError):
            response = None
        if response is not None:
            assert_error(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read(), 413, "payload_too_large")
    finally:
        conn.close()
    assert rclient.llen(queue) == 0


def test_event_over_the_payload_cap_gets_413_with_the_size(api):
    """The body fits the transport limit, but the event is over VOUCHERIFY_MAX_PAYLOAD_BYTES."""
    client, rclient, queue = api
    event = {**EVENT, "metadata": {"pad": "x" * (MAX_PAYLOAD + 100)}}
    status, headers, body = client.post(event)
    error = assert_error(status, headers, body, 413, "payload_too_large")
    assert f"over the {MAX_PAYLOAD}-byte limit" in error["details"]
    assert rclient.llen(queue) == 0


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/jsonx", "multipart/form-data"])
def test_wrong_content_type_gets_415(api, content_type):
    client, rclient, queue = api
    headers = dict(AUTH)
    if content_type:
        headers["Content-Type"] = content_type
    status, got, body = client.request("POST", "/v1/events", json.dumps(EVENT), headers)
    assert_error(status, got, body, 415, "unsupported_media_type")
    assert rclient.llen(queue) == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_wrong_method_gets_405_with_allow(api, method):
    client, rclient, queue = api
    status, headers, body = client.request(method, "/v1/events", EVENT, {**JSON, **AUTH})
    assert_error(status, headers, body, 405, "method_not_allowed")
    assert headers["allow"] == "POST"
    assert rclient.llen(queue) == 0


def test_other_paths_and_methods(api):
    client, _, _ = api
    status, headers, body = client.request("POST", "/healthz", b"{}", JSON)
    assert_error(status, headers, body, 405, "method_not_allowed")
    assert headers["allow"] == "GET, HEAD"
    status, headers, body = client.request("POST", "/v1/customers", EVENT, {**JSON, **AUTH})
    assert_error(status, headers, body, 404, "not_found")


# -- configurations ----------------------------------------------------------------------------


def test_refuses_to_start_without_ingest_credentials(make_process, redis_url, namespace):
    env = serve_env(redis_url, namespace, VOUCHERIFY_INGEST_CREDENTIALS="")
    proc = make_process(serve_argv(), env=env, name="serve-nocreds")
    assert proc.wait(timeout=30) == 1
    assert "VOUCHERIFY_INGEST_CREDENTIALS" in proc.output()
    assert "Traceback" not in proc.output()


def test_rate_limit_per_caller(make_process, redis_url, namespace, redis_client):
    proc = make_process(serve_argv("--rate-limit", "3/s"), env=serve_env(redis_url, namespace),
                        name="serve-rl")
    client = Client(wait_ready(proc))
    answers = [client.post(EVENT) for _ in range(6)]
    statuses = [status for status, _, _ in answers]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:], statuses
    status, headers, body = answers[statuses.index(429)]
    assert_error(status, headers, body, 429, "too_many_requests")
    assert int(headers["retry-after"]) >= 1
    other = {"X-App-Id": OTHER_ID, "X-App-Token": OTHER_TOKEN}
    assert client.post(EVENT, other)[0] == 200  # another caller has its own bucket
    assert redis_client.llen(namespace) == statuses.count(200) + 1


def test_two_worker_processes_share_the_port_and_stop_cleanly(
    make_process, redis_url, namespace, redis_client
):
    proc = make_process(serve_argv("--workers", "2"), env=serve_env(redis_url, namespace),
                        name="serve-2")
    client = Client(wait_ready(proc))
    proc.wait_for_output(re.compile(r"(?s)startup complete.*startup complete"), timeout=10)
    ids = {client.post(EVENT)[1]["x-ingest-event-id"] for _ in range(40)}
    assert {e["id"] for e in queued(redis_client, namespace)} == ids
    assert proc.output().count('"event": "Started server process') == 2
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 2
    # Both answered (40 connections, each worker on its own SO_REUSEPORT socket; the chance
    # that all land on one is 2**-39), and each message names the process that built it.
    origins = {json.loads(raw)["headers"]["origin"].split("@")[0]
               for raw in redis_client.lrange(namespace, 0, -1)}
    assert origins == set(children)
    # A worker process that dies is replaced; the port keeps answering meanwhile.
    os.kill(int(children[0]), signal.SIGKILL)
    proc.wait_for_output('"serve_worker_died"', timeout=10)
    assert all(client.post(EVENT)[0] == 200 for _ in range(10))
    proc.wait_for_output(re.compile(r'(?s)("event": "Started server process.*){3}'), timeout=15)
    assert client.post(EVENT)[0] == 200
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert '"serve_stopped"' in proc.output()


def test_redis_down_gets_503_with_retry_after_never_200(make_process, private_redis, namespace):
    proc = make_process(serve_argv(), env=serve_env(private_redis.url, namespace),
                        name="serve-redis-down")
    client = Client(wait_ready(proc))
    status, headers, _ = client.post(EVENT)
    assert status == 200
    stored_id = headers["x-ingest-event-id"]

    private_redis.kill()
    for _ in range(3):
        status, headers, body = client.post(EVENT)
        error = assert_error(status, headers, body, 503, "service_unavailable")
        assert int(headers["retry-after"]) >= 1
        assert "x-ingest-event-id" not in headers
        assert "nothing was stored" in error["details"]
    status, headers, body = client.request("GET", "/readyz")
    assert_error(status, headers, body, 503, "service_unavailable")
    assert client.request("GET", "/healthz")[0] == 200  # alive, just not ready

    private_redis.restart()
    rclient = private_redis.client()
    try:
        status, headers, _ = client.post(EVENT)
        assert status == 200
        stored = [e["id"] for e in queued(rclient, namespace)]
        assert stored == [stored_id, headers["x-ingest-event-id"]]  # appendonly: survived
    finally:
        rclient.close()
    out = proc.output()
    assert '"serve_redis_unavailable"' in out and "Traceback" not in out


def test_redis_down_with_a_spool_answers_200_only_after_fsync_then_drains_in_order(
    make_process, private_redis, namespace, tmp_path
):
    spool_dir = tmp_path / "spool"
    env = serve_env(private_redis.url, namespace, VOUCHERIFY_SPOOL_DIR=str(spool_dir))
    proc = make_process(serve_argv(), env=env, name="serve-spool")
    client = Client(wait_ready(proc))
    private_redis.kill()
    ids = []
    for _ in range(4):
        status, headers, body = client.post(EVENT)
        assert status == 200, body
        ids.append(headers["x-ingest-event-id"])
    on_disk = b"".join(p.read_bytes() for p in spool_dir.rglob("*") if p.is_file())
    assert all(event_id.encode() in on_disk for event_id in ids)

    private_redis.restart()
    rclient = private_redis.client()
    try:
        deadline = time.monotonic() + 30
        while len(queued(rclient, namespace)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [e["id"] for e in queued(rclient, namespace)] == ids
        status, headers, _ = client.post(EVENT)
        assert status == 200
        deadline = time.monotonic() + 10
        while len(queued(rclient, namespace)) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [e["id"] for e in queued(rclient, namespace)][-1] == headers["x-ingest-event-id"]
    finally:
        rclient.close()


# -- pure helpers ------------------------------------------------------------------------------


def test_authenticator_matches_pairs_and_bearer_tokens():
    auth = Authenticator([(APP_ID, APP_TOKEN), (OTHER_ID, OTHER_TOKEN)])
    assert auth.identify(APP_ID.encode(), APP_TOKEN.encode(), None) == APP_ID
    assert auth.identify(OTHER_ID.encode(), OTHER_TOKEN.encode(), None) == OTHER_ID
    assert auth.identify(APP_ID.encode(), OTHER_TOKEN.encode(), None) is None
    assert auth.identify(None, None, f"bearer  {OTHER_TOKEN} ".encode()) == OTHER_ID
    # X-App-Id/X-App-Token win when both are sent: a wrong pair is not saved by a bearer.
    assert auth.identify(APP_ID.encode(), b"nope", f"Bearer {APP_TOKEN}".encode()) is None
    assert auth.identify(None, APP_TOKEN.encode(), None) is None
    with pytest.raises(ConfigError, match="VOUCHERIFY_INGEST_CREDENTIALS"):
        Authenticator([])


def test_parse_rate():
    assert parse_rate("50/s") == 50
    assert parse_rate("600/min") == 10
    assert parse_rate("7200/hour") == 2
    assert parse_rate("off") is None and parse_rate("") is None
    for bad in ("fast", "10/day", "-1/s", "0/s"):
        with pytest.raises(ConfigError):
            parse_rate(bad)


def test_caller_rate_limit_refills_over_time():
    now = [100.0]
    limit = CallerRateLimit(2.0, clock=lambda: now[0])
    assert [limit.wait_s("a") for _ in range(2)] == [0.0, 0.0]
    wait = limit.wait_s("a")
    assert wait == pytest.approx(0.5)
    assert CallerRateLimit.retry_after(wait) == 1
    assert limit.wait_s("b") == 0.0
    now[0] += 0.5
    assert limit.wait_s("a") == 0.0


def test_body_checks():
    assert is_json_media_type(b"application/json")
    assert is_json_media_type(b"application/json;charset=UTF-8")
    assert not is_json_media_type(b"application/json-seq")
    assert not is_json_media_type(None)
    deep_in_string = b'{"a": "' + b"[" * 500 + b'"}'
    assert parse_json(deep_in_string) == {"a": "[" * 500}
    nested = {"m": 1}
    for _ in range(JSON_MAX_DEPTH - 1):
        nested = {"m": nested}
    assert parse_json(json.dumps(nested).encode()) == nested
    with pytest.raises(BodyError, match="nests deeper"):
        parse_json(json.dumps({"m": nested}).encode())
    with pytest.raises(BodyError, match="nests deeper"):
        parse_json(b"[" * 100_000)


def test_pusher_batches_concurrent_pushes_in_order(redis_url, namespace, redis_client):
    settings = Settings.from_env({"REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace})

    async def main() -> BatchPusher:
        pusher = BatchPusher(make_async_redis(settings), namespace)
        await asyncio.gather(*(pusher.push(f"m{i}") for i in range(300)))
        await pusher.close()
        return pusher

    pusher = asyncio.run(main())
    assert pusher.pushed == 300
    assert pusher.batches < 10  # 300 waiting requests, a handful of round trips
    assert [m.decode() for m in reversed(redis_client.lrange(namespace, 0, -1))] == [
        f"m{i}" for i in range(300)
    ]


def test_pusher_reports_a_down_redis_to_every_waiter(private_redis, namespace):
    settings = Settings.from_env({"REDIS_URL": private_redis.url, "VOUCHERIFY_QUEUE": namespace,
                                  "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"})
    private_redis.kill()

    async def main() -> list:
        pusher = BatchPusher(make_async_redis(settings), namespace)
        results = await asyncio.gather(*(pusher.push(f"m{i}") for i in range(20)),
                                       return_exceptions=True)
        await pusher.close()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, redis.ConnectionError) for r in results), results
