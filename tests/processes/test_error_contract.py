"""One error contract at the doors into the queue (issue 14): every Redis failure at enqueue
raises ``BrokerUnavailable`` (or spools, when the spool is on), never a raw redis exception;
``serve`` answers 503 (or spools). A real Redis is put in each state: OOM under noeviction
(``maxmemory 1``), a read-only replica, writes paused (``CLIENT PAUSE WRITE``)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import redis

from producers import Producer
from tests.processes.test_serve import (
    AUTH,
    JSON,
    OTHER_TOKEN,
    Client,
    queued,
    serve_argv,
    serve_env,
    wait_ready,
)
from voucherify_ingest.errors import BrokerUnavailable
from voucherify_ingest.settings import Settings

EVENT = {"event": "order_paid", "customer": {"source_id": "user-1"}}


@pytest.fixture
def oom_redis(make_redis_server):
    server = make_redis_server(appendonly=False)
    client = server.client()
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", "1")  # every write is refused: OOM
    client.close()
    return server


@pytest.fixture
def replica_redis(make_redis_server):
    primary = make_redis_server(appendonly=False)
    return make_redis_server(appendonly=False,
                             extra_args=["--replicaof", "127.0.0.1", str(primary.port)])


def _producer(url: str, namespace: str, **extra) -> Producer:
    return Producer(Settings.from_env({"REDIS_URL": url, "VOUCHERIFY_QUEUE": namespace,
                                       "VOUCHERIFY_KEY_PREFIX": namespace, **extra}))


@pytest.mark.parametrize("state", ["oom_redis", "replica_redis"])
def test_producer_raises_broker_unavailable_for_refused_writes(state, request, namespace):
    server = request.getfixturevalue(state)
    producer = _producer(server.url, namespace)
    try:
        with pytest.raises(BrokerUnavailable) as caught:
            producer.enqueue_event(EVENT)
        expected = "OutOfMemoryError" if state == "oom_redis" else "ReadOnlyError"
        assert expected in str(caught.value)
        with pytest.raises(BrokerUnavailable):
            producer.enqueue_events([EVENT, EVENT])
    finally:
        producer.close()


def test_producer_spools_when_redis_refuses_writes(oom_redis, namespace, tmp_path):
    producer = _producer(oom_redis.url, namespace, VOUCHERIFY_SPOOL_DIR=str(tmp_path / "spool"))
    try:
        event_id = producer.enqueue_event(EVENT)
        assert producer.spool.pending, "the event is neither in Redis nor in the spool"
        # Redis accepts writes again: the spool drains and the event reaches the queue.
        client = oom_redis.client()
        client.config_set("maxmemory", "0")
        deadline = time.monotonic() + 20
        while producer.spool.pending and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [e["id"] for e in queued(client, namespace)] == [event_id]
        client.close()
    finally:
        producer.close()


# -- serve ------------------------------------------------------------------------------------


def _serve(make_process, url: str, queue: str, **extra) -> Client:
    proc = make_process(serve_argv("--rate-limit", "off"), env=serve_env(url, queue, **extra),
                        name="serve")
    return Client(wait_ready(proc))


@pytest.mark.parametrize("state", ["oom_redis", "replica_redis"])
def test_serve_answers_503_when_redis_refuses_writes(state, request, make_process, namespace):
    server = request.getfixturevalue(state)
    client = _serve(make_process, server.url, namespace)
    status, headers, body = client.post(EVENT)
    assert status == 503, body
    assert headers["retry-after"]
    assert json.loads(body)["key"] == "service_unavailable"
    assert b"Traceback" not in body


def test_serve_does_not_push_twice_when_the_outcome_is_unknown(
    make_redis_server, make_process, namespace
):
    """Redis takes the LPUSH but answers after the timeout (``DEBUG SLEEP`` holds the server
    while the command waits in its socket): serve says the outcome is unknown, names the id to
    retry with, and does not push again: one copy in the queue, not two."""
    server = make_redis_server(appendonly=False, extra_args=["--enable-debug-command", "yes"])
    client = _serve(make_process, server.url, namespace, VOUCHERIFY_REDIS_TIMEOUT_S="0.3")
    assert client.post(EVENT)[0] == 200  # the pusher's connection is open
    rclient = server.client()
    rclient.delete(namespace)
    sleeper = server.client()
    asleep = threading.Thread(target=sleeper.execute_command, args=("DEBUG", "SLEEP", "2"))
    asleep.start()
    try:
        time.sleep(0.2)  # DEBUG SLEEP has reached the server (it answers nothing until done)
        started = time.monotonic()
        status, headers, body = client.post(EVENT, {"X-Ingest-Event-Id": "order-9:paid"})
        took_s = time.monotonic() - started
    finally:
        asleep.join(10)
        sleeper.close()
    assert status == 503, body
    assert headers["x-ingest-event-id"] == "order-9:paid"
    details = json.loads(body)["details"]
    assert "may or may not" in details and "same X-Ingest-Event-Id" in details
    assert took_s < 1.5, "answered only after Redis woke"
    rclient.ping()  # Redis is awake and has read what was sent while it slept
    assert [e["id"] for e in queued(rclient, namespace)] == ["shop-web:order-9:paid"]
    rclient.close()


def test_serve_scopes_caller_chosen_ids_per_credential(redis_server, make_process, namespace):
    """Caller A's id can no longer suppress caller B's different event through the ledger."""
    client = _serve(make_process, redis_server.url, namespace)
    headers_a = {"X-Ingest-Event-Id": "order-1"}
    headers_b = {**JSON, "Authorization": f"Bearer {OTHER_TOKEN}", "X-Ingest-Event-Id": "order-1"}
    status_a, answer_a, _ = client.post(EVENT, headers_a)
    status_b, answer_b, _ = client.request("POST", "/v1/events", EVENT, headers_b)
    assert (status_a, status_b) == (200, 200)
    assert answer_a["x-ingest-event-id"] == answer_b["x-ingest-event-id"] == "order-1"
    rclient = redis_server.client()
    try:
        ids = [e["id"] for e in queued(rclient, namespace)]
    finally:
        rclient.delete(namespace)
        rclient.close()
    assert ids == ["shop-web:order-1", "shop-batch:order-1"]
    assert AUTH  # the default caller of Client.post is shop-web


def test_redis_loading_is_a_redis_error_the_doors_catch():
    # LOADING (a restarting Redis reading its data) is hard to hold still in a test; redis-py
    # raises BusyLoadingError for it, which the doors catch as a RedisError like the rest.
    assert issubclass(redis.exceptions.BusyLoadingError, redis.RedisError)
