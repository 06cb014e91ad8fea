"""The producer: validate, stamp, cap, publish a message a Celery worker consumes."""

from __future__ import annotations

import base64
import json
import socket
import time

import fakeredis
import pytest

from producers import BrokerUnavailable, InvalidEvent, PayloadTooLarge, Producer
from voucherify_ingest.messages import DELIVER_BATCH, DELIVER_EVENT
from voucherify_ingest.settings import Settings

EVENT = {"event": "signed_up", "customer": {"sourceId": "u1"}}


def _decode(raw: bytes) -> tuple[dict, list]:
    message = json.loads(raw)
    body = json.loads(base64.b64decode(message["body"]))
    return message, body


@pytest.fixture
def fake_producer():
    settings = Settings.from_env({"VOUCHERIFY_QUEUE": "q"})
    return Producer(settings, client=fakeredis.FakeRedis())


def test_enqueue_stamps_id_time_and_normalises(fake_producer):
    event_id = fake_producer.enqueue_event(EVENT)
    (raw,) = fake_producer.redis.lrange("q", 0, -1)
    message, (args, kwargs, _embed) = _decode(raw)
    assert message["headers"]["task"] == DELIVER_EVENT
    assert message["headers"]["id"] == event_id
    assert message["content-type"] == "application/json"
    assert message["properties"]["delivery_info"] == {"exchange": "", "routing_key": "q"}
    (envelope,) = args
    assert envelope["id"] == event_id
    assert envelope["payload"] == {"event": "signed_up", "customer": {"source_id": "u1"}}
    assert envelope["enqueued_at"].endswith("Z")
    assert envelope["attempt"] == 0
    assert kwargs == {}
    # The payload (emails, phones) never goes into what Celery logs.
    assert "u1" not in message["headers"]["argsrepr"]


def test_caller_given_event_id_is_kept_and_checked(fake_producer):
    assert fake_producer.enqueue_event(EVENT, event_id="order-42:paid") == "order-42:paid"
    with pytest.raises(InvalidEvent) as info:
        fake_producer.enqueue_event(EVENT, event_id="has space")
    assert "event_id" in info.value.messages


def test_invalid_payload_enqueues_nothing(fake_producer):
    with pytest.raises(InvalidEvent) as info:
        fake_producer.enqueue_event({"event": "", "customer": {}})
    assert set(info.value.messages) >= {"event", "customer"}
    assert fake_producer.redis.llen("q") == 0


def test_size_cap(fake_producer):
    big = {**EVENT, "metadata": {"blob": "x" * 70_000}}
    with pytest.raises(PayloadTooLarge) as info:
        fake_producer.enqueue_event(big)
    assert "65536" in str(info.value)
    assert fake_producer.redis.llen("q") == 0


def test_batch_is_all_or_nothing(fake_producer):
    with pytest.raises(InvalidEvent) as info:
        fake_producer.enqueue_events([EVENT, {"event": "x"}, EVENT])
    assert list(info.value.messages) == ["1"]
    assert fake_producer.redis.llen("q") == 0
    ids = fake_producer.enqueue_events([EVENT] * 5)
    assert len(set(ids)) == 5
    assert fake_producer.redis.llen("q") == 5


def test_batch_messages_pack_events(fake_producer):
    ids = fake_producer.enqueue_events([EVENT] * 7, batch_size=3)
    raws = fake_producer.redis.lrange("q", 0, -1)
    assert len(raws) == 3
    packed = []
    for raw in reversed(raws):
        message, (args, _, _) = _decode(raw)
        assert message["headers"]["task"] == DELIVER_BATCH
        packed += [e["id"] for e in args[0]]
    assert packed == ids


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_down_raises_promptly_without_the_password():
    url = f"redis://:sup3rs3cret@127.0.0.1:{_closed_port()}/0"
    producer = Producer(Settings.from_env({"REDIS_URL": url, "VOUCHERIFY_REDIS_TIMEOUT_S": "0.5"}))
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable) as info:
        producer.enqueue_event(EVENT)
    assert time.monotonic() - started < 3
    assert "sup3rs3cret" not in str(info.value)
    assert "127.0.0.1" in str(info.value)
    producer.close()


def test_real_redis_roundtrip(redis_url, namespace, redis_client):
    settings = Settings.from_env({"REDIS_URL": redis_url, "VOUCHERIFY_QUEUE": namespace})
    producer = Producer(settings)
    try:
        event_id = producer.enqueue_event(EVENT)
    finally:
        producer.close()
    _, (args, _, _) = _decode(redis_client.rpop(namespace))
    assert args[0]["id"] == event_id
