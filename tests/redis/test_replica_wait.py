"""``VOUCHERIFY_REDIS_WAIT_REPLICAS``: a write no replica confirmed is never reported stored.

The suite's private Redis has no replicas, so ``WAIT 1`` always times out here: the producer
must raise ``BrokerUnavailable`` (or spool the event), and serve's pusher must raise, even
though the master itself took the LPUSH. (With replicas, see tests/chaos/test_sentinel.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from producers import BrokerUnavailable, Producer
from producers.serve.pusher import BatchPusher
from voucherify_ingest.redis_conn import ReplicasNotConfirmed, make_redis
from voucherify_ingest.settings import Settings

EVENT = {"event": "signed_up", "customer": {"source_id": "u1"}}


def _settings(redis_url: str, namespace: str, **env: str) -> Settings:
    return Settings.from_env({
        "REDIS_URL": redis_url,
        "VOUCHERIFY_QUEUE": f"{namespace}-events",
        "VOUCHERIFY_KEY_PREFIX": namespace,
        "VOUCHERIFY_REDIS_WAIT_REPLICAS": "1",
        "VOUCHERIFY_REDIS_WAIT_TIMEOUT_MS": "50",
        **env,
    })


def test_unconfirmed_write_is_not_a_success(redis_url, namespace):
    producer = Producer(_settings(redis_url, namespace))
    try:
        with pytest.raises(BrokerUnavailable, match="0 of 1 replicas"):
            producer.enqueue_event(EVENT)
        with pytest.raises(BrokerUnavailable, match="0 of 1 replicas"):
            producer.enqueue_events([EVENT, EVENT])
    finally:
        producer.close()


def test_confirmed_count_zero_keeps_plain_lpush(redis_url, namespace, redis_client):
    producer = Producer(_settings(redis_url, namespace, VOUCHERIFY_REDIS_WAIT_REPLICAS="0"))
    try:
        producer.enqueue_event(EVENT)
        assert redis_client.llen(f"{namespace}-events") == 1
    finally:
        producer.close()


def test_unconfirmed_write_goes_to_the_spool(redis_url, namespace, tmp_path):
    spool_dir = tmp_path / "spool"
    producer = Producer(_settings(redis_url, namespace, VOUCHERIFY_SPOOL_DIR=str(spool_dir)))
    try:
        event_id = producer.enqueue_event(EVENT)
        assert producer.spool.pending, "the event was reported stored without the spool"
        assert any(event_id.encode() in p.read_bytes() for p in spool_dir.glob("*.seg"))
    finally:
        producer.close()


def test_make_redis_lpush_waits_for_replicas(redis_url, namespace):
    client = make_redis(_settings(redis_url, namespace))
    try:
        with pytest.raises(ReplicasNotConfirmed):
            client.lpush(f"{namespace}-events", "x")  # e.g. the spool's drain, the CLI
    finally:
        client.close()


def test_serve_pusher_refuses_unconfirmed_batches(redis_url, namespace):
    settings = _settings(redis_url, namespace)

    async def run() -> tuple[BaseException | None, int]:
        pusher = BatchPusher.for_settings(settings)
        try:
            results = await asyncio.gather(
                *(pusher.push(f"m{i}") for i in range(5)), return_exceptions=True
            )
        finally:
            await pusher.close()
        errors = [r for r in results if isinstance(r, BaseException)]
        return (errors[0] if errors else None), len(errors)

    error, failed = asyncio.run(run())
    assert isinstance(error, ReplicasNotConfirmed)
    assert failed == 5, "a request of an unconfirmed batch would have heard 200"


def test_min_replicas_to_write_refusal_is_broker_unavailable(make_redis_server, namespace):
    server = make_redis_server()
    client = server.client()
    try:
        client.config_set("min-replicas-to-write", 1)  # the server-side guard, no replica here
    finally:
        client.close()
    producer = Producer(_settings(server.url, namespace, VOUCHERIFY_REDIS_WAIT_REPLICAS="0"))
    try:
        with pytest.raises(BrokerUnavailable, match="NOREPLICAS|did not answer"):
            producer.enqueue_event(EVENT)
    finally:
        producer.close()
