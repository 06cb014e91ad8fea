"""A Redis that is restarting and still loading its data answers every command with
``LOADING``. A real one is held in that state (``RedisServer.restart_loading``: Redis's own
``key-load-delay`` knob, 20,000 keys) and each door is tried against it: ``enqueue_event``
raises ``BrokerUnavailable`` saying so (or spools, and the spool drains once Redis is loaded);
``serve`` answers 503 and then 200; a worker started meanwhile says Redis is loading, waits,
and delivers once it is loaded. Nothing is lost and nothing is queued twice."""

from __future__ import annotations

import json
import re

import pytest

from producers import Producer
from tests.processes.test_serve import Client, queued, serve_argv, serve_env, wait_ready
from tests.support.pipeline import make_env
from tests.support.waiting import wait_for
from voucherify_ingest.errors import BrokerUnavailable
from voucherify_ingest.settings import Settings

pytestmark = pytest.mark.e2e

EVENT = {"event": "order_paid", "customer": {"source_id": "loading-1"}}
CLI = ["python", "-m", "voucherify_ingest.cli"]
LOADED_WITHIN_S = 60


@pytest.fixture
def loading_redis(make_redis_server):
    """A private Redis; the test calls ``restart_loading()`` when it wants the state."""
    return make_redis_server(appendonly=False)


def _producer(url: str, namespace: str, **extra) -> Producer:
    return Producer(Settings.from_env({"REDIS_URL": url, "VOUCHERIFY_QUEUE": namespace,
                                       "VOUCHERIFY_KEY_PREFIX": namespace, **extra}))


def _loaded(server) -> None:
    wait_for(lambda: not server.is_loading(), LOADED_WITHIN_S, "Redis to finish loading")


def test_enqueue_says_redis_is_loading_or_spools_until_it_is_loaded(
    loading_redis, namespace, tmp_path
):
    plain = _producer(loading_redis.url, namespace)
    spooled = _producer(loading_redis.url, namespace,
                        VOUCHERIFY_SPOOL_DIR=str(tmp_path / "spool"))
    try:
        loading_redis.restart_loading()
        with pytest.raises(BrokerUnavailable) as caught:
            plain.enqueue_event(EVENT)
        assert "still loading its data after a restart" in str(caught.value)
        assert "BusyLoadingError" in str(caught.value)
        event_id = spooled.enqueue_event(EVENT)
        assert spooled.spool.pending, "the event is neither in Redis nor in the spool"
        assert loading_redis.is_loading(), "Redis finished loading too soon: proves nothing"
        _loaded(loading_redis)
        wait_for(lambda: not spooled.spool.pending, 30, "the spool to drain")
        client = loading_redis.client()
        try:
            assert [e["id"] for e in queued(client, namespace)] == [event_id]
        finally:
            client.close()
    finally:
        plain.close()
        spooled.close()


def test_serve_answers_503_while_redis_loads_then_200(loading_redis, make_process, namespace):
    proc = make_process(serve_argv("--rate-limit", "off"),
                        env=serve_env(loading_redis.url, namespace), name="serve")
    client = Client(wait_ready(proc))
    assert client.post(EVENT)[0] == 200  # the pusher's connection is open
    loading_redis.restart_loading()
    status, headers, body = client.post(EVENT)
    assert loading_redis.is_loading(), "Redis finished loading too soon: proves nothing"
    assert status == 503, body
    assert headers["retry-after"] and json.loads(body)["key"] == "service_unavailable"
    assert b"Traceback" not in body
    _loaded(loading_redis)
    status, _, body = client.post(EVENT)
    assert status == 200, body
    rclient = loading_redis.client()
    try:
        assert len(queued(rclient, namespace)) == 2  # the first and the last; the 503 not
    finally:
        rclient.close()


def test_a_worker_started_while_redis_loads_says_so_and_delivers_after(
    loading_redis, make_process, namespace, standin
):
    env = make_env(loading_redis.url, namespace, standin.url)
    producer = Producer(Settings.from_env(env))
    try:
        event_id = producer.enqueue_event(EVENT)  # queued before the restart: in the RDB
    finally:
        producer.close()
    loading_redis.restart_loading()
    worker = make_process(CLI + ["worker", "-c", "2"], env=env, name="worker-loading")
    worker.wait_for_output(re.compile(r'"redis_unreachable"'), timeout=30)
    line = next(json.loads(text) for text in worker.output().splitlines()
                if '"redis_unreachable"' in text)
    assert line["error"] == "BusyLoadingError"
    assert "still loading its data after a restart" in line["detail"]
    _loaded(loading_redis)
    worker.wait_for_output('"worker_ready"', timeout=60)
    wait_for(lambda: standin.delivered_ids().get(event_id) == 1, 30, "the event delivered")
    assert standin.delivered_ids() == {event_id: 1}
